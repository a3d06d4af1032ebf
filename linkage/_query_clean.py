"""Cleaning one lookup query record without building frames: the fast path of
:meth:`idweave.linkage.lookup.Matcher.clean`.

Printable-ASCII values are cleaned in plain Python by rules that mirror the polars
expressions of :mod:`idweave.linkage.kinds`; anything else goes through those expressions one
value at a time, and lists or frames of queries through :func:`records_from_frame` itself.
``tests/test_lookup_fast.py`` checks the plain-Python rules against the polars expressions on
every fixture value and on random text: **a change to a cleaning rule in kinds.py must be made
here too** (those tests fail until it is).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Mapping, Sequence

import polars as pl

from idweave.linkage.errors import LookupInputError, SourceError
from idweave.linkage.kinds import KINDS, NAME_KINDS, ADDRESS_ABBREV, NAME_NOISE, PLACEHOLDER_IDS, clean_expr
from idweave.linkage.project import Source
from idweave.linkage.sources import derive_names, parse_dates, records_from_frame

_QUERY_ID = "_lookup_row"


class SlowPath(Exception):
    """The fast path cannot be sure to give what the polars / DuckDB path gives: take that."""


_PRINTABLE = re.compile(r"[ -~]*")  # printable ASCII: Python and polars (Rust) regexes agree on it
_NOISE_RE = re.compile(NAME_NOISE)
_ABBREV = [(re.compile(p), r) for p, r in ADDRESS_ABBREV.items()]
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
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
        return t if len(t) >= 4 and not _one_char(t) and t not in PLACEHOLDER_IDS else None
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
            raise SlowPath
        return float(t)
    raise SlowPath


# ---------------------------------------------------------------------------------------
# comparison levels in Python, with the semantics of the DuckDB SQL Splink runs
# ---------------------------------------------------------------------------------------


def check_attributes(rec: Mapping[str, Any], i: int, kinds: Mapping[str, str]) -> None:
    """Refuse a query record (row ``i``) that names an attribute the project does not have;
    the error names the row and the attribute, never a value.

    >>> check_attributes({"name": "Ann"}, 0, {"name": "full_name"})
    >>> check_attributes({"nmae": "Ann"}, 3, {"name": "full_name"})
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.LookupInputError: column 'nmae', record '3': unknown attribute 'nmae'; the project's attributes are name
    """
    for a in rec:
        if a not in kinds:
            unknown = sorted(set(rec) - set(kinds))[0]
            raise LookupInputError(f"unknown attribute '{unknown}'; the project's attributes are "
                                   f"{', '.join(kinds)}", row=str(i), column=unknown)


class RecordCleaner:
    """Cleans one query record in plain Python, no frames: printable-ASCII values with
    :func:`_clean_ascii`, ISO dates as they are, anything else with the polars expressions
    themselves, one value at a time (memoised). ``tests/test_lookup_fast.py`` checks it
    against :func:`clean_frames` on every fixture value and on random ones.

    >>> RecordCleaner({"name": "full_name", "born": "date"}).clean({"name": "SMITH, Ann", "born": "1980-03-25"}, None)
    {'name': 'ann smith', 'born': '1980-03-25'}
    """

    def __init__(self, kinds: Mapping[str, str]):
        self.kinds = dict(kinds)
        self._memo: dict[tuple, Any] = {}
        names = {k: next((a for a, kk in self.kinds.items() if kk == k), None) for k in NAME_KINDS}
        self._name_attrs = tuple(names.values()) if all(names.values()) else None

    def clean(self, rec: Mapping[str, Any], date_format: str | None) -> dict[str, Any] | None:
        """One record (of known attributes) cleaned as :func:`clean_frames` cleans it; None
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
        except SlowPath:
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
                raise SlowPath
            hit = pl.DataFrame({"v": [s]}, schema={"v": pl.Utf8}).select(clean_expr(kind, pl.col("v"))).item()
            if len(self._memo) < 100_000:
                self._memo[key] = hit
        return hit

    def _date(self, s: str, fmt: str | None) -> str | None:
        t = s.strip(" ") if _PRINTABLE.fullmatch(s) else None
        if t == "":
            return None
        if t is not None and fmt in (None, "%Y-%m-%d") and ISO_DATE.fullmatch(t) and t >= "1000":
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
                raise SlowPath  # unless it is blank, the polars path refuses it with the place
            if len(self._memo) < 100_000:
                self._memo[key] = hit
        return hit


def clean_frames(records: Mapping[str, Any] | Sequence[Mapping[str, Any]] | Any, kinds: Mapping[str, str],
                  date_format: str | None) -> pl.DataFrame:
    """Query records cleaned through polars, as a source is
    (:func:`~idweave.linkage.sources.records_from_frame` and
    :func:`~idweave.linkage.sources.derive_names`): one row per record, ``query`` its position.

    >>> clean_frames([{"name": "Ann"}, {"name": "LEE, Bo"}], {"name": "full_name"}, None)["name"].to_list()
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
            check_attributes(r, i, kinds)
        cols = [a for a in kinds if any(a in r for r in rows)]
        raw = pl.DataFrame([{a: (None if r.get(a) is None else str(r.get(a))) for a in cols} for r in rows],
                           schema={a: pl.Utf8 for a in cols})
    else:
        from idweave.linkage.readers import to_polars

        try:
            raw = to_polars(records, Source(name="lookup", id=_QUERY_ID, columns={}))
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

