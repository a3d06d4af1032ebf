"""link(): what a failed first run leaves behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from idweave.linkage import ModelError, link

REPO = Path(__file__).resolve().parents[1]


def test_a_first_run_that_fails_in_training_leaves_no_store(tmp_path):
    d = tmp_path / "tiny"
    shutil.copytree(REPO / "fixtures" / "tiny", d)
    labels = tmp_path / "labels.csv"
    labels.write_text("source_dataset_l,unique_id_l,source_dataset_r,unique_id_r,clerical_match_score\n"
                      "census,no-such-id,tax,nor-this,1.0\n")
    p = yaml.safe_load((d / "project.yaml").read_text())
    p["store"] = "out/store.duckdb"
    p["training"] = {"m_from_labels": str(labels)}
    (d / "project.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with pytest.raises(ModelError, match="the labels name no matching pair"):
        link(d / "project.yaml")
    assert not (d / "out" / "store.duckdb").exists()
    assert not (d / "out" / "store.duckdb.wal").exists()
