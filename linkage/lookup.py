"""Lookup: records in, the best-matching entities out, writing nothing.

A query record is cleaned as a source row is (:func:`~idweave.linkage.sources.records_from_frame`
with a synthetic source), blocked with the project's rules against the stored records and
scored with the stored model, so a lookup finds the pairs a batch run would make with that
record added and gives them the same scores (the same Splink comparison SQL, the same
term-frequency tables, the same block-size caps).

It is fast because nothing per query builds a Splink linker, a frame or a DuckDB query, or
scans the store: a :class:`Matcher` loads the stored records once and keeps each blocking
rule's keys as sorted 64-bit hashes (a query key is found by binary search). A query dict is
cleaned in plain Python (:class:`_RecordCleaner`: the kinds' cleaning for printable-ASCII
values, the polars expressions themselves one value at a time otherwise), and each
comparison's level is Splink's level SQL compiled to Python with DuckDB's semantics
(:class:`_Compiler`; jaro-winkler rounded as DuckDB rounds it). DuckDB runs that SQL itself
only for what the compiler does not know, and lists or frames of queries are cleaned through
polars; ``tests/test_lookup_fast.py`` checks that both paths agree.
The matcher is a snapshot: it holds no lock on the store, so runs go on while it serves, and
:meth:`Matcher.refresh` (or :func:`lookup`, which rebuilds when the store file changes) picks
up a new run.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> best = lookup("fixtures/tiny/project.yaml", {"first_name": "Jorge", "last_name": "Castillo",
...                                              "birth_date": "1965-07-14"})
>>> best.columns[:5]
['query', 'rank', 'entity_id', 'match_probability', 'match_weight']
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from datetime import date
from itertools import product
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import numpy as np
import polars as pl
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler, Levenshtein

from idweave.blocking.keys import canonical_names, key_values
from idweave.blocking.pairs import DEFAULT_MAX_BLOCK
from idweave.blocking.rules import Key, Rule
from idweave.linkage import model as model_mod
from idweave.linkage._db import fetch_one, query_pl
from idweave.linkage.errors import IdweaveError, LookupInputError, SourceError, StoreError
from idweave.linkage.graph import Store
from idweave.linkage.kinds import KINDS, NAME_KINDS, _ADDRESS_ABBREV, _NAME_NOISE, _PLACEHOLDER_IDS, clean_expr
from idweave.linkage.project import Project, Source
from idweave.linkage.sources import derive_names, parse_dates, records_from_frame

__all__ = ["lookup", "Matcher"]

_SEED = 20240917  # any fixed seed: hashes are compared only within one process
_QUERY_ID = "_lookup_row"


def _hash(keys: pl.Series) -> np.ndarray:
    return keys.hash(seed=_SEED).to_numpy()


@dataclass
class _Side:
    """Sorted key hashes of one side of one rule and the rids holding them."""

    h: np.ndarray
    rid: np.ndarray

    @classmethod
    def build(cls, frame: pl.DataFrame) -> "_Side":
        if frame.height == 0:
            return cls(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        f = frame.select(pl.col("key").hash(seed=_SEED).alias("h"), pl.col("rid").cast(pl.Int64)).sort("h")
        return cls(f["h"].to_numpy(), f["rid"].to_numpy())

    def get(self, h: np.uint64) -> np.ndarray:
        a = np.searchsorted(self.h, h, "left")
        if a == len(self.h) or self.h[a] != h:
            return self.rid[:0]
        b = np.searchsorted(self.h, h, "right")
        return self.rid[a:b]


@dataclass
class _RuleIndex:
    rule: Rule
    cap: int
    left: _Side
    right: _Side  # the same object as left for a symmetric rule
    size_h: np.ndarray
    size_n: np.ndarray

    def size(self, h: np.uint64) -> int:
        i = np.searchsorted(self.size_h, h, "left")
        return int(self.size_n[i]) if i < len(self.size_h) and self.size_h[i] == h else 0


class _KeyMemo:
    """The key values of one transform chain per source value, computed by
    :func:`idweave.blocking.keys.key_values` (so they are the keys batch blocking makes)."""

    def __init__(self, transforms: tuple[str, ...]):
        self.transforms = transforms
        self.cache: dict[Any, tuple[str, ...]] = {}

    def prime(self, values: pl.Series) -> None:
        uniq = values.drop_nulls().unique()
        if uniq.len() == 0:
            return
        kv = key_values(uniq, self.transforms)
        got = kv.group_by("row", maintain_order=True).agg("key")
        vals = uniq.to_list()
        for row, keys in got.iter_rows():
            self.cache[vals[row]] = tuple(keys)
        for v in vals:
            self.cache.setdefault(v, ())

    def get(self, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not self.transforms and isinstance(value, str):
            return (value,) if value else ()
        hit = self.cache.get(value)
        if hit is None:
            kv = key_values(pl.Series([value]), self.transforms)
            hit = tuple(kv["key"].to_list())
            if len(self.cache) < 2_000_000:
                self.cache[value] = hit
        return hit


def _side_value(rec: Mapping[str, Any], spec: str) -> Any:
    """:meth:`Key.source_values` for one record: an attribute, or several joined by spaces."""
    parts = spec.split("+")
    if len(parts) == 1:
        return rec.get(parts[0])
    words = [str(rec[p]) for p in parts if rec.get(p) is not None]
    return " ".join(words) or None


# ---------------------------------------------------------------------------------------
# cleaning one query record without building frames
# ---------------------------------------------------------------------------------------
class _Slow(Exception):
    """The fast path cannot be sure to give what the polars / DuckDB path gives: take that."""


_PRINTABLE = re.compile(r"[ -~]*")  # printable ASCII: Python and polars (Rust) regexes agree on it
_NOISE_RE = re.compile(_NAME_NOISE)
_ABBREV = [(re.compile(p), r) for p, r in _ADDRESS_ABBREV.items()]
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_MISSING = object()
_CLEANABLE = frozenset(KINDS) - {"date"}
_MALE = frozenset(["m", "male", "man", "boy", "1", "h", "homme"])
_FEMALE = frozenset(["f", "female", "woman", "girl", "2", "w", "femme"])


def _squash(s: str) -> str:
    return " ".join(w for w in s.split(" ") if w)


def _name_ascii(s: str) -> str | None:
    t = _NOISE_RE.sub(" ", _squash(re.sub(r"[^a-z0-9 ]+", " ", re.sub(r"['`.]", "", s.lower()))))
    return _squash(re.sub(r"[0-9]+", " ", t)) or None


def _one_char(t: str) -> bool:
    return len(t) > 0 and len(set(t)) == 1


def _clean_ascii(kind: str, s: str) -> Any:
    """The cleaning of :mod:`idweave.linkage.kinds` for one printable-ASCII value."""
    if kind in ("given_name", "family_name"):
        return _name_ascii(s)
    if kind == "full_name":
        if "," in s:
            parts = s.split(",")
            s = parts[1] + " " + parts[0]
        return _name_ascii(s)
    if kind in ("category", "city", "text"):
        return _squash(re.sub(r"[^a-z0-9 ]+", " ", re.sub(r"['`.]", "", s.lower()))) or None
    if kind == "address":
        t = _squash(re.sub(r"[^a-z0-9 ]+", " ", re.sub(r"['`.]", "", s.lower())))
        for pat, rep in _ABBREV:
            t = pat.sub(rep, t)
        return t or None
    if kind == "postcode":
        return re.sub(r"[^0-9A-Z]", "", s.upper()) or None
    if kind == "national_id":
        t = re.sub(r"[^0-9A-Z]", "", s.upper())
        return t if len(t) >= 4 and not _one_char(t) and t not in _PLACEHOLDER_IDS else None
    if kind == "phone":
        d = re.sub(r"[^0-9]", "", s)
        d = re.sub(r"^00", "", d, count=1)
        d = re.sub(r"^(44|1|33|49|91|61)(\d{9,10})$", r"\2", d, count=1)
        d = re.sub(r"^0", "", d, count=1)
        return None if len(d) < 6 or _one_char(d) else d
    if kind == "email":
        t = s.strip(" ").lower()
        return t if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", t) else None
    if kind == "sex":
        t = s.strip(" ").lower()
        return "m" if t in _MALE else "f" if t in _FEMALE else None
    if kind == "number":
        t = re.sub(r"[, ]", "", s)
        if not _PLAIN_NUMBER.fullmatch(t):
            raise _Slow
        return float(t)
    raise _Slow


# ---------------------------------------------------------------------------------------
# comparison levels in Python, with the semantics of the DuckDB SQL Splink runs
# ---------------------------------------------------------------------------------------
class _Unsupported(Exception):
    """A comparison level whose SQL the Python evaluator does not know (DuckDB scores it)."""


_TOKEN = re.compile(r"""\s*(?:(?P<num>\d+(?:\.\d+)?)|"(?P<col>[^"]+)"|'(?P<str>(?:[^']|'')*)'|"""
                    r"""(?P<op>>=|<=|<>|!=|[=<>(),*+\-/])|(?P<word>[A-Za-z_][A-Za-z_0-9]*))""")


