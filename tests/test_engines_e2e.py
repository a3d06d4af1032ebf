"""The same project file on every engine, end to end: ``idweave link`` (training and scoring
on the engine), an incremental run, a decision and the run after it, and lookup (the
compiled DuckDB fast path, over the model the engine trained) give on Spark what they give
on DuckDB: the same entities, the same links with the same levels and scores within 1e-9,
and the same events.

Each test runs once per engine (:func:`engine_marks.engines`); the Spark case is marked
``spark``. The story of one engine (copy the demo, link, change the sources and link again,
split an entity, link again, look records up) is told once per test module and engine, on
the process's one SparkSession, and each test checks one chapter of it: Spark trains once
and scores four times here. Entity ids are random, so an entity is named by its first record
(or, once it holds none, by the first record it ever held). Nothing is timed.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import snapshot
from engine_marks import engines, require
from identity_helpers import copy_store, entity_sizes_hold, partition, project_copy, raw_frames, store_of
from idweave.linkage import link, scoring
from idweave.linkage.decisions import split
from idweave.linkage.graph import Store
from idweave.linkage.lookup import lookup
from test_review import largest, leaf

# Random pairs for u: fewer than the demo's 381k pairs (the default samples them all), to
# keep Spark's part of the suite short; the same on both engines, which sample the same pairs.
U_PAIRS = 40_000
SCORE_TOL = 1e-9
NAME_COLUMN = {"census": "surname", "tax": "family", "benefits": "full_name"}


@dataclass
class State:
    """A store's identity graph with entity ids replaced by names."""

    partition: set
    links: pl.DataFrame
    events: list[tuple[Any, ...]]
    summary: dict[str, Any] = field(default_factory=dict)


def _state(project: Path, summary: dict[str, Any] | None = None, store: Path | None = None) -> State:
    path = store or store_of(project)
    with Store.open(path, read_only=True) as st:
        records = st.con.sql("select source, record_id, entity_id from records order by source, record_id").pl()
        links = st.con.sql("select * exclude (rk_l, rk_r) from links order by source_l, record_id_l, "
                           "source_r, record_id_r").pl()
        events = st.con.sql("select type, entity_id, other_entity_id, source, record_id, detail from events "
                            "where type <> 'decision' order by event_id").pl()
    name: dict[str, str] = {}
    for s, r, e in records.iter_rows():
        name.setdefault(e, f"{s}:{r}")
    for _t, e, _o, s, r, _d in events.sort("source", "record_id").iter_rows():
        if e is not None and s is not None:
            name.setdefault(e, f"{s}:{r}")
    ev = [(t, name.get(e, e and "?"), name.get(o, o and "?"), s, r, d) for t, e, o, s, r, d in events.iter_rows()]
    assert entity_sizes_hold(path)
    return State(partition(records), links, ev, summary or {})


