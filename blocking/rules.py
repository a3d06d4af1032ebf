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

from dataclasses import dataclass
from itertools import combinations
from typing import Any, Iterable, Mapping

from idweave.blocking.keys import check_transform, sql_transform

__all__ = ["Key", "Rule", "parse_rules", "derive_rules"]


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


def derive_rules(attributes: Mapping[str, str]) -> list[Rule]:
    """Blocking rules derived from attribute kinds alone, most specific first.

    The aim is high recall at bounded cost: strong identifiers alone; then a name key paired
    with one other independent key (date, year, place), so that a typo, a nickname, a
    missing value or a name in the wrong field in any single attribute still leaves a rule
    that finds the pair. Name keys use every word of every name field (``tokens``), mapped
    through nicknames to formal names and to a phonetic code. Very common key values are
    skipped at pair generation (see ``pairs.DEFAULT_MAX_BLOCK``), which bounds the cost.

    >>> [r.name for r in derive_rules({"ssn": "national_id", "fn": "given_name", "ln": "family_name"})]
    ['ssn', 'fn:nickname:metaphone & ln:metaphone', 'fn~ln:metaphone & ln~fn:metaphone', 'fn:prefix2 & ln:prefix3', 'fn:initial & ln:metaphone', 'fn+ln:tokens:nickname:metaphone (blocks <= 25)']
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
    return out
