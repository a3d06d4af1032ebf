"""A run's scored pairs spilled out of Python memory (linkage/_spill.py): the links a run
stores carry the levels and weights that scoring gave each pair, row for row; the spill
folder goes when the run ends, whether it succeeds or fails; pieces out of step are refused."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl
import pytest

from idweave.linkage import _incremental as inc
from idweave.linkage import link
from idweave.linkage._db import query_pl
from idweave.linkage._spill import LIGHT, Spill
from idweave.linkage.graph import Store
from idweave.linkage.model import TrainedModel
from idweave.linkage.scoring import score_pairs
from idweave.linkage.sources import load_records
from idweave.linkage.project import load_project
from identity_helpers import store_of


def _spill_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("idweave-run-")}


def test_stored_links_carry_the_scored_evidence(tiny: Path) -> None:
    before = _spill_folders()
    link(tiny, full=True)
    assert _spill_folders() <= before  # the run's folder is gone
    proj = load_project(tiny)
    with Store.open(store_of(tiny), read_only=True) as st:
        links = query_pl(st.con, "select * from links where rule <> 'cluster completion'")
        recs = query_pl(st.con, "select source, record_id from records order by source, record_id")
        from idweave.linkage.scoring import stored_model

        settings, tf_tables, _ = stored_model(st)
    assert links.height > 0
    records = (load_records(proj).sort("source", "record_id").with_row_index("rid")
               .with_columns(pl.col("rid").cast(pl.Int64)))
    assert records.select("source", "record_id").equals(recs)
    rid = {(s, r): i for i, s, r in records.select("rid", "source", "record_id").iter_rows()}
    pairs = pl.DataFrame({"rid_l": [rid[(s, r)] for s, r in links.select("source_l", "record_id_l").iter_rows()],
                          "rid_r": [rid[(s, r)] for s, r in links.select("source_r", "record_id_r").iter_rows()],
                          "rule": [0] * links.height}, schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    model = TrainedModel(settings, tf_tables)
    again = inc.canonical_scores(score_pairs(records, pairs, model), model.prior)
    stored = links.with_columns(pairs["rid_l"], pairs["rid_r"]).sort("rid_l", "rid_r")
    evidence = [c for c in again.columns if c.startswith(("level_", "w_"))]
    assert evidence and evidence == [c for c in links.columns if c.startswith(("level_", "w_"))]
    for c in [*evidence, "match_weight", "match_probability"]:
        assert stored[c].to_list() == again[c].to_list(), c


def test_the_spill_folder_goes_when_a_run_fails(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _spill_folders()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the write failed")

    monkeypatch.setattr(inc, "write_run", broken)
    with pytest.raises(RuntimeError, match="the write failed"):
        link(tiny, full=True)
    assert _spill_folders() <= before


def test_pieces_out_of_step_are_refused(tiny: Path) -> None:
    piece = pl.DataFrame({"rid_l": [0, 0], "rid_r": [1, 2], "rule": [0, 0], "match_weight": [1.0, 2.0],
                          "match_probability": [0.6, 0.8], "level_a": [1, 0], "w_a": [1.0, 2.0]})
    with Spill() as sp:
        light = sp.keep("scored", piece)
        assert light.columns == LIGHT
        assert sp.rows("scored") == 2
        folder = sp.folder
        w = inc.RunWrite(mode="full", records=pl.DataFrame(), seen=pl.Series(dtype=pl.Boolean), delta=None,
                         new_links=[("scored", light.reverse())], rule_names={0: "a"},
                         rescored=pl.Series(dtype=pl.Int64), drop_pairs=pl.DataFrame(),
                         affected=pl.Series(dtype=pl.Int64), clusters=pl.DataFrame(), n_links_total=2,
                         n_strong_total=0, started=None, row={}, spill=sp)
        records = pl.DataFrame({"rid": [0, 1, 2], "source": ["s"] * 3, "record_id": ["1", "2", "3"], "rk": [0, 1, 2]})
        with Store.open(Path(tempfile.mkdtemp()) / "x.duckdb") as st:
            with pytest.raises(RuntimeError, match="out of step"):
                inc._write_links(st, records, w, replace=True)
    assert folder is not None and not folder.exists()
