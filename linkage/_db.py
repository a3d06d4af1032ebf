"""Small DuckDB helpers shared by the store, the model and the sources."""

from __future__ import annotations

from typing import Any, Sequence

import duckdb
import polars as pl


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
