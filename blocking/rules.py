"""Blocking rules as data: a rule is a conjunction of keys; a pair is a candidate when every
key of some rule agrees.

A key is written ``attribute[:transform...]``; ``left~right`` compares one attribute of the
left record with another of the right (for swapped first and last names). In a project file::

    blocking:
      - [ssn]
      - [first_name:metaphone, last_name:metaphone]
      - {name: swapped names, keys: [first_name~last_name, last_name~first_name]}

>>> r = parse_rules([["first_name:metaphone", "birth_date:year"]], attributes={"first_name": "given_name", "birth_date": "date"})
>>> r[0].name
'first_name:metaphone & birth_date:year'
>>> r[0].to_dict()
{'name': 'first_name:metaphone & birth_date:year', 'keys': ['first_name:metaphone', 'birth_date:year']}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from idweave.blocking.keys import check_transform, sql_transform

if TYPE_CHECKING:
    import polars as pl

__all__ = ["Key", "Rule", "parse_rules", "derive_rules", "scale_factor", "scaled_cap", "PAIR_BUDGET", "SCALE_FROM"]


@dataclass(frozen=True)
class Key:
    """One agreement: ``left`` attribute of one record, transformed, equals ``right``'s."""

    left: str
    right: str
    transforms: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Key":
        parts = str(text).strip().split(":")
        attrs = parts[0].split("~")
        if len(attrs) > 2 or not all(attrs):
            raise ValueError(f"bad key {text!r}: write attribute[:transform] or left~right[:transform]")
        left = attrs[0].strip()
        right = attrs[1].strip() if len(attrs) == 2 else left
        return cls(left, right, tuple(p.strip() for p in parts[1:] if p.strip() and p.strip() != "exact"))

    @property
    def symmetric(self) -> bool:
        return self.left == self.right

    def attributes(self) -> set[str]:
        """Every attribute the key reads (``a+b`` reads both)."""
        return {a for side in (self.left, self.right) for a in side.split("+")}

    def source_values(self, records: "pl.DataFrame", side: str) -> "pl.Series":
        """The untransformed value of one side: an attribute, or the words of several
        attributes joined (``first_name+surname``), for names that sit in either field."""
        import polars as pl

        spec = self.left if side == "l" else self.right
        parts = spec.split("+")
        if len(parts) == 1:
            return records[parts[0]]
        return records.select(pl.concat_str([pl.col(p) for p in parts], separator=" ", ignore_nulls=True)
                              .replace("", None)).to_series()

    def __str__(self) -> str:
        attr = self.left if self.symmetric else f"{self.left}~{self.right}"
        return ":".join((attr, *self.transforms))

    def sql(self) -> str | None:
        """SQL for this key as a Splink blocking condition, or None if it has no SQL form."""
        if "+" in self.left or "+" in self.right:
            return None
        lhs = sql_transform(f'l."{self.left}"', self.transforms)
        rhs = sql_transform(f'r."{self.right}"', self.transforms)
        return None if lhs is None or rhs is None else f"{lhs} = {rhs}"


@dataclass(frozen=True)
class Rule:
    """A conjunction of keys with a display name."""

    keys: tuple[Key, ...]
    name: str = ""
    # Skip key values shared by more records than this (None: the generator's default). A
    # small cap turns a weak key into a "rare value" rule: a rare surname identifies alone.
    max_block: int | None = None
    # The name of the rule whose too-big blocks this one splits (its keys plus one more): a
    # derived rule's block above its cap is sharpened by that key instead of being dropped.
    sharpens: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            name = " & ".join(str(k) for k in self.keys)
            if self.max_block is not None:
                name += f" (blocks <= {self.max_block})"
            object.__setattr__(self, "name", name)

    @property
    def symmetric(self) -> bool:
        return all(k.symmetric for k in self.keys)

    @property
    def attributes(self) -> set[str]:
        return {a for k in self.keys for a in k.attributes()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "keys": [str(k) for k in self.keys]}
        if self.max_block is not None:
            d["max_block"] = self.max_block
        if self.sharpens is not None:
            d["sharpens"] = self.sharpens
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Iterable[str] | str) -> "Rule":
        if isinstance(d, str):
            keys = [k for k in d.split("&")]
            return cls(tuple(Key.parse(k) for k in keys))
        if isinstance(d, Mapping):
            mb = d.get("max_block")
            if mb is not None and (not isinstance(mb, int) or isinstance(mb, bool) or mb < 2):
                raise ValueError(f"max_block must be a whole number >= 2, got {mb!r}")
            return cls(tuple(Key.parse(k) for k in d["keys"]), str(d.get("name") or ""), mb)
        return cls(tuple(Key.parse(k) for k in d))

    def sql(self) -> str | None:
        parts = [k.sql() for k in self.keys]
        return None if any(p is None for p in parts) else " AND ".join(parts)  # type: ignore[arg-type]