def _tokens(sql: str) -> list[tuple[str, Any]]:
    out, pos = [], 0
    sql = sql.strip()
    while pos < len(sql):
        m = _TOKEN.match(sql, pos)
        if m is None or m.end() == pos:
            raise _Unsupported(sql[pos:pos + 20])
        pos = m.end()
        kind = m.lastgroup
        val = m.group(kind)
        if kind == "num":
            val = float(val) if "." in val else int(val)
        elif kind == "str":
            val = val.replace("''", "'")
        elif kind == "word":
            val = val.lower()
        out.append((kind, val))
    return out


def _jaro_winkler(p: str, t: str) -> float:
    """DuckDB's ``jaro_winkler_similarity`` (its rapidfuzz port), with its order of float
    operations, so that a value at a threshold falls on the same side."""
    P, T = len(p), len(t)
    if not P or not T:
        return 0.0
    if P == 1 and T == 1:
        return float(p == t)
    bound = max(P, T) // 2 - 1
    used = [False] * P
    t_hit = []
    for j, ch in enumerate(t):
        for i in range(max(0, j - bound), min(P, j + bound + 1)):
            if not used[i] and p[i] == ch:
                used[i] = True
                t_hit.append(ch)
                break
    m = len(t_hit)
    if not m:
        return 0.0
    p_hit = [c for c, u in zip(p, used) if u]
    trans = sum(a != b for a, b in zip(p_hit, t_hit)) // 2
    sim = (m / P + m / T + (m - trans) / m) / 3.0
    if sim > 0.7:
        prefix = 0
        for a, b in zip(p[:4], t[:4]):
            if a != b:
                break
            prefix += 1
        w = prefix * 0.1
        sim = _fma(w, 1.0 - sim, sim) if _duckdb_fuses() else sim + w * (1.0 - sim)
    return sim


