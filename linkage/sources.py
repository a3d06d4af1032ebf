"""Read, map and clean each source into records: the only module that reads user data files.

Records are one polars frame with columns ``source``, ``record_id`` (string), one column per
attribute (cleaned per kind; dates as ISO ``YYYY-MM-DD`` strings), and ``content_hash``
(changes when a record's cleaned attributes change; drives incremental runs).

>>> from idweave.linkage.project import load_project
>>> recs = load_records(load_project("fixtures/demo/project.yaml"))
>>> recs.columns[:3]
['source', 'record_id', 'first_name']
>>> recs.filter(recs["source"] == "census")["birth_date"].str.len_chars().max()
10
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable, Iterable

import polars as pl

from idweave.linkage._db import query_pl, scratch

from idweave.linkage.errors import SourceError
from idweave.linkage.kinds import clean_expr
from idweave.linkage.project import Project, Source
from idweave.linkage.readers import read_source, source_columns

__all__ = ["read_pair_labels", "load_records", "parse_dates", "LoadReport",
           "records_from_frame", "Reused", "DATE_FORMATS"]

# Tried in this order when a source gives no date_format; the one that parses the most
# values wins, so day-first and month-first data are told apart by their days > 12.
DATE_FORMATS = (
    "%Y-%m-%d", "%Y%m%d", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y",
    "%Y/%m/%d", "%d %b %Y", "%d %B %Y", "%b %d %Y", "%B %d %Y", "%Y-%m-%dT%H:%M:%S",
    "%d/%m/%y", "%m/%d/%y",
)
# A date column is rejected when fewer than this share of its non-empty values parse:
# below it the format is wrong, not a few values dirty.
_MIN_DATE_PARSE_SHARE = 0.5


@dataclass
class LoadReport:
    """What loading found that a person should know (counts only, no values)."""

    rows: dict[str, int] = field(default_factory=dict)
    unparsed_dates: dict[str, int] = field(default_factory=dict)
    date_formats: dict[str, str] = field(default_factory=dict)


def parse_dates(values: pl.Series, fmt: str | None) -> tuple[pl.Series, str]:
    """Parse a column to ISO date strings with ``fmt`` or the best of :data:`DATE_FORMATS`.

    Returns the parsed series (null where a value does not parse) and the format used.

    >>> parse_dates(pl.Series(["03/25/1980", "12/01/1979"]), None)[0].to_list()
    ['1980-03-25', '1979-12-01']
    >>> dates, used = parse_dates(pl.Series(["25/03/80", "01/02/45"]), None)
    >>> dates.to_list(), used
    (['1980-03-25', '1945-02-01'], '%d/%m/%y')
    """
    parsed, used = _parse_dates(values, fmt)
    return _iso(parsed), used


def _parse_dates(values: pl.Series, fmt: str | None) -> tuple[pl.Series, str]:
    """:func:`parse_dates` before formatting: a ``Date`` series."""
    if values.dtype in (pl.Date, pl.Datetime):
        return values.cast(pl.Date), "native"
    s = values.cast(pl.Utf8).str.strip_chars()
    s = s.replace("", None)
    formats = (fmt,) if fmt else DATE_FORMATS
    best: pl.Series | None = None
    best_fmt = formats[0]
    best_n = -1
    for f in formats:
        parsed = _strptime(s, f)
        n = parsed.is_not_null().sum()
        if n > best_n:
            best, best_n, best_fmt = parsed, n, f
        if fmt is None and n == s.is_not_null().sum():
            break
    assert best is not None
    return best, best_fmt


def _iso(dates: pl.Series) -> pl.Series:
    return dates.dt.strftime("%Y-%m-%d")


def _strptime(s: pl.Series, fmt: str) -> pl.Series:
    """Parse with one format; null where it does not fit.

    ``%Y`` also reads "80" as the year 80, which would let a four-digit-year format win over
    the two-digit one: years before 1000 count as not parsed. ``%y`` puts 45 in 2045; a date
    after today is taken a century earlier (these are mostly birth dates).
    """
    try:
        parsed = s.str.strptime(pl.Date, fmt, strict=False, exact=True)
    except pl.exceptions.PolarsError:  # a pattern polars cannot use parses nothing
        return pl.Series(s.name, [None] * s.len(), dtype=pl.Date)
    frame = parsed.to_frame("d")
    if "%Y" in fmt:
        frame = frame.select(pl.when(pl.col("d").dt.year() >= 1000).then(pl.col("d")).alias("d"))
    if "%y" in fmt:
        today = date.today()
        frame = frame.select(pl.when(pl.col("d") > today).then(pl.col("d").dt.offset_by("-100y"))
                             .otherwise(pl.col("d")).alias("d"))
    return frame["d"].alias(s.name)


@dataclass
class Reused:
    """Records loaded reusing the store's cleaning (:func:`load_records` with ``stored``).

    ``keys`` has a row per source row: ``source``, ``record_id``, ``content_hash``,
    ``raw_hash`` and ``_stored_rk`` (the stored row whose cleaned values this row reuses;
    null for a row cleaned now). ``fresh`` holds the rows cleaned now, whole (``source``,
    ``record_id``, the attributes, ``content_hash``). A reused row's attributes stay in the
    store until a run needs them (``_incremental.attributes``).
    """

    keys: pl.DataFrame
    fresh: pl.DataFrame


def records_from_frame(df: pl.DataFrame, src: Source, kinds: dict[str, str],
                       report: LoadReport | None = None, *, stored: pl.DataFrame | None = None,
                       pseudonymise: Callable[[dict[str, pl.Series]], dict[str, pl.Series]] | None = None,
                       ) -> pl.DataFrame | Reused:
    """Map and clean one source's raw frame into records (checks ids and dates).

    Every problem of the source is reported at once (empty or duplicate ids, unreadable
    date columns), each naming the file, the column and a record id or data row.

    ``stored`` (``record_id``, ``raw_hash``, ``rk``, ``content_hash`` of this source's
    records in the store): a row whose :func:`raw_hashes` equals its stored one is not
    cleaned again (cleaning is most of the time of reading a large source); the result is
    then a :class:`Reused` (keys of every row, attributes of the rows cleaned now).

    >>> from idweave.linkage.project import load_project
    >>> src = load_project("fixtures/tiny/project.yaml").sources["census"]
    >>> raw = read_source(src, ["person_no", "fname", "dob"])
    >>> recs = records_from_frame(raw, src, {"first_name": "given_name", "birth_date": "date"})
    >>> recs.columns
    ['source', 'record_id', 'first_name', 'birth_date']
    """
    report = report if report is not None else LoadReport()
    label = src.label
    if df.height == 0:
        raise SourceError("the source has no rows", file=label)
    problems: list[SourceError] = []
    ids = df[src.id].cast(pl.Utf8).str.strip_chars()
    null_ids = ids.is_null() | (ids == "")
    if null_ids.any():
        row = int(null_ids.arg_true()[0]) + 1
        problems.append(SourceError(f"{int(null_ids.sum())} record(s) have an empty id, first at data row {row}",
                                    file=label, column=src.id))
    # Distinct 64-bit hashes prove distinct ids (and count far faster than strings); only a
    # shared hash needs the exact check.
    if ids.hash().n_unique() < ids.len() and ids.n_unique() < ids.len():
        dup = ids.is_duplicated() & ~null_ids
        if dup.any():
            first = ids.filter(dup)[0]
            n_ids = ids.filter(dup).n_unique()
            problems.append(SourceError(f"duplicate record id ({int(dup.sum())} rows share {n_ids} "
                                        f"id{'s' if n_ids > 1 else ''}); record ids must be unique within a source",
                                        file=label, column=src.id, row=first))
    out = {"source": pl.repeat(src.name, df.height, dtype=pl.Utf8, eager=True).alias("source"), "record_id": ids}
    # Dates first: their format is chosen on the whole column, and the parsed value is part
    # of what decides whether a stored row can be reused. Kept as dates until the rows to
    # clean are known (formatting a million dates costs more than parsing them).
    dates: dict[str, pl.Series] = {}
    for attr, kind in kinds.items():
        col = src.columns.get(attr)
        if col is None:
            out[attr] = pl.repeat(None, df.height, dtype=pl.Float64 if kind == "number" else pl.Utf8,
                                  eager=True).alias(attr)
        elif kind == "date":
            raw = df[col]
            parsed, used = _parse_dates(raw, src.date_format)
            present = raw.cast(pl.Utf8).str.strip_chars().replace("", None).is_not_null()
            n_present = int(present.sum())
            bad = present & parsed.is_null()
            n_bad = int(bad.sum())
            if n_present and (n_present - n_bad) / n_present < _MIN_DATE_PARSE_SHARE:
                first_bad = ids.filter(bad & ~null_ids)
                where = ({"row": first_bad[0]} if first_bad.len() else {})
                tried = f"format '{src.date_format}'" if src.date_format else "any common format"
                hint = ("check the source's date_format" if src.date_format
                        else "set date_format on the source, e.g. date_format: \"%d/%m/%Y\"")
                problems.append(SourceError(f"dates do not parse with {tried} ({n_bad} of {n_present} values fail)",
                                            file=label, column=col, hint=hint, **where))
                continue
            if n_bad:
                report.unparsed_dates[f"{src.name}.{col}"] = n_bad
            report.date_formats[f"{src.name}.{col}"] = used
            dates[attr] = parsed.alias(attr)
    if problems:
        raise _combined(problems)
    report.rows[src.name] = df.height
    cleaned_now = [a for a, k in kinds.items() if k != "date" and src.columns.get(a) is not None]

    def clean(keep: pl.Series | None) -> dict[str, pl.Series]:
        """The attributes of the rows of ``df`` where ``keep`` (all rows if None)."""
        rows = df if keep is None else df.filter(keep)
        cols = {}
        for a in kinds:
            if a in cleaned_now:
                cols[a] = rows[src.columns[a]].to_frame("v").select(clean_expr(kinds[a], pl.col("v"))) \
                    .to_series().alias(a)
            elif a in dates:
                cols[a] = _iso(dates[a] if keep is None else dates[a].filter(keep))
            else:
                cols[a] = out[a] if keep is None else out[a].filter(keep)
        # Pseudonymised attributes are hashed right after cleaning (linkage/privacy.py), so
        # nothing later (store, block keys, comparisons) ever sees the cleaned value.
        return cols if pseudonymise is None else pseudonymise(cols)

    if stored is None:
        return pl.DataFrame({"source": out["source"], "record_id": ids, **clean(None)})
    raw_hash = raw_hashes(df, src, kinds, ids, dates)
    # The raw hash covers the record id: join on it alone (a 64-bit key joins far faster
    # than an id string), then check the id. A hash two stored rows share is not reused
    # (the join would give its row twice: then they are dropped first).
    cand = stored.filter(pl.col("raw_hash").is_not_null()) \
        .select(pl.col("record_id").alias("_id"), "raw_hash", "rk", "content_hash")
    here = pl.DataFrame({"record_id": ids, "raw_hash": raw_hash})
    known = here.join(cand, on="raw_hash", how="left", maintain_order="left")
    if known.height != df.height:
        known = here.join(cand.filter(~pl.col("raw_hash").is_duplicated()), on="raw_hash", how="left",
                          maintain_order="left")
    reuse = (known["_id"] == known["record_id"]).fill_null(False)
    todo = ~reuse
    fresh = _finish(pl.DataFrame({"source": out["source"].filter(todo), "record_id": ids.filter(todo),
                                  **clean(todo)}), kinds)
    at = todo.arg_true()
    keys = pl.DataFrame({
        "source": out["source"], "record_id": ids,
        "content_hash": known["content_hash"].scatter(at, fresh["content_hash"]),
        "raw_hash": raw_hash,
        "_stored_rk": known["rk"].cast(pl.Int64).scatter(at, None),
    })
    return Reused(keys=keys, fresh=fresh)


def raw_hashes(df: pl.DataFrame, src: Source, kinds: dict[str, str], ids: pl.Series,
               parsed: dict[str, pl.Series]) -> pl.Series:
    """A 64-bit hash per row of what cleaning reads: the id, the raw mapped columns, the
    parsed dates, salted with the cleaning code, the polars version and the mapping (so a
    change to any of them makes every row look new, and it is cleaned again)."""
    parts = [ids]
    for attr, kind in kinds.items():
        col = src.columns.get(attr)
        if col is None:
            continue
        parts.append(parsed[attr] if kind == "date" else df[col].cast(pl.Utf8))
    # polars' row hash (column hashes combined; nulls hash apart from every string): stable
    # within a polars version, which the salt holds.
    return pl.DataFrame(parts, schema=[f"c{i}" for i in range(len(parts))]) \
        .hash_rows(seed=_cleaning_salt(src, kinds)).alias("raw_hash")


def _cleaning_salt(src: Source, kinds: dict[str, str]) -> int:
    """The seed of a source's raw-row hashes: a row whose hash is stored was cleaned by this
    code (fingerprint.py), for this mapping and these kinds, so its stored values stand."""
    import hashlib

    from idweave.linkage.fingerprint import code_fingerprint

    h = hashlib.sha256(code_fingerprint().encode())
    h.update(f"{pl.__version__}|{src.name}|{sorted(kinds.items())}|{sorted(src.columns.items())}|"
             f"{src.date_format}".encode())
    return int.from_bytes(h.digest()[:8], "little")


def _finish(records: pl.DataFrame, kinds: dict[str, str]) -> pl.DataFrame:
    """Cleaned attributes -> records: names derived, content hash added."""
    return with_content_hash(derive_names(records, kinds), list(kinds))


def _combined(problems: list[SourceError]) -> SourceError:
    """One error for several problems (the single one as it is)."""
    if len(problems) == 1:
        return problems[0]
    err = SourceError(f"{len(problems)} problems in the sources:\n  - " + "\n  - ".join(str(p) for p in problems))
    err.errors = list(problems)  # type: ignore[attr-defined]
    err.problems = [str(p) for p in problems]  # type: ignore[attr-defined]
    return err


def load_records(project: Project, *, report: LoadReport | None = None,
                 extra_columns: Iterable[str] = (),
                 stored: Callable[[str], pl.DataFrame] | None = None) -> pl.DataFrame | Reused:
    """Read every source of a project into one records frame (see module docstring).

    ``extra_columns`` are carried through raw where a source has them (for example a truth
    column for :func:`idweave.linkage.evaluate.evaluate`), null where it has not.
    ``stored``: source name -> its records in the store (see :func:`records_from_frame`):
    rows whose raw input did not change are not cleaned again, and the result is a
    :class:`Reused` (every row's keys and ``raw_hash``; the attributes of the rows cleaned
    now) instead of a frame.

    >>> from idweave.linkage.project import load_project
    >>> recs = load_records(load_project("fixtures/tiny/project.yaml"), extra_columns=["true_person"])
    >>> recs.height, recs.columns[-2:]
    (64, ['true_person', 'content_hash'])
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}
    extra = list(extra_columns)
    if extra and stored is not None:
        raise ValueError("extra_columns are read without a store (stored=None)")
    from idweave.linkage.privacy import pseudonymiser  # privacy: {pseudonymise: [...]} (None without)

    pseudonymise = pseudonymiser(project)
    frames = []
    problems: list[SourceError] = []
    for src in project.sources.values():
        have = set(source_columns(src))
        raw = read_source(src, [src.id, *src.columns.values(), *[c for c in extra if c in have]])
        try:
            recs = records_from_frame(raw, src, kinds, report,
                                      stored=stored(src.name) if stored is not None else None,
                                      pseudonymise=pseudonymise)
        except SourceError as exc:  # keep going: report every source's problems at once
            problems += getattr(exc, "errors", [exc])
            continue
        for c in extra:
            recs = recs.with_columns((raw[c].cast(pl.Utf8) if c in have else pl.lit(None, pl.Utf8)).alias(c))
        frames.append(recs)
    if problems:
        raise _combined(problems)
    if stored is not None:
        return Reused(keys=pl.concat([f.keys for f in frames], how="vertical_relaxed"),
                      fresh=pl.concat([f.fresh for f in frames], how="vertical_relaxed"))
    return _finish(pl.concat(frames, how="vertical_relaxed"), kinds)