def parse_rules(spec: Any, *, attributes: Mapping[str, str]) -> list[Rule]:
    """Parse the ``blocking`` section; raise ValueError naming every bad rule."""
    if not isinstance(spec, list) or not spec:
        raise ValueError("must be a list of rules, each a list of keys like [first_name:metaphone, birth_date]")
    rules, problems = [], []
    for i, item in enumerate(spec):
        try:
            rule = Rule.from_dict(item)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"rule {i + 1}: {exc}")
            continue
        for k in rule.keys:
            for a in sorted(k.attributes()):
                if a not in attributes:
                    problems.append(f"rule {i + 1}: unknown attribute {a!r}")
            for t in k.transforms:
                msg = check_transform(t)
                if msg:
                    problems.append(f"rule {i + 1}: {msg}")
        rules.append(rule)
    if problems:
        raise ValueError("; ".join(problems))
    return rules


# A name word held by at most this many records is rare enough to propose pairs on its own.
_RARE_BLOCK = 25


# The cap of a derived rule without its own (the pair generator's default).
DEFAULT_CAP = 400
# Derived caps hold as they are up to this many records, so a register of 50k records blocks
# exactly as before; above it they shrink with the number of records, in steps at each
# doubling (an incremental run of a few per cent rarely crosses one, and a run that does is
# a full run: the rules are in the incremental signature).
SCALE_FROM = 65_536
CAP_EXPONENT = 0.75
# How many keys a too-big block may gain, one after the other, before it is dropped (each
# rule's blocks are split by several keys side by side, each of those once more).
SHARPEN_DEPTH = 2
# Pairs per record the derived rules are meant to stay within, whatever the size of the data.
PAIR_BUDGET = 25


def scale_factor(n_records: int | None, scale_from: int | None = None) -> int:
    """How many times larger than ``scale_from`` (:data:`SCALE_FROM`) the data are, as a
    power of two (1 up to it, and when the size is unknown).

    >>> scale_factor(50_000), scale_factor(202_000), scale_factor(1_010_000)
    (1, 4, 16)
    """
    scale_from = SCALE_FROM if scale_from is None else scale_from
    if n_records is None or n_records <= scale_from:
        return 1
    return 1 << math.ceil(math.log2(n_records / scale_from))


def scaled_cap(base: int, n_records: int | None, scale_from: int | None = None) -> int:
    """A derived rule's block cap for ``n_records`` records: ``base`` up to ``scale_from``
    (:data:`SCALE_FROM`), then ``base / factor ** CAP_EXPONENT`` (at least 2), with the
    ``factor`` of :func:`scale_factor`. The exponent is measured, not derived: on
    historical_50k scaled to 1M records it keeps the pairs per record about where they are
    at 50k (``bench/bench_blocking_scale.py``).

    >>> scaled_cap(400, 50_000), scaled_cap(400, 202_000), scaled_cap(400, 1_010_000)
    (400, 141, 50)
    """
    f = scale_factor(n_records, scale_from)
    return base if f == 1 else max(2, int(base / f ** CAP_EXPONENT))


