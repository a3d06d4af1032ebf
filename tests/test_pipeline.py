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


@pytest.mark.parametrize("threshold", [-1, 0, 1, 2.5, float("nan"), True, "0.9"])
def test_link_refuses_a_threshold_that_is_not_a_probability_and_touches_nothing(tmp_path, threshold):
    import hashlib

    from idweave.linkage import IdweaveError

    d = tmp_path / "tiny"
    shutil.copytree(REPO / "fixtures" / "tiny", d)
    p = yaml.safe_load((d / "project.yaml").read_text())
    p["store"] = "out/store.duckdb"
    (d / "project.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    link(d / "project.yaml")
    store = d / "out" / "store.duckdb"
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    with pytest.raises(IdweaveError, match=r"^threshold: must be a match probability between 0 and 1"):
        link(d / "project.yaml", threshold=threshold)
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before