def derive_names(records: pl.DataFrame, kinds: dict[str, str]) -> pl.DataFrame:
    """Fill given/family names from a full name (and the reverse) where a source has only one.

    Registries disagree on whether a name is one field or two; without this, a record with
    only ``full_name`` would share no name evidence with one holding given and family names.
    The given name is the first token of the full name and the family name the last.

    >>> recs = pl.DataFrame({"fn": [None, "ann"], "ln": [None, "lee"], "full": ["mary ann lee", None]})
    >>> derive_names(recs, {"fn": "given_name", "ln": "family_name", "full": "full_name"}).rows()
    [('mary', 'lee', 'mary ann lee'), ('ann', 'lee', 'ann lee')]
    """
    given = [a for a, k in kinds.items() if k == "given_name"]
    family = [a for a, k in kinds.items() if k == "family_name"]
    full = [a for a, k in kinds.items() if k == "full_name"]
    if not full or not given or not family:
        return records
    g, f, n = given[0], family[0], full[0]
    tokens = pl.col(n).str.split(" ")
    return records.with_columns(
        pl.when(pl.col(g).is_null() & pl.col(f).is_null()).then(tokens.list.first()).otherwise(pl.col(g)).alias(g),
        pl.when(pl.col(g).is_null() & pl.col(f).is_null() & (tokens.list.len() > 1))
        .then(tokens.list.last()).otherwise(pl.col(f)).alias(f),
        pl.when(pl.col(n).is_null()).then(pl.concat_str([pl.col(g), pl.col(f)], separator=" ", ignore_nulls=True))
        .otherwise(pl.col(n)).alias(n),
    ).with_columns(pl.when(pl.col(n) == "").then(None).otherwise(pl.col(n)).alias(n))


