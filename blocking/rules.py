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

    def __str__(self) -> str:
        attr = self.left if self.symmetric else f"{self.left}~{self.right}"
        return ":".join((attr, *self.transforms))

    def sql(self) -> str | None:
        """SQL for this key as a Splink blocking condition, or None if it has no SQL form."""
        lhs = sql_transform(f'l."{self.left}"', self.transforms)
        rhs = sql_transform(f'r."{self.right}"', self.transforms)
        return None if lhs is None or rhs is None else f"{lhs} = {rhs}"


@dataclass(frozen=True)
class Rule:
    """A conjunction of keys with a display name."""

    keys: tuple[Key, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", " & ".join(str(k) for k in self.keys))

    @property
    def symmetric(self) -> bool:
        return all(k.symmetric for k in self.keys)

    @property
    def attributes(self) -> set[str]:
        return {a for k in self.keys for a in (k.left, k.right)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "keys": [str(k) for k in self.keys]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Iterable[str] | str) -> "Rule":
        if isinstance(d, str):
            keys = [k for k in d.split("&")]
            return cls(tuple(Key.parse(k) for k in keys))
        if isinstance(d, Mapping):
            return cls(tuple(Key.parse(k) for k in d["keys"]), str(d.get("name") or ""))
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
            for a in (k.left, k.right):
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


def derive_rules(attributes: Mapping[str, str]) -> list[Rule]:
    """Blocking rules derived from attribute kinds alone, most specific first.

    The aim is high recall at bounded cost: strong identifiers alone; pairs of independent
    weaker keys (phonetic names, date parts, places), so that one typo or one missing value
    in any single attribute still leaves some rule that finds the pair; swapped names.

    >>> [r.name for r in derive_rules({"ssn": "national_id", "fn": "given_name", "ln": "family_name"})]
    ['ssn', 'fn:metaphone & ln:metaphone', 'fn~ln:metaphone & ln~fn:metaphone', 'fn:prefix2 & ln:prefix3']
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

    given, family, full = first("given_name"), first("family_name"), first("full_name")
    date = first("date")
    places = [a for kind in ("postcode", "address", "city") for a in by_kind.get(kind, [])]

    # Name keys: with separate given and family names use phonetic codes of each; with only
    # a full name use its first and last token.
    if given and family:
        g, f = Key(given, given, ("metaphone",)), Key(family, family, ("metaphone",))
        rules.append(Rule((g, f)))
        rules.append(Rule((Key(given, family, ("metaphone",)), Key(family, given, ("metaphone",)))))
        rules.append(Rule((Key(given, given, ("prefix2",)), Key(family, family, ("prefix3",)))))
    elif full:
        g = Key(full, full, ("first_token", "metaphone"))
        f = Key(full, full, ("last_token", "metaphone"))
        rules.append(Rule((g, f)))
        rules.append(Rule((Key(full, full, ("sorted_tokens",)),)))
    else:
        g = Key(given, given, ("metaphone",)) if given else None
        f = Key(family, family, ("metaphone",)) if family else None

    name_keys = [k for k in (g, f) if k is not None] if (given or family or full) else []
    if date:
        d = Key(date, date)
        for k in name_keys:
            rules.append(Rule((k, d)))
        # A typo in the year still leaves day and month; pair them with a name.
        for k in name_keys:
            rules.append(Rule((k, Key(date, date, ("month_day",)))))
        for p in places:
            rules.append(Rule((d, Key(p, p))))
            rules.append(Rule((Key(date, date, ("year",)), Key(p, p))))
    for p in places:
        for k in name_keys:
            rules.append(Rule((k, Key(p, p))))
    if len(places) >= 2:
        for p, q in combinations(places, 2):
            for k in name_keys[:1]:
                rules.append(Rule((k, Key(p, p), Key(q, q))))
    # Deduplicate while keeping order.
    seen, out = set(), []
    for r in rules:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out