def _fma(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once."""
    if hasattr(math, "fma"):  # Python 3.13
        return math.fma(a, b, c)
    from fractions import Fraction

    return float(Fraction(a) * Fraction(b) + Fraction(c))


@functools.lru_cache(maxsize=1)
def _duckdb_fuses() -> bool:
    """Whether this DuckDB build adds the Winkler bonus with a fused multiply-add (x86-64
    wheels do): the two roundings differ in the last bit for ("c ", "ca b bcaaba")."""
    con = duckdb.connect()
    try:
        got = con.execute("select jaro_winkler_similarity('c ', 'ca b bcaaba')").fetchone()[0]
    finally:
        con.close()
    sim = (2 / 2 + 2 / 11 + 2 / 2) / 3.0
    return got == _fma(0.1, 1.0 - sim, sim) != sim + 0.1 * (1.0 - sim)


def _no_null(fn):
    def run(*args):
        return None if any(a is None for a in args) else fn(*args)

    def run1(a):
        return None if a is None else fn(a)

    def run2(a, b):
        return None if a is None or b is None else fn(a, b)
    run.one, run.two = run1, run2
    return run


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Slow
    return v


def _substr(s: str, start: int, n: int) -> str:
    if start < 1 or n < 0:
        raise _Slow
    return _text(s)[start - 1:start - 1 + n]


def _left(s: str, n: int) -> str:
    s = _text(s)
    return s[:n] if n >= 0 else s[:max(len(s) + n, 0)]


def _right(s: str, n: int) -> str:
    s = _text(s)
    return (s[-n:] if n > 0 else "") if n >= 0 else s[min(-n, len(s)):]


def _split_part(s: str, sep: str, i: int) -> str:
    if not sep or i < 1:
        raise _Slow
    parts = _text(s).split(sep)
    return parts[i - 1] if i <= len(parts) else ""


def _string_split(s: str, sep: str) -> list[str]:
    if not sep:
        raise _Slow
    return _text(s).split(sep)


def _as_date(v: Any) -> date | None:
    """``try_cast(v AS DATE)`` for the ISO dates cleaning makes."""
    if type(v) is not str:
        raise _Slow
    return _iso_date(v)


@functools.lru_cache(maxsize=1 << 16)
def _iso_date(s: str) -> date | None:
    if not _ISO.fullmatch(s) or s < "1000":
        raise _Slow  # DuckDB reads more shapes than this; let it
    try:
        return date.fromisoformat(s)
    except ValueError:
        return None  # try_cast of an impossible date


def _list(v: Any) -> list:
    if not isinstance(v, (list, tuple)) or any(x is None for x in v):
        raise _Slow
    return list(v)


def _greatest(*args):
    vals = [a for a in args if a is not None]
    return max(vals) if vals else None


def _number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise _Slow  # DuckDB orders NaN above everything and makes it equal to itself
    return v


_FUNCS: dict[str, Any] = {
    "jaro_winkler_similarity": _no_null(lambda a, b: _jaro_winkler(_text(a), _text(b))),
    "damerau_levenshtein": _no_null(lambda a, b: DamerauLevenshtein.distance(_text(a), _text(b))),
    "levenshtein": _no_null(lambda a, b: Levenshtein.distance(_text(a), _text(b))),
    "length": _no_null(lambda s: len(_text(s))),
    "substr": _no_null(_substr),
    "substring": _no_null(_substr),
    "left": _no_null(_left),
    "right": _no_null(_right),
    "split_part": _no_null(_split_part),
    "string_split": _no_null(_string_split),
    "list_sort": _no_null(lambda v: sorted(_list(v))),
    "list_has_any": _no_null(lambda a, b: not set(_list(a)).isdisjoint(_list(b))),
    "len": _no_null(lambda v: len(_list(v))),
    "abs": _no_null(lambda x: abs(_number(x))),
    "greatest": _greatest,
}
_CMP = {"=": lambda a, b: a == b, "<>": lambda a, b: a != b, "!=": lambda a, b: a != b,
        ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
_ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _same_kind(a: Any, b: Any) -> None:
    ok = (isinstance(a, str) and isinstance(b, str)) or (isinstance(a, list) and isinstance(b, list)) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool)) or (isinstance(a, date) and isinstance(b, date))
    if not ok:
        raise _Slow


class _Compiler:
    """Compile one level's SQL condition into ``f(L, R) -> True | False | None`` (SQL's
    three-valued logic; a CASE takes a level only on True). ``L``/``R`` map a column to the
    query's and the stored record's value. Unknown SQL raises :class:`_Unsupported` (the
    comparison is then scored by DuckDB); values the evaluator cannot vouch for raise
    :class:`_Slow` at run time (the query is then scored by DuckDB)."""

    def __init__(self, sql: str):
        self.toks = _tokens(sql)
        self.i = 0
        self.columns: set[tuple[str, str]] = set()

    def compile(self):
        f = self.expr()
        if self.i != len(self.toks):
            raise _Unsupported(str(self.toks[self.i]))
        return f

    def peek(self, *want: Any) -> bool:
        return self.i < len(self.toks) and self.toks[self.i][1] in want and self.toks[self.i][0] in ("op", "word")

    def take(self, want: Any) -> None:
        if not self.peek(want):
            raise _Unsupported(f"expected {want}")
        self.i += 1

    def expr(self):
        return self._chain("or", self.conj, True)

    def conj(self):
        return self._chain("and", self.cmp, False)

    def _chain(self, word: str, part, decides: bool):
        """``a OR b ...`` (``decides`` True) or ``a AND b ...`` (False), in three-valued logic."""
        parts = [part()]
        while self.peek(word):
            self.i += 1
            parts.append(part())
        if len(parts) == 1:
            return parts[0]

        def f(L, R):
            unknown = False
            for p in parts:
                v = p(L, R)
                if v is decides:
                    return decides
                if v is None:
                    unknown = True
                elif v is not (not decides):
                    raise _Slow
            return None if unknown else not decides
        return f

    def cmp(self):
        start = self.i
        a = self.arith()
        if self.peek("is"):
            self.i += 1
            negate = self.peek("not")
            if negate:
                self.i += 1
            self.take("null")
            return (lambda L, R: a(L, R) is not None) if negate else (lambda L, R: a(L, R) is None)
        for op in (">=", "<=", "<>", "!=", "=", ">", "<"):
            if self.peek(op):
                self.i += 1
                b = self.arith()
                fast = self._jaro_winkler_at(start, op, b) or self._columns_equal(start, op)
                if fast is not None:
                    return fast
                test = _CMP[op]

                def f_cmp(L, R):
                    x, y = a(L, R), b(L, R)
                    if x is None or y is None:
                        return None
                    t = type(x)
                    if t is not type(y) or (t is not str and t is not int):
                        _same_kind(x, y)
                    return test(x, y)
                return f_cmp
        return a

    def _jaro_winkler_at(self, start: int, op: str, b):
        """``jaro_winkler_similarity(x, y) >= t``: rapidfuzz (fast) unless it lands within
        1e-9 of t, where DuckDB's own rounding decides (rapidfuzz counts the same matches
        and transpositions; only the float operations' order differs)."""
        toks = self.toks[start:self.i]
        if not (op in (">=", ">") and toks[0] == ("word", "jaro_winkler_similarity") and len(toks) == 8
                and toks[-1][0] == "num" and toks[3][1] == "," and toks[2][0] == toks[4][0] == "col"):
            return None
        x, y, t = self._col(toks[2][1]), self._col(toks[4][1]), float(toks[-1][1])
        strict = op == ">"

        def f_jw(L, R):
            a, c = x(L, R), y(L, R)
            if a is None or c is None:
                return None
            s = JaroWinkler.similarity(_text(a), _text(c)) if (a and c) else 0.0
            if abs(s - t) <= 1e-9:
                s = _jaro_winkler(a, c)
            return s > t if strict else s >= t
        return f_jw

    def _columns_equal(self, start: int, op: str):
        """``"a_l" = "b_r"``, the commonest level, without the generic machinery."""
        toks = self.toks[start:self.i]
        if op != "=" or len(toks) != 3 or toks[0][0] != "col" or toks[2][0] != "col":
            return None
        x, y = self._col(toks[0][1]), self._col(toks[2][1])

        def f_eq(L, R):
            a, b = x(L, R), y(L, R)
            if a is None or b is None:
                return None
            if type(a) is not str or type(b) is not str:
                _same_kind(a, b)
            return a == b
        return f_eq

    def arith(self):
        a = self.term()
        while self.peek("+", "-"):
            op = _ARITH[self.toks[self.i][1]]
            self.i += 1
            a = self._binary(op, a, self.term())
        return a

    def term(self):
        a = self.unary()
        while self.peek("*"):
            self.i += 1
            a = self._binary(_ARITH["*"], a, self.unary())
        return a

    @staticmethod
    def _binary(op, a, b):
        def f(L, R):
            x, y = a(L, R), b(L, R)
            if x is None or y is None:
                return None
            if isinstance(x, (str, list, date)) or isinstance(y, (str, list, date)):
                raise _Slow
            return op(_number(x), _number(y))
        return f

    def unary(self):
        if self.peek("-"):
            self.i += 1
            a = self.unary()
            return lambda L, R: None if (v := a(L, R)) is None else -_number(v)
        return self.primary()

    def _col(self, name: str):
        base, side = name[:-2], name[-2:]
        if side not in ("_l", "_r"):
            raise _Unsupported(name)
        self.columns.add((side, base))
        if side == "_l":
            return lambda L, R: L.get(base)
        return lambda L, R: R.get(base)

    def primary(self):
        if self.i >= len(self.toks):
            raise _Unsupported("end of condition")
        kind, val = self.toks[self.i]
        self.i += 1
        if kind == "num":
            return lambda L, R: val
        if kind == "str":
            return lambda L, R: val
        if kind == "col":
            return self._col(val)
        if kind == "op" and val == "(":
            e = self.expr()
            self.take(")")
            return e
        if kind == "word" and self.peek("("):
            self.i += 1
            if val == "try_cast":
                a = self.expr()
                self.take("as")
                self.take("date")
                self.take(")")
                return lambda L, R: None if (v := a(L, R)) is None else _as_date(v)
            args = [] if self.peek(")") else [self.expr()]
            while self.peek(","):
                self.i += 1
                args.append(self.expr())
            self.take(")")
            return self._call(val, args)
        raise _Unsupported(str(val))

    def _call(self, name: str, args: list):
        if name == "date_diff":
            unit = args[0](None, None) if len(args) == 3 else None
            if unit != "day":
                raise _Unsupported("date_diff unit")
            a, b = args[1], args[2]

            def f_diff(L, R):
                x, y = a(L, R), b(L, R)
                if x is None or y is None:
                    return None
                return (y - x).days
            return f_diff
        if name == "len" and getattr(args[0], "intersect", None) is not None:
            a, b = args[0].intersect

            def f_common(L, R):  # len(list_intersect(a, b)): distinct non-null elements in common
                x, y = a(L, R), b(L, R)
                if x is None or y is None:
                    return None
                return len(set(_list(x)) & set(_list(y)))
            return f_common
        if name == "list_intersect" and len(args) == 2:
            def f_intersect(L, R):  # only its length is known to be read (above)
                raise _Slow
            f_intersect.intersect = tuple(args)
            return f_intersect
        fn = _FUNCS.get(name)
        if fn is None:
            raise _Unsupported(name)
        if len(args) == 1:
            a, f1 = args[0], getattr(fn, "one", fn)
            return lambda L, R: f1(a(L, R))
        if len(args) == 2:
            a, b = args
            f2 = getattr(fn, "two", fn)
            return lambda L, R: f2(a(L, R), b(L, R))
        return lambda L, R: fn(*[x(L, R) for x in args])