def derive_rules(attributes: Mapping[str, str], n_records: int | None = None, *,
                 scale_from: int | None = None) -> list[Rule]:
    """Blocking rules derived from attribute kinds alone, most specific first.

    The aim is high recall at bounded cost: strong identifiers alone; then a name key paired
    with one other independent key (date, year, place), so that a typo, a nickname, a
    missing value or a name in the wrong field in any single attribute still leaves a rule
    that finds the pair. Name keys use every word of every name field (``tokens``), mapped
    through nicknames to formal names and to a phonetic code. Very common key values are
    skipped at pair generation (see ``pairs.DEFAULT_MAX_BLOCK``), which bounds the cost.

    The cost must not grow with the data: a key's blocks grow with the number of records
    (``n_records``), so above ``scale_from`` records (:data:`SCALE_FROM`) a conjunction's cap
    shrinks as :func:`scaled_cap` says (a rare-value rule keeps its small cap: its blocks are
    small however large the data), and a block above its cap is no longer simply dropped:
    each rule is followed by rules that ``sharpen`` it: its keys plus one of the birth year,
    an initial, the postcode district or the city, one rule for each (side by side, so a
    pair that disagrees on one is still found by another), each sharpened again by the next
    key, :data:`SHARPEN_DEPTH` keys at most (see ``_sharpen`` for the keys left out). Such
    a rule's blocks inside the parent's small blocks make pairs the parent already made;
    inside a block above the parent's cap they are what is left of it. The aim is
    :data:`PAIR_BUDGET` pairs per record (``count-pairs`` shows it).

    >>> [r.name for r in derive_rules({"ssn": "national_id", "fn": "given_name", "ln": "family_name"})]
    ['ssn', 'fn:nickname:metaphone & ln:metaphone', 'fn~ln:metaphone & ln~fn:metaphone', 'fn:prefix2 & ln:prefix3', 'fn:initial & ln:metaphone', 'fn+ln:tokens:nickname:metaphone (blocks <= 25)']
    >>> big = derive_rules({"fn": "given_name", "ln": "family_name", "dob": "date"}, 1_000_000)
    >>> [(r.name, r.sharpens) for r in big[:3]]  # doctest: +NORMALIZE_WHITESPACE
    [('dob (blocks <= 25)', None), ('dob & fn:initial (blocks <= 25)', 'dob (blocks <= 25)'),
     ('dob & fn:initial & ln:initial (blocks <= 25)', 'dob & fn:initial (blocks <= 25)')]
    """
    by_kind: dict[str, list[str]] = {}
    for a, k in attributes.items():
        by_kind.setdefault(k, []).append(a)

    def first(kind: str) -> str | None:
        return by_kind.get(kind, [None])[0]

    rules: list[Rule] = []
    for kind in ("national_id", "email", "phone"):
        for a in by_kind.get(kind, []):
            rules.append(Rule((Key(a, a),)))
    # Rare values identify alone: a user name shared by few e-mail addresses, a birth date
    # held by few records (year-only dates pile up on 1 January and so are skipped).
    for a in by_kind.get("email", []):
        rules.append(Rule((Key(a, a, ("local_part",)),), max_block=_RARE_BLOCK))
    for a in by_kind.get("date", [])[:1]:
        rules.append(Rule((Key(a, a),), max_block=_RARE_BLOCK))

    given, family, full = first("given_name"), first("family_name"), first("full_name")
    date = first("date")
    places = [a for kind in ("postcode", "address", "city") for a in by_kind.get(kind, [])]

    if given and family:
        rules.append(Rule((Key(given, given, ("nickname", "metaphone")), Key(family, family, ("metaphone",)))))
        rules.append(Rule((Key(given, family, ("metaphone",)), Key(family, given, ("metaphone",)))))
        rules.append(Rule((Key(given, given, ("prefix2",)), Key(family, family, ("prefix3",)))))
        rules.append(Rule((Key(given, given, ("initial",)), Key(family, family, ("metaphone",)))))
        words = f"{given}+{family}"
    elif full:
        rules.append(Rule((Key(full, full, ("tokens", "nickname", "metaphone")),
                           Key(full, full, ("last_token", "metaphone")))))
        rules.append(Rule((Key(full, full, ("sorted_tokens",)),)))
        words = full
    else:
        words = given or family
    # Any word of any name field, through nicknames, phonetically: survives swapped fields,
    # a name in the wrong field, one missing name and most typos.
    name = Key(words, words, ("tokens", "nickname", "metaphone")) if words else None

    def place_key(p: str) -> Key:
        return Key(p, p, ("district",)) if attributes[p] == "postcode" else Key(p, p)

    if date:
        d = Key(date, date)
        if name:
            rules.append(Rule((name, d)))
            rules.append(Rule((name, Key(date, date, ("year",)))))
            if family:
                # A typo in the year still leaves day and month.
                rules.append(Rule((Key(family, family, ("metaphone",)), Key(date, date, ("month_day",)))))
        for p in places:
            rules.append(Rule((d, place_key(p))))
            rules.append(Rule((Key(date, date, ("year",)), Key(p, p))))
    if name:
        for p in places:
            rules.append(Rule((name, place_key(p))))
        rules.append(Rule((name,), max_block=_RARE_BLOCK))
    # Deduplicate while keeping order.
    seen, out = set(), []
    for r in rules:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    if scale_factor(n_records, scale_from) == 1:
        return out
    sharpeners = _sharpeners(by_kind)
    conjunctions = [frozenset(r.keys) for r in out if r.max_block is None]
    scaled: list[Rule] = []
    for r in out:
        # A rare-value rule's cap already bounds what a record costs (its blocks are small
        # whatever N is); a conjunction's blocks grow with N, so its cap shrinks.
        cap = r.max_block if r.max_block is not None else scaled_cap(DEFAULT_CAP, n_records, scale_from)
        parent = Rule(r.keys, max_block=cap)
        scaled.append(parent)
        if r.max_block is None:
            # A conjunction is split by what its keys do not read: the initial of a name
            # it already holds (a word of either name field) hardly splits its blocks.
            extra = [k for k in sharpeners if not k.attributes() & r.attributes]
        else:
            # A rare value's pairs are those no other key found (a missing or mistyped
            # date): its blocks are split by the names' initials first, not by a date.
            order = sorted(sharpeners, key=lambda k: k.transforms != ("initial",))
            extra = [k for k in order if not any(k.left in (rk.left, rk.right) for rk in r.keys)]
        others = [c for c in conjunctions if c != frozenset(r.keys)]
        scaled.extend(_sharpen(parent, extra, others, SHARPEN_DEPTH))
    seen: set[frozenset[Key]] = set()
    # One rule per set of keys (the same keys added in another order make the same blocks).
    return [r for r in scaled if not (frozenset(r.keys) in seen or seen.add(frozenset(r.keys)))]


