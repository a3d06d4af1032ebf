"""Training (linkage/model.py: train and its EM passes) on the real Splink engine.

Two properties: the same records give the same model, bit for bit, in one process and across
processes (whatever the row order and ``PYTHONHASHSEED``); and an EM pass that Splink cannot
finish on small data neither sinks the model nor changes its comparisons, and the training
log says what happened.
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
from idweave.linkage import _splink, comparisons, training
from idweave.linkage import model as model_mod
from idweave.linkage.pipeline import _comparisons_signature
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records

# Trains a project's records (ordered and numbered as link numbers them) and prints the
# model version and the settings JSON.
TRAIN_SCRIPT = """
import json, sys
import polars as pl
from idweave.linkage.training import train
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
    a = training.train(recs, p)
    b = training.train(recs, p)
    c = training.train(recs.sample(fraction=1.0, shuffle=True, seed=3), p)
    assert a.version == b.version == c.version
    assert a.to_json() == b.to_json() == c.to_json()
    assert all(a.tf_tables[k].equals(c.tf_tables[k]) for k in a.tf_tables)


def test_model_json_has_no_random_cache_id() -> None:
    # Splink gives every linker a random id (names of its cache tables); it used to end up
    # in the model JSON and so in the model version.
    p, recs = project_records(FIXTURES / "tiny" / "project.yaml")
    assert "linker_uid" not in training.train(recs, p).settings


def test_same_model_across_processes(generated_project: Path) -> None:
    p, recs = project_records(generated_project)
    here = training.train(recs, p)
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


# ------------------------------------------------------------- EM passes on small data
def demo_subset(every: int, offset: int) -> tuple:
    """Every ``every``-th record of fixtures/demo (from ``offset``), numbered as link does."""
    p = load_project(FIXTURES / "demo" / "project.yaml")
    recs = load_records(p).sort("source", "record_id").gather_every(every, offset)
    return p, numbered(recs)


def em_lines(model: model_mod.TrainedModel) -> list[str]:
    return [x for x in model.training_log if x.startswith(("em pass", "prior"))]


def assert_complete(model: model_mod.TrainedModel, p) -> None:
    """Every comparison of the project is in the model (so the next run reuses it) and every
    level has a usable m and u."""
    assert _comparisons_signature(model.settings) == _comparisons_signature(comparisons.build_settings(p))
    for c in model.comparisons():
        for lv in c["comparison_levels"]:
            if not lv.get("is_null_level"):
                assert training.MIN_M <= lv["m_probability"] <= 1 and 0 < lv["u_probability"] <= 1


def rule_prior(recs: pl.DataFrame, p) -> float:
    """The prior the deterministic rules give (what training starts EM from)."""
    settings = comparisons.build_settings(p)
    r = comparisons.prepare(recs, comparisons.input_columns(settings))
    present = {c for c in comparisons.comparison_columns(p) if r[c].null_count() < r.height}
    with training._training_engine() as con:
        linker, _ = _splink.make_linker(r, settings, con, p.engine)
        linker.training.estimate_probability_two_random_records_match(training._prior_rules(p, present),
                                                                      recall=0.7)
        return linker.misc.save_model_to_json(None)["probability_two_random_records_match"]


def test_a_level_em_drives_to_zero_is_held_and_the_pass_kept() -> None:
    # Splink used to raise "m_probability value 0.0 is below the minimum allowed value of
    # 1e-300" in the birth-date pass, which was lost, and with it the birth-date comparison.
    p, recs = demo_subset(8, 3)
    m = training.train(recs, p)
    lines = em_lines(m)
    assert lines[0] == "em pass blocked on birth_date"
    assert lines[1].startswith("em pass blocked on birth_date: held m of ") and "at 1e-300" in lines[1]
    assert "em pass blocked on first_name & last_name" in lines
    assert not any("skipped" in x for x in lines)
    assert_complete(m, p)
    assert training.train(recs, p).version == m.version


def test_no_deterministic_match_keeps_the_default_prior() -> None:
    # The deterministic rules match no pair: Splink set the prior to 0 and every EM pass
    # failed with "math domain error". Here every pair sharing a birth date is a match, too.
    p, recs = demo_subset(24, 1)
    m = training.train(recs, p)
    assert em_lines(m) == [
        "prior: kept default 0.0001 (the deterministic rules gave 0)",
        "em pass blocked on birth_date",
        "em pass blocked on birth_date: held the match probability below 1 (every pair looked like a match)",
        "em pass blocked on first_name & last_name",
    ]
    assert_complete(m, p)


@pytest.mark.parametrize(("every", "offset", "skipped"), [
    (13, 3, ["em pass blocked on first_name & last_name skipped: no pair with a sex looked like a match"]),
    (30, 0, ["em pass blocked on birth_date skipped: no pair of records agrees on birth_date",
             "em pass blocked on first_name & last_name skipped: no pair of records agrees on first_name & last_name"]),
])
def test_a_skipped_pass_leaves_the_model_as_it_was(every: int, offset: int, skipped: list[str]) -> None:
    # Splink's EM session drops the comparisons its rule blocks on from the linker and
    # changes its prior before training; a failed pass used to leave them so.
    p, recs = demo_subset(every, offset)
    m = training.train(recs, p)
    assert [x for x in em_lines(m) if "skipped" in x] == skipped
    assert_complete(m, p)
    assert m.prior == (rule_prior(recs, p) or 0.0001)


def test_a_run_on_small_data_reuses_its_model(tmp_path: Path) -> None:
    # A model missing comparisons did not fit the project, so every later run retrained.
    p, recs = demo_subset(8, 3)
    ids = {s: recs.filter(pl.col("source") == s)["record_id"].to_list() for s in p.sources}
    project = copy_fixture("demo", tmp_path / "demo")
    frames = {}
    for name, src in p.sources.items():
        path = FIXTURES / "demo" / src.path
        raw = {"csv": lambda f: pl.read_csv(f, infer_schema=False), "parquet": pl.read_parquet,
               "ndjson": pl.read_ndjson}[path.suffix[1:]](path)
        frames[name] = raw.filter(pl.col(src.id).cast(pl.Utf8).is_in(ids[name]))
    first = link(project, sources=frames)
    second = link(project, sources=frames)
    assert not any("skipped" in x for x in first.summary["training_log"])
    assert second.summary["training_log"] == ["reused the stored model"]
    assert second.summary["model_version"] == first.summary["model_version"]
