"""Training (linkage/model.py: train and its EM passes) on the real Splink engine.

The same records give the same model, bit for bit, in one process and across processes
(whatever the row order and ``PYTHONHASHSEED``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import FIXTURES, ROOT, copy_fixture
from idweave.linkage import link
from idweave.linkage import model as model_mod
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records

# Trains a project's records (ordered and numbered as link numbers them) and prints the
# model version and the settings JSON.
TRAIN_SCRIPT = """
import json, sys
import polars as pl
from idweave.linkage.model import train
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records
p = load_project(sys.argv[1])
recs = load_records(p).sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
m = train(recs, p)
print(json.dumps({"version": m.version, "settings": m.settings}))
"""


def numbered(records: pl.DataFrame) -> pl.DataFrame:
    """Records with ``rid`` as link gives them: ordered by source and record id."""
    return (records.sort("source", "record_id").with_row_index("rid")
            .with_columns(pl.col("rid").cast(pl.Int64)))


def project_records(project: Path | str) -> tuple:
    p = load_project(project)
    return p, numbered(load_records(p))


def train_in_subprocess(project: Path, hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(project)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def generated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,600 generated records (3,000 people): enough pairs for DuckDB to aggregate EM's sums
    in parallel, which made the last bits of m differ from run to run."""
    spec = importlib.util.spec_from_file_location("_idweave_fixture_generator", FIXTURES / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    folder = tmp_path_factory.mktemp("generated")
    gen.write(gen.generate(3000, 3), folder, store="out/generated.duckdb")
    return folder / "project.yaml"


# ------------------------------------------------------------------------ determinism
def test_same_records_same_model_whatever_the_row_order() -> None:
    p, recs = project_records(FIXTURES / "tiny" / "project.yaml")
    a = model_mod.train(recs, p)
    b = model_mod.train(recs, p)
    c = model_mod.train(recs.sample(fraction=1.0, shuffle=True, seed=3), p)
    assert a.version == b.version == c.version
    assert a.to_json() == b.to_json() == c.to_json()
    assert all(a.tf_tables[k].equals(c.tf_tables[k]) for k in a.tf_tables)


def test_model_json_has_no_random_cache_id() -> None:
    # Splink gives every linker a random id (names of its cache tables); it used to end up
    # in the model JSON and so in the model version.
    p, recs = project_records(FIXTURES / "tiny" / "project.yaml")
    assert "linker_uid" not in model_mod.train(recs, p).settings


def test_same_model_across_processes(generated_project: Path) -> None:
    p, recs = project_records(generated_project)
    here = model_mod.train(recs, p)
    runs = [train_in_subprocess(generated_project, seed) for seed in ("1", "2")]
    assert runs[0]["version"] == runs[1]["version"] == here.version
    assert runs[0]["settings"] == runs[1]["settings"] == json.loads(here.to_json())


def test_linking_from_scratch_twice_gives_one_model_version(tmp_path: Path) -> None:
    # The version a run reports is the trained model with its prior refined from the
    # candidate pairs: all of it must repeat.
    versions = []
    for i in range(2):
        project = copy_fixture("tiny", tmp_path / f"run{i}")
        versions.append(link(project).summary["model_version"])
    assert versions[0] == versions[1]