def _compile_comparison(comparison: Mapping[str, Any]) -> tuple[list, tuple[str, ...], tuple[int, ...]] | None:
    """A comparison's levels as (gamma, predicate) in Splink's CASE order (the null level
    -1, then the others from n-1 down to 0; ELSE has no predicate), the stored-record
    columns they read and which of those determine the level (with the query's record);
    None when some level's SQL is unknown to :class:`_Compiler`."""
    levels = comparison["comparison_levels"]
    gamma = sum(1 for lv in levels if not lv.get("is_null_level")) - 1
    out, rcols = [], set()
    try:
        for lv in levels:
            g = -1 if lv.get("is_null_level") else gamma
            gamma -= 0 if lv.get("is_null_level") else 1
            sql = lv["sql_condition"].strip()
            if sql.upper() == "ELSE":
                out.append((g, None))
                continue
            comp = _Compiler(sql)
            out.append((g, comp.compile()))
            rcols |= {base for side, base in comp.columns if side == "_r"}
    except _Unsupported:
        return None
    cols = tuple(sorted(rcols))
    suffix = model_mod.FORMAL_SUFFIX
    # a formal-names column follows from its base column: the base alone keys the memo
    key = tuple(i for i, c in enumerate(cols) if not (c.endswith(suffix) and c[: -len(suffix)] in rcols))
    if any(cols[i].endswith(suffix) for i in key):  # a list would not be hashable: no memo then
        key = None
    return out, cols, key


def _gamma(levels: list, left: Mapping[str, Any], right: Mapping[str, Any]) -> int:
    for g, test in levels:
        if test is None or test(left, right) is True:
            return g
    raise _Slow  # a CASE without ELSE gives NULL: let DuckDB say so


def _check_attributes(rec: Mapping[str, Any], i: int, kinds: Mapping[str, str]) -> None:
    for a in rec:
        if a not in kinds:
            unknown = sorted(set(rec) - set(kinds))[0]
            raise LookupInputError(f"unknown attribute '{unknown}'; the project's attributes are "
                                   f"{', '.join(kinds)}", row=str(i), column=unknown)


