"""Read one source's files (or the frame it was given): header, schema and columns, with
errors that name the file, line and column (never a value). The only module that opens user
data files; ``sources`` maps and cleans what it reads, ``project`` checks headers with it.

>>> from idweave.linkage.project import load_project
>>> read_source(load_project("fixtures/tiny/project.yaml").sources["tax"], ["ssn"]).columns
['ssn']
"""

from __future__ import annotations

import codecs
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import polars as pl

from idweave.linkage.errors import SourceError

if TYPE_CHECKING:
    from idweave.linkage.project import Source

__all__ = ["source_columns", "source_schema", "nested_columns", "read_source", "to_polars", "utf8_copy",
           "file_stat", "file_digest"]


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
        path = _readable(f, src)
        try:
            schema = dict(_scan(path, src.format).collect_schema())
        except pl.exceptions.NoDataError:
            raise
        except pl.exceptions.PolarsError as exc:
            raise _read_error(path, src.format, exc, name=f.name) from None
        if src.format == "csv":
            for name in schema:
                base, sep, n = name.rpartition("_duplicated_")
                if sep and n.isdigit() and base in schema:
                    raise SourceError("the header names this column more than once; column names must be "
                                      "unique", file=f.name, column=_printable(base))
        out = schema if out is None else {c: t for c, t in out.items() if c in schema}
    return out or {}


def file_stat(f: str | Path) -> tuple[int, int]:
    """A file's size and modification time in nanoseconds: the cheap check of whether it may
    have changed since a run read it (``_incremental.source_files``).

    >>> size, mtime_ns = file_stat("fixtures/tiny/census.csv")
    >>> size > 0 and mtime_ns > 0
    True
    """
    st = os.stat(f)
    return st.st_size, st.st_mtime_ns


def file_digest(f: str | Path) -> str:
    """The sha256 of a file's bytes (read in chunks): whether a file whose size or time
    changed holds other bytes.

    >>> len(file_digest("fixtures/tiny/census.csv"))
    64
    """
    import hashlib

    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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


def _read_error(f: Path, fmt: str | None, exc: Exception, name: str | None = None) -> SourceError:
    """Why a source file cannot be read, with the line or row where that is known, and never
    the text of the file (polars quotes the offending field; that may be personal data).
    ``f`` is the file read (a UTF-8 copy for a source with an ``encoding``), ``name`` the
    source file's name that the message gives (``f``'s by default)."""
    text = str(exc)
    name = name or f.name
    if fmt in ("csv", "ndjson") and ("utf-8" in text.lower() or "utf8" in text.lower()):
        line = _first_bad_utf8_line(f)
        where = f" at line {line}" if line else ""
        return SourceError(f"the file is not UTF-8 text: a byte{where} cannot be decoded (latin-1 or another "
                           "encoding?); give the source its encoding (e.g. encoding: latin-1) or convert the "
                           "file to UTF-8", file=name)
    if fmt == "ndjson":
        line = _first_bad_json_line(f)
        where = f"line {line} is not a JSON object" if line else "a line is not valid JSON"
        return SourceError(f"{where}; each line must hold one JSON object", file=name)
    if fmt == "csv":
        row = _csv_bad_row(f)
        if row is not None:
            return SourceError(f"data row {row[0]} (line {row[1]}) {row[2]}", file=name)
        return SourceError("cannot be parsed as CSV (an unclosed quote or a row with more fields than the header?)",
                           file=name)
    if fmt == "parquet":
        return SourceError("is not a readable Parquet file (truncated, corrupt, or another format?)", file=name)
    return SourceError(f"cannot read the file ({exc.__class__.__name__})", file=name)


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