def with_content_hash(records: pl.DataFrame, attributes: list[str]) -> pl.DataFrame:
    """Add ``content_hash``: md5 of the cleaned attributes (stable across polars versions).

    >>> with_content_hash(pl.DataFrame({"fn": ["ann"], "ln": [None]}, schema={"fn": pl.Utf8, "ln": pl.Utf8}),
    ...                   ["fn", "ln"])["content_hash"].str.len_chars().item()
    32
    """
    parts = ", ".join(f"coalesce(cast(\"{a}\" as varchar), '\x00')" for a in attributes)
    with scratch() as con:
        con.register("r", records.select(attributes).with_row_index("_i"))
        hashes = query_pl(con, f"select md5(concat_ws('\x1f', {parts})) as h from r order by _i")["h"]
    return records.with_columns(hashes.alias("content_hash"))


def read_pair_labels(path: str | Path) -> pl.DataFrame:
    """Read clerical pair labels (Splink's format, like fake_1000_labels.csv):
    ``source_dataset_l, unique_id_l, source_dataset_r, unique_id_r, clerical_match_score``.

    Returns ``source_l, record_id_l, source_r, record_id_r, score`` (strings and a float).

    >>> read_pair_labels("fixtures/labels/tiny_labels.csv").columns
    ['source_l', 'record_id_l', 'source_r', 'record_id_r', 'score']
    """
    path = Path(path)
    try:
        df = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise SourceError(f"cannot read the labels: {str(exc).splitlines()[0][:200]}", file=path.name) from None
    need = ["source_dataset_l", "unique_id_l", "source_dataset_r", "unique_id_r", "clerical_match_score"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise SourceError(f"labels lack column(s) {', '.join(missing)}; found: {', '.join(df.columns)}",
                          file=path.name, column=missing[0])
    score = df["clerical_match_score"].cast(pl.Float64, strict=False)
    if score.is_null().any():
        row = int(score.is_null().arg_true()[0]) + 1
        raise SourceError(f"clerical_match_score is not a number at data row {row}", file=path.name,
                          column="clerical_match_score")
    from idweave.linkage.csvsafe import restore_formulas  # a file of export-labels: ids as they were

    return pl.DataFrame({"source_l": restore_formulas(df["source_dataset_l"]),
                         "record_id_l": restore_formulas(df["unique_id_l"]),
                         "source_r": restore_formulas(df["source_dataset_r"]),
                         "record_id_r": restore_formulas(df["unique_id_r"]), "score": score})
