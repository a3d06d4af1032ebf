"""Small DuckDB helpers shared by the store, the model and the sources."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import duckdb
import polars as pl

_SCRATCH: tuple[int, duckdb.DuckDBPyConnection] | None = None
_SCRATCH_LOCK = threading.Lock()


@contextmanager
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor of an in-memory DuckDB kept for the process, for a query over frames (a new
    database costs ~20-30 ms; a cursor well under one). A cursor is a connection of its own:
    what it registers no other cursor sees. A forked child makes its own database.

    >>> with scratch() as con:
    ...     con.execute("select 41 + 1").fetchall()
    [(42,)]
    """
    global _SCRATCH
    with _SCRATCH_LOCK:
        if _SCRATCH is None or _SCRATCH[0] != os.getpid():
            _SCRATCH = (os.getpid(), duckdb.connect())
        con = _SCRATCH[1].cursor()
    try:
        yield con
    finally:
        con.close()


def query_pl(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
    """Run a query and return a polars frame (DuckDB 2 connections have no ``.pl()``)."""
    rel = con.sql(sql, params=list(params)) if params is not None else con.sql(sql)
    if rel is None:  # a statement that returns no rows
        return pl.DataFrame()
    out = pl.from_arrow(rel.to_arrow_table())
    assert isinstance(out, pl.DataFrame)
    return out


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
    """First row of a query, with the result fully consumed (DuckDB 2 refuses further work on a
    connection that has an unfinished result)."""
    rows = (con.execute(sql, params) if params is not None else con.execute(sql)).fetchall()
    return rows[0] if rows else None
