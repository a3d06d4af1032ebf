"""Splink's comparison levels evaluated in Python, with the semantics of the DuckDB SQL Splink
runs: the fast path of :meth:`idweave.linkage.lookup.Matcher.score` for a few candidate pairs.

The level SQL of a trained model is compiled into Python functions (NULL handling, codepoint
string functions, ``list_intersect`` keeping distinct values, ``try_cast`` to a date; edit
distances from rapidfuzz, jaro-winkler rounded as DuckDB rounds it). SQL the compiler does not
know raises ``_Unsupported`` (the comparison is then scored by DuckDB), and a value it cannot
vouch for raises ``SlowPath``. ``tests/test_lookup_fast.py`` checks every ladder against DuckDB.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import date
from typing import Any, Mapping

import duckdb
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler, Levenshtein

from idweave.linkage import comparisons
from idweave.linkage._query_clean import ISO_DATE, SlowPath


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
        sim = _fma(w, 1.0 - sim, sim) if duckdb_fuses() else sim + w * (1.0 - sim)
    return sim


def duckdb_jaro_winkler(p: str, t: str) -> float:
    """DuckDB's ``jaro_winkler_similarity``, bit for bit (the port above): what the Spark
    engine computes as its Jaro-Winkler (:data:`idweave.linkage.engine.JW_UDF`), so that a
    pair reaches the same level on both engines. The Splink jar's own Jaro-Winkler differs
    (0.9083 for these two; DuckDB 0.9278).

    >>> round(duckdb_jaro_winkler("elltiot", "elliot"), 4), duckdb_jaro_winkler("", "a")
    (0.9278, 0.0)
    """
    if p == t:
        return 1.0 if p else 0.0
    return _jaro_winkler(p, t)


def damerau_levenshtein(a: str, b: str) -> int:
    """DuckDB's ``damerau_levenshtein`` (rapidfuzz's, which ``tests/test_lookup_fast.py``
    checks against DuckDB): the Spark engine's (:data:`idweave.linkage.engine.DL_UDF`).

    >>> damerau_levenshtein("1980-01-02", "1980-10-02")
    1
    """
    return DamerauLevenshtein.distance(a, b)


_U64 = (1 << 64) - 1


def _murmur64(x: int) -> int:
    x ^= x >> 32
    x = (x * 0xD6E8FEB86659FD93) & _U64
    x ^= x >> 32
    x = (x * 0xD6E8FEB86659FD93) & _U64
    return x ^ (x >> 32)


def duckdb_hash(v: int | str) -> int:
    """DuckDB's ``hash()`` of a BIGINT or a VARCHAR (an unsigned 64-bit integer), which
    Splink's sampling and chunking use: the Spark engine hashes with it too
    (:data:`idweave.linkage.engine.HASH_UDF`), so u is estimated on the same pairs there.

    >>> duckdb_hash(1), duckdb_hash("5_42")
    (4717996019076358352, 18158447160030782753)
    """
    if isinstance(v, int):
        return _murmur64(v & _U64)
    b = v.encode()
    n = len(b)
    h = (0xE17A1465 ^ (n * 0xC6A4A7935BD1E995)) & _U64
    full = n - (n & 7)
    for i in range(0, full, 8):
        h = ((h ^ int.from_bytes(b[i:i + 8], "little")) * 0xD6E8FEB86659FD93) & _U64
    if n & 7:
        h = ((h ^ int.from_bytes(b[full:], "little")) * 0xD6E8FEB86659FD93) & _U64
    return _murmur64(h)


def _fma(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once."""
    if hasattr(math, "fma"):  # Python 3.13
        return math.fma(a, b, c)
    from fractions import Fraction

    return float(Fraction(a) * Fraction(b) + Fraction(c))


@functools.lru_cache(maxsize=1)
def duckdb_fuses() -> bool:
    """Whether this DuckDB build adds the Winkler bonus with a fused multiply-add (x86-64
    wheels do): the two roundings differ in the last bit for ("c ", "ca b bcaaba").

    >>> duckdb_fuses() in (True, False)
    True
    """
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
        raise SlowPath
    return v


def _substr(s: str, start: int, n: int) -> str:
    if start < 1 or n < 0:
        raise SlowPath
    return _text(s)[start - 1:start - 1 + n]


