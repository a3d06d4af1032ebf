"""Key transforms: turn a cleaned attribute into a blocking key.

Transforms chain left to right (``first_token:metaphone``). Phonetic codes come from
jellyfish and are computed once per distinct value, not per row.

>>> import polars as pl
>>> s = pl.Series(["catherine", "kathryn", None])
>>> apply_transforms(s, ("metaphone",)).to_list()
['K0RN', 'K0RN', None]
>>> apply_transforms(pl.Series(["1980-03-25"]), ("year",)).to_list()
['1980']
"""

from __future__ import annotations

import re
from typing import Callable

import jellyfish
import polars as pl

__all__ = ["TRANSFORMS", "apply_transforms", "check_transform", "sql_transform"]


def _phonetic(fn: Callable[[str], str]) -> Callable[[pl.Series], pl.Series]:
    def run(s: pl.Series) -> pl.Series:
        # Phonetic coders want letters only; codes are memoised per distinct value.
        letters = s.str.replace_all(r"[^a-z]", "")
        uniq = letters.drop_nulls().unique()
        codes = {v: (fn(v) or None) if v else None for v in uniq.to_list()}
        return letters.replace_strict(codes, default=None, return_dtype=pl.Utf8)
    return run


def _tokens(s: pl.Series) -> pl.Series:
    return s.str.split(" ")


_SIMPLE: dict[str, Callable[[pl.Series], pl.Series]] = {
    "exact": lambda s: s,
    "metaphone": _phonetic(jellyfish.metaphone),
    "soundex": _phonetic(jellyfish.soundex),
    "nysiis": _phonetic(jellyfish.nysiis),
    "year": lambda s: s.str.slice(0, 4),
    "year_month": lambda s: s.str.slice(0, 7),
    "month_day": lambda s: s.str.slice(5, 5),
    "first_token": lambda s: _tokens(s).list.first(),
    "last_token": lambda s: _tokens(s).list.last(),
    "sorted_tokens": lambda s: _tokens(s).list.sort().list.join(" "),
    "initial": lambda s: s.str.slice(0, 1),
    "digits": lambda s: s.str.replace_all(r"[^0-9]", ""),
    "local_part": lambda s: s.str.split("@").list.first(),
}
_PREFIX = re.compile(r"^prefix(\d+)$")
_SUFFIX = re.compile(r"^suffix(\d+)$")

TRANSFORMS = tuple(_SIMPLE) + ("prefixN", "suffixN")


def check_transform(name: str) -> str | None:
    """A message if ``name`` is not a known transform, else None."""
    if name in _SIMPLE or _PREFIX.match(name) or _SUFFIX.match(name):
        return None
    return f"unknown key transform {name!r}; expected one of {', '.join(TRANSFORMS)} (e.g. prefix3)"


def _one(s: pl.Series, name: str) -> pl.Series:
    if name in _SIMPLE:
        return _SIMPLE[name](s)
    m = _PREFIX.match(name)
    if m:
        return s.str.slice(0, int(m.group(1)))
    m = _SUFFIX.match(name)
    if m:
        return s.str.slice(-int(m.group(1)))
    raise ValueError(check_transform(name))


def apply_transforms(s: pl.Series, transforms: tuple[str, ...]) -> pl.Series:
    """Apply a chain of transforms to a cleaned string column; empty results become null."""
    out = s.cast(pl.Utf8)
    for t in transforms:
        out = _one(out, t)
    return out.replace("", None)


def sql_transform(expr: str, transforms: tuple[str, ...]) -> str | None:
    """The SQL for a transform chain, or None if it has no SQL form (phonetic codes)."""
    for t in transforms:
        m = _PREFIX.match(t)
        if t == "exact":
            continue
        elif m:
            expr = f"substr({expr}, 1, {int(m.group(1))})"
        elif t == "year":
            expr = f"substr({expr}, 1, 4)"
        elif t == "year_month":
            expr = f"substr({expr}, 1, 7)"
        elif t == "month_day":
            expr = f"substr({expr}, 6, 5)"
        elif t == "initial":
            expr = f"substr({expr}, 1, 1)"
        else:
            return None
    return expr