def _ragged_check(f: Path, df: pl.DataFrame, last: str, name: str) -> None:
    """Rows with fewer fields than the header leave the last column null, as an empty last
    field does; only then is the file scanned (by line, in polars) for rows that are short.
    Errors name the source file ``name`` (``f`` may be its UTF-8 copy)."""
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
            raise SourceError(f"data row {bad[0]} (line {bad[1]}) {bad[2]}", file=name)
        return
    i = int(short.arg_true()[0])
    raise SourceError(f"data row {i} (line {i + 1}) has {int(n_sep[i]) + 1} fields, fewer than the header's "
                      f"{int(n_sep[0]) + 1} (a ragged row)", file=name)


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
            path = _readable(f, src)
            scan = _scan(path, src.format)
            schema = scan.collect_schema()
            nested = nested_columns(dict(schema), cols)
            if nested:
                raise SourceError(f"holds {schema[nested[0]]} values; an attribute needs one value per record "
                                  "(flatten the column first)", file=f.name, column=_printable(nested[0]))
            last = schema.names()[-1] if src.format == "csv" and schema.names() else None
            read = cols + ([last] if last is not None and last not in cols else [])
            df = scan.select(read).collect()
            if last is not None:
                _ragged_check(path, df, last, f.name)
            parts.append(df.select(cols))
        except pl.exceptions.ColumnNotFoundError as exc:
            missing = [c for c in cols if c not in _safe_names(path, src.format)]
            raise SourceError("missing column", file=f.name, column=_printable(missing[0]) if missing else None) \
                from None
        except pl.exceptions.PolarsError as exc:
            raise _read_error(path, src.format, exc, name=f.name) from None
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


# UTF-8 copies of the files of sources with an ``encoding``, made once per file version
# (path, size, mtime, codec) in a private temporary folder that is removed at exit.
_COPIES: dict[tuple[str, int, int, str], Path] = {}
_COPY_DIR: tempfile.TemporaryDirectory | None = None
_CHUNK = 1 << 20


def _readable(f: Path, src: Source) -> Path:
    """The file to read for ``f``: itself, or for a CSV or NDJSON source whose ``encoding``
    is not UTF-8, its UTF-8 copy (polars reads UTF-8 only)."""
    enc = getattr(src, "encoding", None)
    if not enc or src.format not in ("csv", "ndjson") or codecs.lookup(enc).name == "utf-8":
        return f
    return utf8_copy(f, enc)


def utf8_copy(f: str | Path, encoding: str) -> Path:
    """A UTF-8 copy of the text file ``f`` written in ``encoding`` (``latin-1``, ``cp1252``,
    ``utf-16`` with its byte-order mark, ...), decoded in 1 MiB chunks so that memory stays
    bounded whatever the file's size. The copy lives in a private temporary folder (mode
    0700, removed when the process ends) and is made once per version of the file. A byte
    that is not valid in ``encoding`` is a :class:`SourceError` naming the file and its line
    (never the text).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "people.csv"
    >>> _ = p.write_bytes("id,name\\n1,Ren\\xe9e\\n".encode("latin-1"))
    >>> utf8_copy(p, "latin-1").read_text(encoding="utf-8")
    'id,name\\n1,Renée\\n'
    >>> utf8_copy(p, "ascii")
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.SourceError: people.csv: the file is not valid ascii text: a byte at line 2 cannot be decoded; check the source's encoding
    """
    global _COPY_DIR
    f = Path(f)
    codec = codecs.lookup(encoding).name
    st = os.stat(f)
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns, codec)
    hit = _COPIES.get(key)
    if hit is not None and hit.exists():
        return hit
    if _COPY_DIR is None:
        _COPY_DIR = tempfile.TemporaryDirectory(prefix="idweave-utf8-")
    fd, name = tempfile.mkstemp(dir=_COPY_DIR.name, suffix=f.suffix)  # mode 0600: personal data
    out = Path(name)
    dec = codecs.getincrementaldecoder(codec)("strict")
    line = 1
    try:
        with open(f, "rb") as fh, os.fdopen(fd, "wb") as w:
            while True:
                data = fh.read(_CHUNK)
                state = dec.getstate()
                try:
                    text = dec.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    line += _lines_before(codec, state, data, exc.start)
                    raise SourceError(f"the file is not valid {encoding} text: a byte at line {line} cannot be "
                                      "decoded; check the source's encoding", file=f.name) from None
                w.write(text.encode("utf-8"))
                line += text.count("\n")
                if not data:
                    break
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    for old in [k for k in _COPIES if k[0] == key[0] and k[3] == codec]:  # an older version of the file
        _COPIES.pop(old).unlink(missing_ok=True)
    _COPIES[key] = out
    return out


def _lines_before(codec: str, state: Any, data: bytes, bad: int) -> int:
    """Line breaks in ``data`` before the undecodable byte at ``bad`` (an offset that counts
    the bytes the decoder held over from the previous chunk, given in ``state``)."""
    dec = codecs.getincrementaldecoder(codec)("replace")
    dec.setstate(state)
    pending = len(state[0]) if isinstance(state, tuple) and isinstance(state[0], bytes) else 0
    return dec.decode(data[:max(bad - pending, 0)]).count("\n")