def _sharpen(parent: Rule, extra: list[Key], others: list[frozenset[Key]], depth: int) -> list[Rule]:
    """The rules that split ``parent``'s blocks above its cap: one for each key of ``extra``
    (each on its own, so a pair that disagrees on one of them, a mistyped year, a moved
    postcode, is still found by another), each split once more by the next key of ``extra``
    while ``depth`` allows. A split is left out when another derived conjunction's keys are
    all among its keys: that rule makes its pairs already (``name & city`` split by the
    birth year is ``name & year`` with one more key), so its pairs are the ones that rule
    found, not the ones ``parent`` is there for."""
    out: list[Rule] = []
    for i, k in enumerate(extra):
        keys = frozenset((*parent.keys, k))
        if any(c <= keys for c in others):
            continue
        child = Rule((*parent.keys, k), max_block=parent.max_block, sharpens=parent.name)
        out.append(child)
        if depth > 1:
            rest = [x for x in extra if x is not k]
            out.extend(_sharpen(child, rest[:1] if rest else [], others, depth - 1))
    return out


def _sharpeners(by_kind: Mapping[str, list[str]]) -> list[Key]:
    """The keys that split a too-big block, most independent of names first: the birth year,
    the given and family names' initials, the postcode district, the city."""
    out: list[Key] = []
    for kind, transforms in (("date", ("year",)), ("given_name", ("initial",)), ("family_name", ("initial",)),
                             ("postcode", ("district",)), ("city", ())):
        for a in by_kind.get(kind, [])[:1]:
            out.append(Key(a, a, transforms))
    return out
