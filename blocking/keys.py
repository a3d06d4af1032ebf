"""Key transforms: turn a cleaned attribute into blocking key values.

Transforms chain left to right (``tokens:nickname:metaphone``). Some give several values per
record (``tokens`` splits a name into words, ``nickname`` gives every formal name a nickname
may stand for): the record then has several keys, and a pair is found when any agree.
Phonetic codes come from jellyfish and are computed once per distinct value.

>>> import polars as pl
>>> key_values(pl.Series(["catherine", "kathryn", None]), ("metaphone",)).rows()
[(0, 'K0RN'), (1, 'K0RN')]
>>> key_values(pl.Series(["bob smith"]), ("tokens", "nickname")).rows()
[(0, 'robert'), (0, 'smith')]
>>> key_values(pl.Series(["SW1A2AA"]), ("district",)).rows()
[(0, 'SW1A')]
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from importlib import resources
from typing import Callable

import jellyfish
import polars as pl

__all__ = ["TRANSFORMS", "key_values", "apply_transforms", "check_transform", "sql_transform",
           "nickname_groups", "canonical_names"]


@lru_cache(maxsize=1)
def nickname_groups() -> dict[str, tuple[str, ...]]:
    """Name -> the formal names it may stand for (a formal name stands for itself).

    From the bundled ``data/nicknames.csv`` (canonical name and its variants).
    """
    groups: dict[str, set[str]] = {}
    with resources.files("idweave.blocking").joinpath("data/nicknames.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            canon = row["canonical"].strip()
            groups.setdefault(canon, set()).add(canon)
            for v in row["variants"].split("|"):
                v = v.strip()
                if v:
                    groups.setdefault(v, set()).add(canon)
    return {k: tuple(sorted(v)) for k, v in groups.items()}


def canonical_names(name: str | None) -> list[str]:
    """The formal names a given name may stand for; itself when it is none of them.

    >>> canonical_names("bob"), canonical_names("zebedee")
    (['robert'], ['zebedee'])
    """
    if not name:
        return []
    return list(nickname_groups().get(name, (name,)))


def _phonetic(fn: Callable[[str], str]) -> Callable[[pl.Series], pl.Series]:
    def run(s: pl.Series) -> pl.Series:
        # Phonetic coders want letters only; codes are computed once per distinct value and
        # mapped back by a join (a join costs less than replace_strict on a small input).
        letters = s.str.replace_all(r"[^a-z]", "")
        uniq = letters.drop_nulls().unique()
        codes = pl.DataFrame({"v": uniq, "code": [(fn(v) or None) if v else None for v in uniq.to_list()]},
                             schema={"v": pl.Utf8, "code": pl.Utf8})
        return letters.to_frame("v").join(codes, on="v", how="left", maintain_order="left")["code"]
    return run


def _nickname(df: pl.DataFrame) -> pl.DataFrame:
    """Rows ``(row, key)`` -> one row per formal name each key may stand for, in order (a
    join on a flat name -> formal name table: building a list column costs more)."""
    names, formal = [], []
    for v in df["key"].drop_nulls().unique().to_list():
        for c in canonical_names(v):
            names.append(v)
            formal.append(c)
    table = pl.DataFrame({"key": names, "_formal": formal}, schema={"key": pl.Utf8, "_formal": pl.Utf8})
    return (df.join(table, on="key", how="inner", maintain_order="left_right")
            .select("row", pl.col("_formal").alias("key")))


def _district(s: pl.Series) -> pl.Series:
    # A postcode's district: all but its last three characters when it has more than four
    # (UK "SW1A2AA" -> "SW1A"); shorter codes (zip-like) keep their first three.
    n = s.str.len_chars()
    return pl.select(pl.when(n > 4).then(s.str.slice(0, n - 3)).otherwise(s.str.slice(0, 3))).to_series()


# Scalar -> scalar transforms.
_SIMPLE: dict[str, Callable[[pl.Series], pl.Series]] = {
    "exact": lambda s: s,
    "metaphone": _phonetic(jellyfish.metaphone),
    "soundex": _phonetic(jellyfish.soundex),
    "nysiis": _phonetic(jellyfish.nysiis),
    "year": lambda s: s.str.slice(0, 4),
    "year_month": lambda s: s.str.slice(0, 7),
    "month_day": lambda s: s.str.slice(5, 5),
    "first_token": lambda s: s.str.split(" ").list.first(),
    "last_token": lambda s: s.str.split(" ").list.last(),
    "sorted_tokens": lambda s: s.str.split(" ").list.sort().list.join(" "),
    "initial": lambda s: s.str.slice(0, 1),
    "digits": lambda s: s.str.replace_all(r"[^0-9]", ""),
    "local_part": lambda s: s.str.split("@").list.first(),
    "district": _district,
}
# Scalar -> several values: rows ``(row, key)`` -> rows, several per input row.
_MULTI: dict[str, Callable[[pl.DataFrame], pl.DataFrame]] = {
    "tokens": lambda df: df.with_columns(pl.col("key").str.split(" ")).explode("key"),
    "nickname": _nickname,
}
_PREFIX = re.compile(r"^prefix(\d+)$")
_SUFFIX = re.compile(r"^suffix(\d+)$")

TRANSFORMS = tuple(_SIMPLE) + tuple(_MULTI) + ("prefixN", "suffixN")


def check_transform(name: str) -> str | None:
    """A message if ``name`` is not a known transform, else None."""
    if name in _SIMPLE or name in _MULTI or _PREFIX.match(name) or _SUFFIX.match(name):
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


def key_values(s: pl.Series, transforms: tuple[str, ...]) -> pl.DataFrame:
    """Key values of each row of ``s``: a frame ``(row, key)``, several rows per input row
    when a transform gives several values; nulls and empty strings dropped."""
    df = pl.DataFrame({"row": pl.Series(range(s.len()), dtype=pl.Int64), "key": s.cast(pl.Utf8)})
    df = df.drop_nulls("key")
    for t in transforms:
        if t in _MULTI:
            df = _MULTI[t](df)
        else:
            df = df.with_columns(_one(df["key"], t).alias("key"))
        df = df.filter(pl.col("key").is_not_null() & (pl.col("key") != ""))
    return df.unique(maintain_order=True)


def apply_transforms(s: pl.Series, transforms: tuple[str, ...]) -> pl.Series:
    """One key per row (the first when a transform gives several); null where none."""
    kv = key_values(s, transforms).unique("row", keep="first", maintain_order=True)
    full = pl.DataFrame({"row": pl.Series(range(s.len()), dtype=pl.Int64)}).join(kv, on="row", how="left")
    return full["key"]


def sql_transform(expr: str, transforms: tuple[str, ...]) -> str | None:
    """The SQL for a transform chain, or None if it has no SQL form (phonetic codes, lists)."""
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
