"""Read one source's files (or the frame it was given): header, schema and columns, with
errors that name the file, line and column (never a value). The only module that opens user
data files; ``sources`` maps and cleans what it reads, ``project`` checks headers with it.

>>> from idweave.linkage.project import load_project
>>> read_source(load_project("fixtures/tiny/project.yaml").sources["tax"], ["ssn"]).columns
['ssn']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import polars as pl

from idweave.linkage.errors import SourceError

if TYPE_CHECKING:
    from idweave.linkage.project import Source

__all__ = ["source_columns", "source_schema", "nested_columns", "read_source", "to_polars"]


def source_columns(src: Source) -> list[str]:
    """The column names a source has (read from the file header only).

    >>> from idweave.linkage.project import load_project
    >>> source_columns(load_project("fixtures/tiny/project.yaml").sources["tax"])
    ['tin_row', 'given', 'family', 'born', 'ssn', 'true_person']
    """
    return list(source_schema(src))


def source_schema(src: Source) -> dict[str, pl.DataType]:
    """Column name -> type of a source, read from the file header (the columns every file
    of a glob has). A CSV header that repeats a column name is refused (which of the two
    columns was meant cannot be told), naming the column.

    >>> from idweave.linkage.project import load_project
    >>> source_schema(load_project("fixtures/tiny/project.yaml").sources["tax"])["born"]
    String
    """
    if src.frame is not None:
        return dict(to_polars(src.frame, src).schema)
    out: dict[str, pl.DataType] | None = None
    for f in src.files:
        try:
            schema = dict(_scan(f, src.format).collect_schema())
        except pl.exceptions.NoDataError:
            raise
        except pl.exceptions.PolarsError as exc:
            raise _read_error(f, src.format, exc) from None
        if src.format == "csv":
            for name in schema:
                base, sep, n = name.rpartition("_duplicated_")
                if sep and n.isdigit() and base in schema:
                    raise SourceError("the header names this column more than once; column names must be "
                                      "unique", file=f.name, column=_printable(base))
        out = schema if out is None else {c: t for c, t in out.items() if c in schema}
    return out or {}


def _printable(text: Any, limit: int = 60) -> str:
    """``text`` with control characters shown as ``?``, cut to ``limit`` characters."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[:limit] + "..."


def _scan(path, fmt: str | None) -> pl.LazyFrame:
    if fmt == "csv":
        return pl.scan_csv(path, infer_schema=False, separator=_separator(path), encoding="utf8")
    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "ndjson":
        return pl.scan_ndjson(path, infer_schema_length=None)
    raise SourceError(f"unsupported format {fmt!r}", file=str(path))


def _separator(path) -> str:
    return "\t" if str(path).lower().endswith(".tsv") else ","


_NESTED = (pl.List, pl.Array, pl.Struct, pl.Object)


def nested_columns(schema: dict[str, pl.DataType], columns: Iterable[str]) -> list[str]:
    """Those of ``columns`` whose type holds several values (lists, arrays, structs): an
    attribute is one value per record.

    >>> nested_columns({"a": pl.List(pl.Utf8), "b": pl.Utf8}, ["a", "b"])
    ['a']
    """
    return [c for c in columns if c in schema and isinstance(schema[c], _NESTED)]


def _read_error(f: Path, fmt: str | None, exc: Exception) -> SourceError:
    """Why a source file cannot be read, with the line or row where that is known, and never
    the text of the file (polars quotes the offending field; that may be personal data)."""
    text = str(exc)
    if fmt in ("csv", "ndjson") and ("utf-8" in text.lower() or "utf8" in text.lower()):
        line = _first_bad_utf8_line(f)
        where = f" at line {line}" if line else ""
        return SourceError(f"the file is not UTF-8 text: a byte{where} cannot be decoded (latin-1 or another "
                           "encoding?); convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)", file=f.name)
    if fmt == "ndjson":
        line = _first_bad_json_line(f)
        where = f"line {line} is not a JSON object" if line else "a line is not valid JSON"
        return SourceError(f"{where}; each line must hold one JSON object", file=f.name)
    if fmt == "csv":
        row = _csv_bad_row(f)
        if row is not None:
            return SourceError(f"data row {row[0]} (line {row[1]}) {row[2]}", file=f.name)
        return SourceError("cannot be parsed as CSV (an unclosed quote or a row with more fields than the header?)",
                           file=f.name)
    if fmt == "parquet":
        return SourceError("is not a readable Parquet file (truncated, corrupt, or another format?)", file=f.name)
    return SourceError(f"cannot read the file ({exc.__class__.__name__})", file=f.name)


