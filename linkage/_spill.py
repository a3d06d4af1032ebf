"""A run's scored pairs out of Python memory.

A run scores millions of candidate pairs. Its later stages (the threshold, the clustering,
the counts) need only each pair's ends, rule, match weight and probability: the *light*
columns (:data:`LIGHT`, 36 bytes a pair). The level and weight of every comparison are what
``explain`` shows and the store keeps, and they are most of a pair's size (7 comparisons:
84 bytes). Each piece of scoring leaves its light columns to the caller and writes the rest
to an Arrow IPC file in a temporary folder (:meth:`Spill.keep`); the store's write reads the
pieces back one at a time (:meth:`Spill.pieces`), so a run holds one piece's levels and
weights at a time, not every pair's.

Why files and not a DuckDB table: on this project's 2-core machine, 6.3 million pairs with 7
comparisons took 2.3-4.4 s to insert into a DuckDB table (with a 1 GB memory limit) and 1.0 s
to write as LZ4-compressed IPC (187 MB; 0.3 s uncompressed, 700 MB), 0.2 s to read back.

The folder is the system's temporary folder (``TMPDIR``); it is removed when the run ends.

>>> import polars as pl
>>> piece = pl.DataFrame({"rid_l": [0], "rid_r": [1], "rule": [0], "match_weight": [3.0],
...                       "match_probability": [0.9], "level_name": [2], "w_name": [3.0]})
>>> with Spill() as sp:
...     light = sp.keep("scored", piece)
...     light.columns, sp.rows("scored"), [p.columns for p in sp.pieces("scored")]
(['rid_l', 'rid_r', 'rule', 'match_weight', 'match_probability'], 1, [['rid_l', 'rid_r', 'level_name', 'w_name']])
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import polars as pl

__all__ = ["Spill", "LIGHT"]

#: The columns of a scored pair that stay in Python memory.
LIGHT = ["rid_l", "rid_r", "rule", "match_weight", "match_probability"]


def heavy_columns(frame: pl.DataFrame) -> list[str]:
    """The columns of scored pairs that go to the spill: the ends and every level and weight.

    >>> heavy_columns(pl.DataFrame(schema=["rid_l", "rid_r", "rule", "match_weight", "level_a", "w_a"]))
    ['rid_l', 'rid_r', 'level_a', 'w_a']
    """
    return ["rid_l", "rid_r", *[c for c in frame.columns if c.startswith(("level_", "w_"))]]


class Spill:
    """A new temporary folder for one run's scored pairs, one IPC file a piece, each list
    of pieces under a name (removed, with the folder, on :meth:`close`)."""

    def __init__(self) -> None:
        self.folder: Path | None = Path(tempfile.mkdtemp(prefix="idweave-run-"))
        self._files: dict[str, list[tuple[Path, int]]] = {}
        self._n = 0

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, name: str) -> None:
        """Forget the pieces kept under ``name`` (a run that starts again scores anew)."""
        for path, _ in self._files.pop(name, []):
            path.unlink(missing_ok=True)

    def keep(self, name: str, piece: pl.DataFrame) -> pl.DataFrame:
        """Write ``piece``'s ends, levels and weights as the next piece under ``name``, and
        return its light columns (:data:`LIGHT`) for the caller to keep, in the same order."""
        if self.folder is None:
            raise RuntimeError("the run's spill folder was removed")
        if piece.height or name not in self._files:  # an empty first piece: its columns are known
            self._n += 1
            path = self.folder / f"{self._n:06d}.arrow"
            piece.select(heavy_columns(piece)).write_ipc(path, compression="lz4")
            self._files.setdefault(name, []).append((path, piece.height))
        return piece.select(LIGHT)

    def rows(self, name: str) -> int:
        """How many pairs are kept under ``name``."""
        return sum(n for _, n in self._files.get(name, []))

    def pieces(self, name: str) -> Iterator[pl.DataFrame]:
        """The pieces kept under ``name``, in order, read one at a time."""
        for path, _ in self._files.get(name, []):
            yield pl.read_ipc(path)

    def close(self) -> None:
        """Remove the folder and every piece in it."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self._files.clear()

