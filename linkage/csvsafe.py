"""CSV that a spreadsheet cannot run: every CSV idweave writes goes through :func:`write_csv`,
and every one it reads back through :func:`restore_formulas`.

>>> neutralise_formulas(pl.DataFrame({"id": ["=HYPERLINK(1)"]})).item()
"'=HYPERLINK(1)"
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

__all__ = ["FORMULA_PREFIXES", "neutralise_formulas", "restore_formulas", "write_csv"]

# A spreadsheet takes a cell that starts with one of these for a formula (OWASP, "CSV
# injection"); "'" is added so that a value already starting with a quote reads back as it was.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "'")
_FORMULA_START = "^[=+\\-@\t\r']"


def neutralise_formulas(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with every text value that a spreadsheet would run as a formula (starting with
    ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) given a leading ``'``, as OWASP
    recommends; a value already starting with ``'`` gets one too, so that
    :func:`restore_formulas` gives back exactly what was written. Numbers are left alone.

    >>> neutralise_formulas(pl.DataFrame({"id": ["=1+2", "@SUM(A1)", "-3", "ann", "'x"], "n": [-1, 2, 3, 4, 5]})).rows()
    [("'=1+2", -1), ("'@SUM(A1)", 2), ("'-3", 3), ('ann', 4), ("''x", 5)]
    """
    cols = [c for c, t in df.schema.items() if t == pl.Utf8]
    if not cols:
        return df
    return df.with_columns(
        pl.when(pl.col(c).str.contains(_FORMULA_START)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in cols)


def restore_formulas(values: pl.Series) -> pl.Series:
    """Undo :func:`neutralise_formulas` on a text column read back from a CSV written by idweave.

    >>> restore_formulas(pl.Series(["'=1+2", "''x", "ann", "'ann"])).to_list()
    ['=1+2', "'x", 'ann', "'ann"]
    """
    return pl.Series(values.name, values.to_frame("v").select(
        pl.when(pl.col("v").str.contains("^'[=+\\-@\t\r']")).then(pl.col("v").str.slice(1))
        .otherwise(pl.col("v"))).to_series())


def write_csv(df: pl.DataFrame, path: str | Path) -> None:
    """Write ``df`` as CSV with formulas neutralised (:func:`neutralise_formulas`): every CSV
    idweave writes goes through here. Parquet files are written as they are."""
    neutralise_formulas(df).write_csv(path)