def _first_bad_utf8_line(f: Path, chunk: int = 1 << 20) -> int | None:
    """The line holding the first byte that is not UTF-8 (None if every byte is)."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")("strict")
    lines = 1
    with open(f, "rb") as fh:
        while True:
            data = fh.read(chunk)
            try:
                dec.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                return lines + data[:max(exc.start, 0)].count(b"\n")
            if not data:
                return None
            lines += data.count(b"\n")


def _first_bad_json_line(f: Path) -> int | None:
    import json

    with open(f, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                if not isinstance(json.loads(line), dict):
                    return i
            except ValueError:
                return i
    return None


def _csv_bad_row(f: Path) -> tuple[int, int, str] | None:
    """(data row, line, what is wrong) of the first row whose field count differs from the
    header's or whose quote is not closed; None if every row is sound. Used when a read has
    failed or rows look ragged (slow: Python's csv module)."""
    import csv

    with open(f, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=_separator(f), strict=True)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return None
        row = 0
        try:
            for fields in reader:
                if not fields:
                    continue  # a blank line: polars skips it too
                row += 1
                if len(fields) != len(header):
                    what = "more" if len(fields) > len(header) else "fewer"
                    return (row, reader.line_num, f"has {len(fields)} fields, {what} than the header's "
                                                  f"{len(header)} (a ragged row)")
        except csv.Error:
            return (row + 1, reader.line_num, "cannot be parsed (an unclosed quote?)")
    return None


def _ragged_check(f: Path, df: pl.DataFrame, last: str) -> None:
    """Rows with fewer fields than the header leave the last column null, as an empty last
    field does; only then is the file scanned (by line, in polars) for rows that are short."""
    if df[last].null_count() == 0:
        return
    sep = _separator(f)
    lines = pl.scan_csv(f, has_header=False, separator="\x1f", quote_char=None, infer_schema=False,
                        new_columns=["line"], encoding="utf8").collect()["line"]
    if lines.len() < 2:
        return
    n_sep = lines.str.count_matches(sep, literal=True)
    quoted = lines.str.contains('"', literal=True)
    short = (n_sep < n_sep[0]) & lines.is_not_null()
    if not short.any():
        return
    if quoted.any():  # quoted fields may hold separators and line breaks: count them properly
        bad = _csv_bad_row(f)
        if bad is not None:
            raise SourceError(f"data row {bad[0]} (line {bad[1]}) {bad[2]}", file=f.name)
        return
    i = int(short.arg_true()[0])
    raise SourceError(f"data row {i} (line {i + 1}) has {int(n_sep[i]) + 1} fields, fewer than the header's "
                      f"{int(n_sep[0]) + 1} (a ragged row)", file=f.name)


def to_polars(frame: Any, src: Source) -> pl.DataFrame:
    if isinstance(frame, pl.LazyFrame):
        return frame.collect()
    if isinstance(frame, pl.DataFrame):
        return frame
    try:
        import pyarrow as pa

        if isinstance(frame, (pa.Table, pa.RecordBatch)):
            return pl.from_arrow(frame)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    if type(frame).__module__.startswith("pandas"):
        return pl.from_pandas(frame)
    raise SourceError(f"source '{src.name}' was given a {type(frame).__name__}; "
                      "expected a polars, pandas or Arrow table")


def read_source(src: Source, columns: Iterable[str]) -> pl.DataFrame:
    """Read the named columns of a source (all files of a glob, stacked).

    >>> from idweave.linkage.project import load_project
    >>> read_source(load_project("fixtures/tiny/project.yaml").sources["tax"], ["tin_row", "born"]).row(0)
    ('T0000001', '1988-02-03')
    """
    cols = list(dict.fromkeys(columns))
    if src.frame is not None:
        df = to_polars(src.frame, src)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise SourceError(f"column '{missing[0]}' not in the frame; found: {', '.join(df.columns)}",
                              file=src.label, column=missing[0])
        return df.select(cols)
    parts = []
    for f in src.files:
        try:
            scan = _scan(f, src.format)
            schema = scan.collect_schema()
            nested = nested_columns(dict(schema), cols)
            if nested:
                raise SourceError(f"holds {schema[nested[0]]} values; an attribute needs one value per record "
                                  "(flatten the column first)", file=f.name, column=_printable(nested[0]))
            last = schema.names()[-1] if src.format == "csv" and schema.names() else None
            read = cols + ([last] if last is not None and last not in cols else [])
            df = scan.select(read).collect()
            if last is not None:
                _ragged_check(f, df, last)
            parts.append(df.select(cols))
        except pl.exceptions.ColumnNotFoundError as exc:
            missing = [c for c in cols if c not in _safe_names(f, src.format)]
            raise SourceError("missing column", file=f.name, column=_printable(missing[0]) if missing else None) \
                from None
        except pl.exceptions.PolarsError as exc:
            raise _read_error(f, src.format, exc) from None
        except OSError as exc:
            raise SourceError(f"cannot read the file: {exc.strerror or exc.__class__.__name__}", file=f.name) from None
    if len(parts) == 1:
        return parts[0]
    return pl.concat(parts, how="vertical_relaxed")


def _safe_names(f: Path, fmt: str | None) -> list[str]:
    try:
        return _scan(f, fmt).collect_schema().names()
    except Exception:  # noqa: BLE001 - only used to name a missing column
        return []