class _RecordCleaner:
    """Cleans one query record in plain Python, no frames: printable-ASCII values with
    :func:`_clean_ascii`, ISO dates as they are, anything else with the polars expressions
    themselves, one value at a time (memoised). ``tests/test_lookup_fast.py`` checks it
    against :func:`_clean_frames` on every fixture value and on random ones.

    >>> _RecordCleaner({"name": "full_name", "born": "date"}).clean({"name": "SMITH, Ann", "born": "1980-03-25"}, None)
    {'name': 'ann smith', 'born': '1980-03-25'}
    """

    def __init__(self, kinds: Mapping[str, str]):
        self.kinds = dict(kinds)
        self._memo: dict[tuple, Any] = {}
        names = {k: next((a for a, kk in self.kinds.items() if kk == k), None) for k in NAME_KINDS}
        self._name_attrs = tuple(names.values()) if all(names.values()) else None

    def clean(self, rec: Mapping[str, Any], date_format: str | None) -> dict[str, Any] | None:
        """One record (of known attributes) cleaned as :func:`_clean_frames` cleans it; None
        when it must take that path (no attribute named, a date that does not parse: that
        path reports the error)."""
        if not rec:
            return None
        out: dict[str, Any] = {}
        try:
            for a, kind in self.kinds.items():
                v = rec.get(a)
                if v is None:
                    out[a] = None
                    continue
                s = str(v)
                if kind == "date":
                    out[a] = self._date(s, date_format)
                elif _PRINTABLE.fullmatch(s):
                    out[a] = _clean_ascii(kind, s)
                else:
                    out[a] = self._polars(kind, s)
        except _Slow:
            return None
        if self._name_attrs is not None:  # sources.derive_names, for one record
            g, f, n = self._name_attrs
            vg, vf, vn = out[g], out[f], out[n]
            if vg is None and vf is None and vn is not None:
                tokens = vn.split(" ")
                out[g] = tokens[0]
                if len(tokens) > 1:
                    out[f] = tokens[-1]
            if vn is None:
                out[n] = " ".join(x for x in (vg, vf) if x is not None) or None
        return out

    def _polars(self, kind: str, s: str) -> Any:
        """:func:`~idweave.linkage.kinds.clean_expr` on one value (what the sources do to a
        column), memoised."""
        key = (kind, s)
        hit = self._memo.get(key, _MISSING)
        if hit is _MISSING:
            if kind not in _CLEANABLE:
                raise _Slow
            hit = pl.DataFrame({"v": [s]}, schema={"v": pl.Utf8}).select(clean_expr(kind, pl.col("v"))).item()
            if len(self._memo) < 100_000:
                self._memo[key] = hit
        return hit

    def _date(self, s: str, fmt: str | None) -> str | None:
        t = s.strip(" ") if _PRINTABLE.fullmatch(s) else None
        if t == "":
            return None
        if t is not None and fmt in (None, "%Y-%m-%d") and _ISO.fullmatch(t) and t >= "1000":
            try:
                date.fromisoformat(t)
                return t  # the first format tried, and it reads the value: parse_dates keeps it as it is
            except ValueError:
                pass
        key = ("date", s, fmt, date.today())  # two-digit years depend on today
        hit = self._memo.get(key, _MISSING)
        if hit is _MISSING:
            hit = parse_dates(pl.Series("v", [s], dtype=pl.Utf8), fmt)[0][0]
            if hit is None:
                raise _Slow  # unless it is blank, the polars path refuses it with the place
            if len(self._memo) < 100_000:
                self._memo[key] = hit
        return hit


def _clean_frames(records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, kinds: Mapping[str, str],
                  date_format: str | None) -> pl.DataFrame:
    """Query records cleaned through polars, as a source is
    (:func:`~idweave.linkage.sources.records_from_frame` and
    :func:`~idweave.linkage.sources.derive_names`): one row per record, ``query`` its position.

    >>> _clean_frames([{"name": "Ann"}, {"name": "LEE, Bo"}], {"name": "full_name"}, None)["name"].to_list()
    ['ann', 'bo lee']
    """
    if isinstance(records, Mapping):
        rows = [records]
    elif isinstance(records, (list, tuple)):
        rows = list(records)
    else:
        rows = None
    if rows is not None:
        if not rows or not all(isinstance(r, Mapping) for r in rows):
            raise LookupInputError("give a record as a mapping of attribute -> value (or a list of them)")
        for i, r in enumerate(rows):
            _check_attributes(r, i, kinds)
        cols = [a for a in kinds if any(a in r for r in rows)]
        raw = pl.DataFrame([{a: (None if r.get(a) is None else str(r.get(a))) for a in cols} for r in rows],
                           schema={a: pl.Utf8 for a in cols})
    else:
        from idweave.linkage.sources import _to_polars

        try:
            raw = _to_polars(records, Source(name="lookup", id=_QUERY_ID, columns={}))
        except SourceError:
            raise LookupInputError("give a record as a mapping of attribute -> value (or a list of them, "
                                   f"or a polars, pandas or Arrow table), not a {type(records).__name__}") from None
        unknown = [c for c in raw.columns if c not in kinds]
        if unknown:
            raise LookupInputError(f"unknown attribute '{unknown[0]}'; the project's attributes are "
                                   f"{', '.join(kinds)}", column=unknown[0])
        cols = list(raw.columns)
    if not cols:
        raise LookupInputError("the record names no attribute; the project's attributes are "
                               f"{', '.join(kinds)}")
    raw = raw.with_columns(pl.Series(_QUERY_ID, [str(i) for i in range(raw.height)]))
    src = Source(name="lookup", id=_QUERY_ID, columns={a: a for a in cols}, date_format=date_format)
    try:
        recs = records_from_frame(raw, src, kinds)
    except SourceError as exc:
        errs = getattr(exc, "errors", [exc])
        e = errs[0]
        raise LookupInputError(e.message, column=e.column, row=e.row, hint=e.hint) from None
    recs = derive_names(recs, kinds)
    return recs.with_columns(pl.col("record_id").cast(pl.Int64).alias("query")).drop("source", "record_id")