def _left(s: str, n: int) -> str:
    s = _text(s)
    return s[:n] if n >= 0 else s[:max(len(s) + n, 0)]


def _right(s: str, n: int) -> str:
    s = _text(s)
    return (s[-n:] if n > 0 else "") if n >= 0 else s[min(-n, len(s)):]


def _split_part(s: str, sep: str, i: int) -> str:
    if not sep or i < 1:
        raise SlowPath
    parts = _text(s).split(sep)
    return parts[i - 1] if i <= len(parts) else ""


def _string_split(s: str, sep: str) -> list[str]:
    if not sep:
        raise SlowPath
    return _text(s).split(sep)


def _as_date(v: Any) -> date | None:
    """``try_cast(v AS DATE)`` for the ISO dates cleaning makes."""
    if type(v) is not str:
        raise SlowPath
    return _iso_date(v)


@functools.lru_cache(maxsize=1 << 16)
def _iso_date(s: str) -> date | None:
    if not ISO_DATE.fullmatch(s) or s < "1000":
        raise SlowPath  # DuckDB reads more shapes than this; let it
    try:
        return date.fromisoformat(s)
    except ValueError:
        return None  # try_cast of an impossible date


def _list(v: Any) -> list:
    if not isinstance(v, (list, tuple)) or any(x is None for x in v):
        raise SlowPath
    return list(v)


def _greatest(*args):
    vals = [a for a in args if a is not None]
    return max(vals) if vals else None


def _number(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise SlowPath  # DuckDB orders NaN above everything and makes it equal to itself
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
        raise SlowPath


class _Compiler:
    """Compile one level's SQL condition into ``f(L, R) -> True | False | None`` (SQL's
    three-valued logic; a CASE takes a level only on True). ``L``/``R`` map a column to the
    query's and the stored record's value. Unknown SQL raises :class:`_Unsupported` (the
    comparison is then scored by DuckDB); values the evaluator cannot vouch for raise
    :class:`SlowPath` at run time (the query is then scored by DuckDB)."""

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
                    raise SlowPath
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
                raise SlowPath
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
                raise SlowPath
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


def compile_comparison(comparison: Mapping[str, Any]) -> tuple[list, tuple[str, ...], tuple[int, ...]] | None:
    """A comparison's levels as (gamma, predicate) in Splink's CASE order (the null level
    -1, then the others from n-1 down to 0; ELSE has no predicate), the stored-record
    columns they read and which of those determine the level (with the query's record);
    None when some level's SQL is unknown to :class:`_Compiler`.

    >>> levels, cols, key = compile_comparison({"comparison_levels": [
    ...     {"sql_condition": '"a_l" IS NULL OR "a_r" IS NULL', "is_null_level": True},
    ...     {"sql_condition": '"a_l" = "a_r"'}, {"sql_condition": "ELSE"}]})
    >>> [g for g, _ in levels], cols
    ([-1, 1, 0], ('a',))
    """
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
    suffix = comparisons.FORMAL_SUFFIX
    # a formal-names column follows from its base column: the base alone keys the memo
    key = tuple(i for i, c in enumerate(cols) if not (c.endswith(suffix) and c[: -len(suffix)] in rcols))
    if any(cols[i].endswith(suffix) for i in key):  # a list would not be hashable: no memo then
        key = None
    return out, cols, key


def gamma_of(levels: list, left: Mapping[str, Any], right: Mapping[str, Any]) -> int:
    """The level (gamma) a pair of records reaches, with the levels of :func:`compile_comparison`.

    >>> levels = compile_comparison({"comparison_levels": [
    ...     {"sql_condition": '"a_l" IS NULL OR "a_r" IS NULL', "is_null_level": True},
    ...     {"sql_condition": '"a_l" = "a_r"'}, {"sql_condition": "ELSE"}]})[0]
    >>> gamma_of(levels, {"a": "x"}, {"a": "x"}), gamma_of(levels, {"a": "x"}, {"a": "y"})
    (1, 0)
    """
    for g, test in levels:
        if test is None or test(left, right) is True:
            return g
    raise SlowPath  # a CASE without ELSE gives NULL: let DuckDB say so