def _batch(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every row but one in 53, one name in 37 changed, one row in 41 new (a copy of another
    under a new id): new, changed and removed records."""
    out = {}
    for n, df in frames.items():
        col, key = NAME_COLUMN[n], df.columns[0]
        df = df.with_row_index("_i").with_columns(
            pl.when(pl.col("_i") % 37 == 1).then(pl.col(col) + "son").otherwise(pl.col(col)).alias(col))
        new = df.filter(pl.col("_i") % 41 == 3).with_columns((pl.col(key) + "-new").alias(key))
        out[n] = pl.concat([df.filter(pl.col("_i") % 53 != 2), new]).drop("_i")
    return out


@dataclass
class Story:
    engine: str
    linked: State            # ``idweave link`` on a fresh copy: trained and scored on the engine
    found: pl.DataFrame      # lookup on that store (the model the engine trained)
    model: tuple[dict, dict]  # that model as stored: settings, term-frequency tables
    incremental: State       # the reference's linked store, changed sources, incrementally
    incremental_full: State  # the same data, a full run on a copy
    decided: State           # then a split
    after_decision: State    # then a run
    split_off: tuple[str, str]


_STORIES: dict[str, Story] = {}


def _project(engine: str, folder: Path) -> Path:
    extra: dict[str, Any] = {"engine": engine, "training": {"u_max_pairs": U_PAIRS}}
    if engine == "spark":
        extra["spark"] = {"master": "local[2]", "checkpoint_dir": "spark-checkpoints"}
    return project_copy("demo", folder, **extra)


def _lookup(project: Path, frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    census = frames["census"].head(6)
    queries = [{"first_name": r["fname"], "last_name": r["surname"], "birth_date": r["dob"],
                "postcode": r["zip"]} for r in census.iter_rows(named=True)]
    found = lookup(project, queries, top=3, date_format="%m/%d/%Y")
    with Store.open(store_of(project), read_only=True) as st:
        records = st.con.sql("select source, record_id, entity_id from records order by source, record_id").pl()
    first_of = records.group_by("entity_id", maintain_order=True).first().select(
        "entity_id", (pl.col("source") + ":" + pl.col("record_id")).alias("entity"))
    return found.join(first_of, on="entity_id", how="left").drop("entity_id").sort("query", "rank")


def _tell(engine: str, folder: Path, reference: Path | None) -> tuple[Story, Path]:
    """The story on ``engine``. Its first chapter links a fresh copy of the demo (training
    on the engine); the others start from a copy of ``reference``, the reference engine's
    linked folder (its store, ids and model), so that every entity id is the same on both
    and an event can be compared as it is: which of two equally old entities survives a
    merge follows their (random) ids. Returns the story and the linked folder."""
    project = _project(engine, folder / engine)
    first = link(project)
    assert first.summary["mode"] == "full" and first.summary["retrained"]
    linked = _state(project, first.summary)
    frames = _batch(raw_frames(project))
    found = _lookup(project, raw_frames(project))
    with Store.open(store_of(project), read_only=True) as st:
        settings, tf, _version = scoring.stored_model(st)
    base = folder / "linked"
    shutil.copytree(project.parent, base)

    if reference is not None:
        shutil.copytree(reference, folder / "from-reference")
        project = folder / "from-reference" / "project.yaml"
        project.write_text(_project(engine, folder / "settings").read_text())
    other = copy_store(store_of(project), folder / f"{engine}-full" / "demo.duckdb")
    inc = link(project, sources=frames)
    full = link(project, sources=frames, store=other, full=True)
    incremental, incremental_full = _state(project, inc.summary), _state(project, full.summary, other)

    big = largest(project)
    gone = leaf(project, big)
    split(project, big, [gone], author="ada", reason="another person")
    decided = _state(project)
    after = link(project, sources=frames)
    after_decision = _state(project, after.summary)
    return Story(engine, linked, found, (settings, tf), incremental, incremental_full, decided, after_decision, gone), base


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The story on one engine (told once per module and engine; DuckDB's first)."""
    linked: dict[str, Path] = {}

    def get(engine: str) -> Story:
        require(engine)
        if engine not in _STORIES:
            ref = None if engine == "duckdb" else (get("duckdb"), linked["duckdb"])[1]
            _STORIES[engine], linked[engine] = _tell(engine, tmp_path_factory.mktemp(f"story-{engine}"), ref)
        return _STORIES[engine]
    return get


def _same_links(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """The same pairs on the same rules and levels; weights and probabilities within 1e-9."""
    assert got.columns == want.columns and got.height == want.height > 0
    exact = [c for c in want.columns if want[c].dtype != pl.Float64]
    assert got.select(exact).equals(want.select(exact))
    for c in [c for c in want.columns if want[c].dtype == pl.Float64]:
        assert (got[c] - want[c]).abs().max() <= SCORE_TOL, c


def _same(got: State, want: State) -> None:
    assert got.partition == want.partition
    _same_links(got.links, want.links)
    assert got.events == want.events


@pytest.mark.parametrize("engine", engines())
def test_link_trains_and_scores_on_the_engine_giving_duckdbs_entities(engine, story) -> None:
    s, ref = story(engine), story("duckdb")
    assert len(s.linked.partition) == len(ref.linked.partition) > 300
    assert s.linked.summary["entities"] == len(s.linked.partition)
    assert {t for t, *_ in s.linked.events} == {"entity_created", "record_added"}
    _same(s.linked, ref.linked)


def _numbers(settings: dict) -> tuple[dict, dict]:
    """A model's λ, m and u by place, and what is left of its settings without them."""
    rest = copy.deepcopy(settings)
    out = {"prior": rest.pop("probability_two_random_records_match")}
    for c in rest["comparisons"]:
        for i, lv in enumerate(c["comparison_levels"]):
            for k in ("m_probability", "u_probability"):
                if k in lv:
                    out[c["output_column_name"], i, k] = lv.pop(k)
    return out, rest


@pytest.mark.parametrize("engine", engines())
def test_training_on_the_engine_gives_duckdbs_model(engine, story) -> None:
    """The model ``link`` trained and stored: λ, m and u within 1e-10 relative; structure,
    SQL, labels, training log and term-frequency tables the same exactly.

    Spark estimates u on the same sampled pairs (a sample of 40,000 of the demo's 381,501:
    it hashes with DuckDB's hash) and counts the same deterministic matches for the prior, so
    only the order in which EM's sums are added differs: Spark adds per partition and then
    across partitions, DuckDB (one thread) in row order. Reassociating a float64 sum of n
    terms moves it by at most about n·2^-53 relative (~1e-12 for the demo's pairs), and 25 EM
    iterations do not amplify it by 100x: 1e-10 holds with room (observed: ~1e-15)."""
    s, ref = story(engine), story("duckdb")
    (got, got_tf), (want, want_tf) = s.model, ref.model
    a, got_rest = _numbers(got)
    b, want_rest = _numbers(want)
    assert got_rest == want_rest and a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-10, abs_tol=0.0), (k, a[k], b[k])
    assert s.linked.summary["training_log"] == ref.linked.summary["training_log"]
    assert got_tf.keys() == want_tf.keys() and got_tf
    assert all(got_tf[k].equals(want_tf[k]) for k in want_tf)


@pytest.mark.parametrize("engine", engines())
def test_lookup_with_the_model_the_engine_trained_finds_what_duckdb_finds(engine, story) -> None:
    s, ref = story(engine), story("duckdb")
    f = s.found
    assert f.height >= 6 and f.filter(pl.col("rank") == 1)["is_match"].all()
    assert f["entity"].null_count() == 0
    exact = [c for c in ref.found.columns if ref.found[c].dtype != pl.Float64]
    assert f.select(exact).equals(ref.found.select(exact))
    for c in [c for c in ref.found.columns if ref.found[c].dtype == pl.Float64]:
        assert (f[c] - ref.found[c]).abs().max() <= SCORE_TOL, c


@pytest.mark.parametrize("engine", engines())
def test_an_incremental_run_on_the_engine_equals_a_full_run_and_duckdbs(engine, story) -> None:
    s, ref = story(engine), story("duckdb")
    summary = s.incremental.summary
    assert summary["mode"] == "incremental" and not summary["retrained"]
    assert summary["new_records"] > 0 and summary["changed_records"] > 0 and summary["removed_records"] > 0
    assert 0 < summary["scored_pairs"] < s.linked.links.height
    assert summary["events"] > 0
    # on its own engine, the incremental run ends where a full run on the same data does
    assert s.incremental.partition == s.incremental_full.partition
    _same_links(s.incremental.links, s.incremental_full.links)
    _same(s.incremental, ref.incremental)


@pytest.mark.parametrize("engine", engines())
def test_a_decision_holds_through_the_next_run_on_the_engine_as_on_duckdb(engine, story) -> None:
    s, ref = story(engine), story("duckdb")
    alone = [g for g in s.decided.partition if tuple(s.split_off) in g]
    assert len(alone) == 1 and len(alone[0]) == 1, "the split record is not on its own"
    assert len(s.decided.events) > len(s.incremental.events)
    assert s.after_decision.summary["mode"] == "incremental"
    assert [g for g in s.after_decision.partition if tuple(s.split_off) in g] == alone
    assert s.split_off == ref.split_off
    _same(s.decided, ref.decided)
    _same(s.after_decision, ref.after_decision)


def test_engine_spark_without_java_is_an_error_naming_engine_and_the_store_is_untouched(tmp_path: Path) -> None:
    """Where Spark cannot start (here: no Java on PATH), a Spark project's run that has pairs
    to score stops with one error naming ``engine`` (exit 2, no traceback), the linked store
    byte-identical. (A run with nothing to train or score never starts Spark.)"""
    project = project_copy("demo", tmp_path / "demo")
    link(project)
    data = project.read_text() + "engine: spark\n"
    project.write_text(data)
    before = snapshot(project.parent)
    script = Path(sys.executable).with_name("idweave")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "idweave.cli.app"]
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # this venv's scripts; no java
    proc = subprocess.run([*cmd, "link", str(project), "--full"], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Error: engine: spark is not available here: " in proc.stderr
    assert snapshot(project.parent) == before


def test_the_spark_section_is_no_part_of_a_runs_settings(tmp_path: Path) -> None:
    """Where Spark runs (``spark:``) changes no result: adding the section to a linked
    DuckDB project leaves the next run with nothing to do (mode ``unchanged``, no Spark)."""
    project = project_copy("demo", tmp_path / "demo")
    link(project)
    before = snapshot(project.parent)
    project.write_text(project.read_text() + "spark:\n  master: local[4]\n  conf: {spark.executor.memory: 8g}\n")
    again = link(project)
    assert again.summary["mode"] == "unchanged" and again.summary["events"] == 0
    assert snapshot(project.parent) == before