class Matcher:
    """A read-only, in-memory lookup index over a project's store (see the module docstring).

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> with Matcher("fixtures/tiny/project.yaml") as m:
    ...     m.lookup({"first_name": "x", "last_name": "y"}).height
    0
    """

    def __init__(self, project: Project | str | Path | Mapping[str, Any], *, store: str | Path | None = None):
        from idweave.linkage.pipeline import resolve_project

        self.project = resolve_project(project)
        if store is not None:
            self.project.store = Path(store)
        self.refresh()

    def __enter__(self) -> "Matcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_con", None) is not None:
            self._con.close()
            self._con = None

    # ------------------------------------------------------------------ building
    def refresh(self) -> None:
        """(Re)load the store's records, model and last threshold, and rebuild the index."""
        from idweave.linkage.pipeline import project_rules

        proj = self.project
        self.close()
        with Store.open(proj.store, read_only=True) as st:
            if not st.has_table("records"):
                raise StoreError("the store holds no records yet: run `idweave link` first", file=str(proj.store))
            stored = st.latest_model()
            if stored is None:
                raise StoreError("the store has no model yet: run `idweave link` first", file=str(proj.store))
            settings, tf_tables, version = stored
            row = fetch_one(st.con, "select run_id, threshold from runs order by run_id desc limit 1")
            records = query_pl(st.con, "select * from records order by source, record_id")
        self.run_id, self.threshold = (int(row[0]), float(row[1])) if row else (0, None)
        self.model = model_mod.TrainedModel(settings, tf_tables)
        self.model_version = version
        self.kinds = {a.name: a.kind for a in proj.attributes.values()}
        records = records.with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
        for a, k in self.kinds.items():
            if a not in records.columns:
                records = records.with_columns(pl.lit(None, dtype=pl.Float64 if k == "number" else pl.Utf8).alias(a))
        self.records = records
        self.rules = project_rules(proj, records)
        self.exclusive = {s.name for s in proj.sources.values() if s.exclusive}
        self._build_index(records)
        self._build_scorer(records)

    def _build_index(self, records: pl.DataFrame) -> None:
        from idweave.blocking.pairs import rule_keys  # the exact keys batch blocking makes

        self._index: list[_RuleIndex] = []
        self._memo: dict[tuple[str, tuple[str, ...]], _KeyMemo] = {}
        for rule in self.rules:
            lk, rk = rule_keys(records, rule)
            left = lk.select("rid", "key")
            right = left if rule.symmetric else rk.select("rid", "key")
            holders = left if rule.symmetric else pl.concat([left, right])
            sizes = holders.unique().group_by("key").len().select(
                pl.col("key").hash(seed=_SEED).alias("h"), pl.col("len")).sort("h")
            ls = _Side.build(left)
            self._index.append(_RuleIndex(rule, rule.max_block if rule.max_block is not None else DEFAULT_MAX_BLOCK,
                                          ls, ls if rule.symmetric else _Side.build(right),
                                          sizes["h"].to_numpy(), sizes["len"].to_numpy()))
            for k in rule.keys:
                for spec in {k.left, k.right}:
                    m = self._memo.get((spec, k.transforms))
                    if m is None:
                        m = self._memo[(spec, k.transforms)] = _KeyMemo(k.transforms)
                        if k.transforms:
                            m.prime(k.source_values(records, "l" if spec == k.left else "r"))

    def _build_scorer(self, records: pl.DataFrame) -> None:
        self._parts = model_mod.scoring_parts(self.model.settings)
        self._cols = self._parts.columns
        self._tf = {c: dict(t.select(c, f"tf_{c}").iter_rows()) for c, t in self.model.tf_tables.items()}
        prepared = model_mod.prepare(records, self._cols)
        self._right = prepared.select(*self._cols)
        self._right_arrow = self._right.rename({c: f"{c}_r" for c in self._cols}).to_arrow()
        # The term frequencies of stored values, looked up once.
        self._tf_right = {c: records[c].replace_strict(t, default=None, return_dtype=pl.Float64).to_numpy()
                          for c, t in self._tf.items() if c in records.columns}
        self._gamma_sql = ("select " + ", ".join(f"({g.rsplit(' as ', 1)[0]}) as g{i}"
                                                 for i, g in enumerate(self._parts.gamma_sql)) + " from _cand")
        self._entity = records["entity_id"].to_numpy()
        self._src = records["source"].to_numpy()
        self._rid_ids = records["record_id"].to_numpy()
        self._con = duckdb.connect()
        self._con.execute("set threads = 1")  # a few rows: threads only add start-up time
        self._levels = {}
        for c in self.model.settings["comparisons"]:
            levels = [lv.get("label_for_charts", "") for lv in c["comparison_levels"] if not lv.get("is_null_level")]
            self._levels[c["output_column_name"]] = levels
        self._py_levels = [_compile_comparison(c) for c in self.model.settings["comparisons"]]
        _duckdb_fuses()  # asked once, now, rather than during a query
        self._log_prior = math.log2(self._parts.prior / (1 - self._parts.prior))
        self._cleaner = _RecordCleaner(self.kinds)

    # ------------------------------------------------------------------ querying
    def clean(self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *,
              date_format: str | None = None) -> pl.DataFrame:
        """Query records (a dict, a list of dicts or a frame of attributes) cleaned as the
        sources are: one row per query, ``query`` = its position.

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     m.clean({"first_name": " Dr. JOSÉ ", "birth_date": "03/25/1980"}, date_format="%m/%d/%Y").row(0)[:4]
        ('jose', None, 'jose', '1980-03-25')
        """
        if isinstance(records, Mapping):
            _check_attributes(records, 0, self.kinds)
            rec = self._cleaner.clean(records, date_format)
            if rec is not None:
                return pl.DataFrame([[rec[a]] for a in self.kinds] + [[0]], orient="col",
                                    schema={**{a: pl.Float64 if k == "number" else pl.Utf8 for a, k in self.kinds.items()},
                                            "query": pl.Int64})
        return _clean_frames(records, self.kinds, date_format)

    def candidates(self, rec: Mapping[str, Any], *, source: str | None = None) -> dict[int, int]:
        """Stored rids a batch run would pair with this cleaned record -> the first rule that
        pairs them (block-size caps counted with the record added)."""
        out: dict[int, int] = {}
        keys_by_rule = []
        hashes_needed: list[str] = []
        for ri in self._index:
            sides = []
            for side in ("l", "r") if not ri.rule.symmetric else ("l",):
                combos = []
                for k in ri.rule.keys:
                    spec = k.left if side == "l" else k.right
                    combos.append(self._memo_for(spec, k.transforms).get(_side_value(rec, spec)))
                keys = ["\x1f".join(c) for c in product(*combos)] if all(combos) else []
                sides.append(keys)
                hashes_needed += keys
            keys_by_rule.append(sides)
        if not hashes_needed:
            return out
        # numpy uint64 scalars: a Python int above 2**63 would make searchsorted convert the
        # whole index array on every call.
        hv = dict(zip(hashes_needed, _hash(pl.Series(hashes_needed, dtype=pl.Utf8))))
        for i, (ri, sides) in enumerate(zip(self._index, keys_by_rule)):
            lkeys = sides[0]
            rkeys = sides[0] if ri.rule.symmetric else sides[1]
            held = set(lkeys) | set(rkeys)
            # pairs (query as left, stored as right) and (stored as left, query as right)
            for keys, other in ((lkeys, ri.right), (rkeys, ri.left)):
                for k in keys:
                    h = hv[k]
                    if ri.size(h) + (1 if k in held else 0) > ri.cap:
                        continue
                    for rid in other.get(h).tolist():
                        if rid not in out:
                            out[rid] = i
        if source is not None and source in self.exclusive:
            out = {r: i for r, i in out.items() if self._src[r] != source}
        return out

    def _memo_for(self, spec: str, transforms: tuple[str, ...]) -> _KeyMemo:
        m = self._memo.get((spec, transforms))
        if m is None:
            m = self._memo[(spec, transforms)] = _KeyMemo(transforms)
        return m

    def score(self, query: pl.DataFrame, pairs: Sequence[tuple[int, int, int]]) -> pl.DataFrame:
        """Score (query row, stored rid, rule) pairs with the stored model: ``query``,
        ``rid``, ``rule``, ``level_<c>``, ``w_<c>``, ``match_weight``, ``match_probability``.

        The levels are those of Splink's comparison SQL: evaluated in Python with DuckDB's
        semantics (:class:`_Compiler`), or by DuckDB itself on just these pairs when a level
        or a value is one the Python evaluator does not cover; the weights from the numbers
        Splink's scoring SQL embeds (:func:`~idweave.linkage.model.scoring_parts`), added up
        as :func:`~idweave.linkage._incremental.canonical_scores` does.

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     q = m.clean({"first_name": "Gregory", "last_name": "Elliott", "birth_date": "1976-01-12"})
        ...     s = m.score(q, [(0, rid, rule) for rid, rule in m.candidates(q.row(0, named=True)).items()])
        >>> s.columns[:4], s["match_probability"].max() > 0.5
        (['query', 'rid', 'rule', 'level_first_name'], True)
        """
        lefts = {int(r["query"]): r for r in query.iter_rows(named=True)}
        cols = self._score_rows(lefts, pairs)
        schema: dict[str, Any] = {"query": pl.Int64, "rid": pl.Int64, "rule": pl.Int32}
        for c in self._levels:
            schema[f"level_{c}"] = pl.Int32
            schema[f"w_{c}"] = pl.Float64
        schema["match_weight"] = pl.Float64
        schema["match_probability"] = pl.Float64
        return pl.DataFrame([cols[k] for k in schema], schema=schema, orient="col")

    def _score_rows(self, lefts: Mapping[int, Mapping[str, Any]],
                    pairs: Sequence[tuple[int, int, int]]) -> dict[str, list]:
        """:meth:`score` as plain lists, column -> one value per pair."""
        n = len(pairs)
        q_idx = [int(p[0]) for p in pairs]
        rids = [int(p[1]) for p in pairs]
        left = {q: self._prepare_left(rec) for q, rec in lefts.items()}
        gam = None
        if n:
            try:
                gam = self._gammas_py(left, q_idx, rids)
            except _Slow:
                gam = None
            if gam is None:
                gam = self._gammas_sql(left, q_idx, rids)
        out: dict[str, list] = {"query": q_idx, "rid": rids, "rule": [int(p[2]) for p in pairs]}
        weight = self._parts.weight
        mw = [self._log_prior] * n
        rid_arr = np.asarray(rids, dtype=np.int64)
        for i, comp in enumerate(self._parts.comparisons):
            c = comp["name"]
            g = gam[i] if gam is not None else []
            col = comp["tf_column"]
            if col is not None and col in self._tf_right:
                table = self._tf[col]
                tq = {q: table.get(rec.get(col)) for q, rec in left.items()}
                tr = self._tf_right[col][rid_arr].tolist()
                w = [weight(comp, gi, tq[q], None if (b is None or b != b) else b) for gi, q, b in zip(g, q_idx, tr)]
            else:
                w = [weight(comp, gi, None, None) for gi in g]
            out[f"level_{c}"] = g
            out[f"w_{c}"] = w
            mw = [a + b for a, b in zip(mw, w)]
        out["match_weight"] = mw
        out["match_probability"] = [1.0 / (1.0 + 2.0 ** -x) if x >= 0 else 2.0 ** x / (1.0 + 2.0 ** x) for x in mw]
        return out

    def _prepare_left(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """:func:`~idweave.linkage.model.prepare` for one cleaned query record."""
        out = {}
        for c in self._cols:
            if c.endswith(model_mod.FORMAL_SUFFIX) and c not in rec:
                v = rec.get(c[: -len(model_mod.FORMAL_SUFFIX)])
                out[c] = None if v is None else canonical_names(v)
            else:
                out[c] = rec.get(c)
        return out

    def _gammas_py(self, left: Mapping[int, dict], q_idx: list[int], rids: list[int]) -> list[list[int]] | None:
        """Each comparison's level per pair, in Python (None when a comparison has SQL the
        evaluator does not know; raises :class:`_Slow` for a value it cannot vouch for)."""
        if any(c is None for c in self._py_levels):
            return None
        sub = self._right[rids]
        right = {c: sub[c].to_list() for c in self._cols}
        out = []
        one = len(left) == 1
        for levels, rcols, keyed in self._py_levels:
            memo: dict[Any, int] = {}
            got = []
            vals = [right[c] for c in rcols]
            kvals = [vals[i] for i in keyed] if keyed is not None else [range(len(q_idx))]
            lq = left[q_idx[0]] if one else None
            for j, q in enumerate(q_idx):
                key = kvals[0][j] if len(kvals) == 1 else tuple(v[j] for v in kvals)
                if not one:
                    key = (q, key)
                g = memo.get(key)
                if g is None:
                    g = memo[key] = _gamma(levels, lq if one else left[q], {c: v[j] for c, v in zip(rcols, vals)})
                got.append(g)
            out.append(got)
        return out

    def _gammas_sql(self, left: Mapping[int, dict], q_idx: list[int], rids: list[int]) -> list[list[int]]:
        """Each comparison's level per pair from Splink's SQL, run by DuckDB."""
        import pyarrow as pa

        order = list(left)
        lt = pl.DataFrame([[left[q][c] for q in order] for c in self._cols], orient="col",
                          schema={c: self._right.schema[c] for c in self._cols}).to_arrow()
        pos = {q: i for i, q in enumerate(order)}
        lt = lt.take(pa.array([pos[q] for q in q_idx], type=pa.int64()))
        rt = self._right_arrow.take(pa.array(rids, type=pa.int64()))
        cols = {f"{c}_l": lt.column(c) for c in self._cols}
        cols.update({name: rt.column(name) for name in rt.column_names})
        self._con.register("_cand", pa.table(cols))
        try:
            gam = self._con.execute(self._gamma_sql).fetchnumpy()
        finally:
            self._con.unregister("_cand")
        return [gam[f"g{i}"].astype(np.int64).tolist() for i in range(len(self._parts.comparisons))]

    def lookup(self, records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *, top: int = 5,
               source: str | None = None, date_format: str | None = None) -> pl.DataFrame:
        """The ``top`` best entities for each query record, best first.

        One row per (query, entity): ``query`` (position of the record in the input),
        ``rank``, ``entity_id``, ``match_probability`` and ``match_weight`` of the entity's
        best-scoring record, ``is_match`` (probability at or above the last run's threshold),
        ``records`` (how many of the entity's records were compared), the best record
        (``source``, ``record_id``), the blocking ``rule`` that found it, and per comparison
        ``c`` the level reached (``level_c``, its label) and its weight in bits (``w_c``).
        ``source`` names the source the query comes from, if any (an exclusive source is
        then never matched with its own records).

        >>> from idweave.linkage import link
        >>> _ = link("fixtures/tiny/project.yaml")
        >>> with Matcher("fixtures/tiny/project.yaml") as m:
        ...     best = m.lookup({"first_name": "Gregory", "last_name": "Elliott", "birth_date": "1976-01-12"})
        >>> best["rank"][0], best["level_last_name"][0]
        (1, 'exact')
        """
        if top < 1:
            raise LookupInputError("top must be at least 1")
        one = None
        if isinstance(records, Mapping):
            _check_attributes(records, 0, self.kinds)
            one = self._cleaner.clean(records, date_format)
        recs = [one] if one is not None else list(_clean_frames(records, self.kinds, date_format).iter_rows(named=True))
        pairs = []
        for q, rec in enumerate(recs):
            for rid, rule in self.candidates(rec, source=source).items():
                pairs.append((q, rid, rule))
        comps = list(self._levels)
        if not pairs:
            return self._empty(comps)
        cols = self._score_rows(dict(enumerate(recs)), pairs)
        # Best record per (query, entity), in plain Python: a query has few candidates, and
        # a handful of frame operations would cost more than the scoring.
        rid = cols["rid"]
        order = sorted(range(len(rid)), key=lambda i: (cols["query"][i], -cols["match_probability"][i],
                                                       -cols["match_weight"][i], self._src[rid[i]],
                                                       self._rid_ids[rid[i]]))
        seen: dict[tuple[int, str], int] = {}
        counts: dict[tuple[int, str], int] = {}
        ranks: dict[int, int] = {}
        rows = []
        thr = self.threshold
        rule_names = [r.name for r in self.rules]
        for i in order:
            key = (cols["query"][i], self._entity[rid[i]])
            counts[key] = counts.get(key, 0) + 1
            if key in seen:
                continue
            rank = ranks.get(key[0], 0) + 1
            ranks[key[0]] = rank
            seen[key] = len(rows)
            if rank > top:
                continue
            p = cols["match_probability"][i]
            row = {"query": key[0], "rank": rank, "entity_id": key[1], "match_probability": p,
                   "match_weight": cols["match_weight"][i], "is_match": (p >= thr) if thr is not None else None,
                   "records": 0, "source": self._src[rid[i]], "record_id": self._rid_ids[rid[i]],
                   "rule": rule_names[cols["rule"][i]]}
            for c in comps:
                g = cols[f"level_{c}"][i]
                labels = self._levels[c]
                row[f"level_{c}"] = "null" if g is None or g < 0 else labels[len(labels) - 1 - g]
                row[f"w_{c}"] = cols[f"w_{c}"][i]
            rows.append((key, row))
        out = []
        for key, row in rows:
            row["records"] = counts[key]
            out.append(row)
        return pl.DataFrame(out, schema=self._empty(comps).schema) if out else self._empty(comps)

    def _empty(self, comps: list[str]) -> pl.DataFrame:
        schema: dict[str, Any] = {"query": pl.Int64, "rank": pl.Int32, "entity_id": pl.Utf8,
                                  "match_probability": pl.Float64, "match_weight": pl.Float64,
                                  "is_match": pl.Boolean, "records": pl.Int32, "source": pl.Utf8,
                                  "record_id": pl.Utf8, "rule": pl.Utf8}
        for c in comps:
            schema[f"level_{c}"] = pl.Utf8
            schema[f"w_{c}"] = pl.Float64
        return pl.DataFrame(schema=schema)


_CACHE: dict[str, tuple[tuple, Matcher]] = {}


def _stamp(path: Path) -> tuple:
    out = []
    for p in (path, Path(str(path) + ".wal")):
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def lookup(project: Project | str | Path | Mapping[str, Any],
           records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, *, top: int = 5,
           store: str | Path | None = None, source: str | None = None,
           date_format: str | None = None) -> pl.DataFrame:
    """The best-matching entities for one record (a dict), several (a list of dicts) or a
    frame of them (polars, pandas or Arrow, one column per attribute); see
    :meth:`Matcher.lookup` for the columns. Writes nothing.

    The index is built on the first call and kept until the store file changes; for a
    service, hold a :class:`Matcher` yourself.

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> import polars as pl
    >>> stored = pl.read_csv("fixtures/tiny/census.csv", infer_schema=False).row(0, named=True)
    >>> hit = lookup("fixtures/tiny/project.yaml", {"first_name": stored["fname"],
    ...              "last_name": stored["surname"], "birth_date": stored["dob"]},
    ...              date_format="%m/%d/%Y")
    >>> hit["rank"].to_list()[:1], bool(hit["is_match"][0])
    ([1], True)
    """
    from idweave.linkage.pipeline import resolve_project

    proj = resolve_project(project)
    if store is not None:
        proj.store = Path(store)
    path = Path(proj.store).resolve()
    if not path.exists():
        raise StoreError("no store yet: run `idweave link` first", file=str(proj.store))
    key = str(path)
    stamp = (_stamp(path), proj.config_hash())
    hit = _CACHE.get(key)
    if hit is None or hit[0] != stamp:
        if hit is not None:
            hit[1].close()
        _CACHE[key] = (stamp, Matcher(proj))
    return _CACHE[key][1].lookup(records, top=top, source=source, date_format=date_format)
