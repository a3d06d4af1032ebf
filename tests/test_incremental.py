"""Incremental runs: only what changed is scored and re-clustered, and the result equals a
full run on the same data (the same links bit for bit, the same entities, the same ids).

The demo fixture is linked once (this trains the model); every test starts from a copy of
that store, so every run here reuses the stored model.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity_helpers import (copy_store, entity_sizes_hold, linked_copy, partition, project_copy, raw_frames,
                              read_table)
from idweave.linkage import link


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(project, store) of fixtures/demo linked once."""
    project, store, result = linked_copy("demo", tmp_path_factory.mktemp("incremental") / "demo")
    assert result.summary["mode"] == "full" and result.summary["retrained"]
    return project, store


def batch_one(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Four rows in five of every source."""
    return {n: df.with_row_index("_i").filter(pl.col("_i") % 5 != 0).drop("_i") for n, df in frames.items()}


NAME_COLUMN = {"census": "surname", "tax": "family", "benefits": "full_name"}


def batch_two(frames: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every row, except one in 53; one name in 37 changed."""
    out = {}
    for n, df in frames.items():
        col = NAME_COLUMN[n]
        df = df.with_row_index("_i").with_columns(
            pl.when(pl.col("_i") % 37 == 1).then(pl.col(col) + "son").otherwise(pl.col(col)).alias(col))
        out[n] = df.filter(pl.col("_i") % 53 != 2).drop("_i")
    return out


def run_both(project: Path, store: Path, tmp_path: Path, frames: dict[str, pl.DataFrame]):
    """The same data linked incrementally on ``store`` and with full=True on a copy."""
    other = copy_store(store, tmp_path / "full.duckdb")
    inc = link(project, sources=frames, store=store)
    full = link(project, sources=frames, store=other, full=True)
    return inc, full, other


def assert_same_graph(inc, full, store_inc: Path, store_full: Path) -> None:
    assert partition(inc.entities) == partition(full.entities)
    # The links tables hold the same pairs with bit-identical scores and evidence.
    assert read_table(store_inc, "links").equals(read_table(store_full, "links"))
    # Ids: equal wherever they were inherited; minted ids are random on both sides.
    created = set(read_table(store_inc, "entities").filter(pl.col("created_run") == inc.run_id)["entity_id"])
    created |= set(read_table(store_full, "entities").filter(pl.col("created_run") == full.run_id)["entity_id"])
    j = inc.entities.join(full.entities, on=["source", "record_id"], suffix="_full")
    inherited = j.filter(~pl.col("entity_id").is_in(list(created)) | ~pl.col("entity_id_full").is_in(list(created)))
    assert (inherited["entity_id"] == inherited["entity_id_full"]).all()
    ev = {k: v for k, v in read_table(store_inc, "events").filter(pl.col("run_id") == inc.run_id)
          .group_by("type").len().iter_rows()}
    ev_full = {k: v for k, v in read_table(store_full, "events").filter(pl.col("run_id") == full.run_id)
               .group_by("type").len().iter_rows()}
    assert ev == ev_full
    assert inc.summary["entities"] == full.summary["entities"]
    assert inc.summary["candidate_pairs"] == full.summary["candidate_pairs"]


def test_adding_changing_and_removing_records_equals_a_full_run(demo, tmp_path: Path) -> None:
    project, template = demo
    frames = raw_frames(project)
    store = copy_store(template, tmp_path / "inc.duckdb")
    first = link(project, sources=batch_one(frames), store=store)
    assert first.summary["mode"] == "incremental"
    assert (first.summary["new_records"], first.summary["changed_records"]) == (0, 0)
    assert first.summary["removed_records"] == sum((df.height + 4) // 5 for df in frames.values())  # 176

    inc, full, other = run_both(project, store, tmp_path, batch_two(frames))
    assert (inc.summary["mode"], full.summary["mode"]) == ("incremental", "full"), inc.summary["mode_reason"]
    # What the data says: rows 0, 5, 10, ... come back; 2, 55, 108, ... go; 1, 38, 75, ... change
    # (an edited row that comes back counts as new).
    assert inc.summary["new_records"] == 172
    assert inc.summary["removed_records"] == 14
    assert inc.summary["changed_records"] == 18  # 19 edits, one of a missing name (still missing)
    assert inc.summary["scored_pairs"] < full.summary["scored_pairs"]
    assert inc.summary["reclustered_records"] < inc.summary["records"]
    assert_same_graph(inc, full, store, other)


def test_a_store_changed_after_loading_read_it_is_read_again(demo, tmp_path: Path, monkeypatch) -> None:
    """Loading reads the store before the run takes it; a run committed in between must not
    leave the later run reusing what it read then."""
    from idweave.linkage import _incremental as inc
    from idweave.linkage import pipeline
    from idweave.linkage.graph import Store

    project, template = demo
    frames = raw_frames(project)
    store = copy_store(template, tmp_path / "inc.duckdb")
    stale = pipeline._stored_index(store)  # read now, before another run changes the store
    between = link(project, sources=batch_one(frames), store=store)
    assert between.summary["removed_records"] > 0
    with Store.open(store) as st:
        assert not stale.current(st)
        loaded = pipeline.load_records(pipeline.resolve_project(project, sources=frames), stored=stale.by_source)
        with pytest.raises(inc.StaleReuse):
            inc.compare(st, pipeline.resolve_project(project), loaded, stale)
    monkeypatch.setattr(pipeline, "_stored_index", lambda path: stale)  # as if read before `between`
    other = copy_store(store, tmp_path / "full.duckdb")
    again = link(project, sources=frames, store=store)
    assert again.summary["mode"] == "incremental"
    assert again.summary["new_records"] == between.summary["removed_records"]  # what the batch left out
    full = link(project, sources=frames, store=other, full=True)
    assert partition(again.entities) == partition(full.entities)


@pytest.mark.parametrize("method", ["components", "average"])
def test_blocks_crossing_their_cap_are_rebuilt(demo, tmp_path: Path, method: str) -> None:
    """With tiny block caps, new records push blocks of unchanged records over the cap (and
    removed ones bring them back under): those pairs vanish or appear as in a full run (with
    average linkage, the replay re-decides around the links of flipped blocks that changed)."""
    project = project_copy("demo", tmp_path / "capped", clustering={"method": method}, blocking=[
        ["ssn"],
        {"keys": ["first_name:metaphone", "last_name:metaphone"], "max_block": 3},
        {"keys": ["birth_date"], "max_block": 2},
        ["last_name:prefix3", "birth_date:year"],
    ])
    frames = raw_frames(project)
    store = copy_store(demo[1], tmp_path / "capped.duckdb")
    first = link(project, sources=batch_one(frames), store=store)
    assert first.summary["mode"] == "full"  # other rules than the template's store: recompute
    assert first.summary["retrained"] is False
    inc, full, other = run_both(project, store, tmp_path, batch_two(frames))
    assert inc.summary["mode"] == "incremental"
    assert inc.summary["flipped_block_records"] > 0
    assert_same_graph(inc, full, store, other)


def test_append_sources_keep_records_the_file_no_longer_holds(demo, tmp_path: Path) -> None:
    project = project_copy("demo", tmp_path / "append", sources={"benefits": {"mode": "append"}})
    frames = raw_frames(project)
    store = copy_store(demo[1], tmp_path / "append.duckdb")
    before = read_table(store, "records").select("source", "record_id", "last_seen_run")
    smaller = batch_one(frames)
    inc, full, other = run_both(project, store, tmp_path, smaller)
    after = read_table(store, "records")
    # Every benefits record is still there; census and tax lost the rows their files dropped.
    counts = dict(after.group_by("source").len().iter_rows())
    assert counts == {"benefits": 264, "census": smaller["census"].height, "tax": smaller["tax"].height}
    assert inc.summary["removed_records"] == (331 - smaller["census"].height) + (279 - smaller["tax"].height)
    # Kept records were not seen this run; the others were.
    ids = set(smaller["benefits"]["claim_id"].to_list())
    kept = after.filter((pl.col("source") == "benefits") & ~pl.col("record_id").is_in(list(ids)))
    assert kept.height == 264 - len(ids)
    assert set(kept["last_seen_run"].to_list()) == set(before["last_seen_run"].to_list()) == {1}
    seen = after.filter(~pl.col("record_id").is_in(kept["record_id"].to_list()))
    assert set(seen["last_seen_run"].to_list()) == {inc.run_id}
    removed = read_table(store, "events").filter(pl.col("type") == "record_removed")
    assert set(removed["source"].to_list()) == {"census", "tax"}
    assert_same_graph(inc, full, store, other)


def test_a_new_threshold_reclusters_everything_but_rescores_no_blocked_pair(demo, tmp_path: Path) -> None:
    project = demo[0]
    store = copy_store(demo[1], tmp_path / "t.duckdb")
    blocked = read_table(store, "links").filter(pl.col("rule") != "cluster completion")
    r = link(project, store=store, threshold=0.99)
    assert r.summary["mode"] == "incremental"
    assert r.summary["rescored_records"] == 0
    assert read_table(store, "links").filter(pl.col("rule") != "cluster completion").equals(blocked)
    assert r.summary["reclustered_records"] == r.summary["records"] == 874


def test_new_rules_make_a_full_run(demo, tmp_path: Path) -> None:
    project = project_copy("demo", tmp_path / "rules", blocking=[["ssn"], ["last_name", "birth_date"]])
    store = copy_store(demo[1], tmp_path / "r.duckdb")
    r = link(project, store=store)
    assert (r.summary["mode"], r.summary["mode_reason"]) == (
        "full", "rules, model, clustering or code changed since the last run")
    again = link(project, store=store)  # the same files: nothing runs (tests/test_unchanged.py)
    assert again.summary["mode"] == "unchanged" and again.summary["events"] == 0
    again = link(project, sources=raw_frames(project), store=store)  # frames have no file to check
    assert again.summary["mode"] == "incremental" and again.summary["events"] == 0


def test_full_flag_recomputes_everything_and_changes_nothing(demo, tmp_path: Path) -> None:
    store = copy_store(demo[1], tmp_path / "f.duckdb")
    before = read_table(store, "links")
    r = link(demo[0], store=store, full=True)
    assert (r.summary["mode"], r.summary["mode_reason"]) == ("full", "asked for (--full)")
    assert r.summary["scored_pairs"] >= r.summary["candidate_pairs"] and r.summary["events"] == 0
    assert read_table(store, "links").equals(before)


# ------------------------------------------------------------------ property test
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, pl.DataFrame]]:
    project, store, _ = linked_copy("tiny", tmp_path_factory.mktemp("prop") / "tiny")  # every example reuses its model
    return project, store, raw_frames(project)


ID_COLUMN = {"census": "person_no", "tax": "tin_row", "benefits": "claim_id"}


@pytest.fixture(scope="module")
def tiny_capped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, pl.DataFrame]]:
    """tiny with rules whose small block caps flip as records come and go (average linkage)."""
    from identity_helpers import store_of

    project = project_copy("tiny", tmp_path_factory.mktemp("prop_capped") / "tiny", blocking=[
        ["ssn"],
        {"keys": ["first_name:metaphone", "last_name:metaphone"], "max_block": 3},
        {"keys": ["birth_date"], "max_block": 2},
        ["last_name:prefix3", "birth_date:year"],
    ])
    link(project)
    return project, store_of(project), raw_frames(project)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_sequence_of_batches_ends_where_a_full_run_does(tiny, tmp_path_factory, data) -> None:
    """Records arrive in random batches (each run sees what arrived so far, some of it
    edited, some withdrawn): the graph after the last incremental run equals a full run's."""
    batches_end_where_a_full_run_does(tiny, tmp_path_factory.mktemp("example"), data)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batches_that_flip_capped_blocks_end_where_a_full_run_does(tiny_capped, tmp_path_factory, data) -> None:
    """The same with blocks crossing their caps as batches arrive and leave (their pairs
    appear and vanish; the replay re-decides around the links that changed)."""
    batches_end_where_a_full_run_does(tiny_capped, tmp_path_factory.mktemp("capped"), data)


def batches_end_where_a_full_run_does(fixture, tmp: Path, data) -> None:
    project, template, frames = fixture
    store = copy_store(template, tmp / "inc.duckdb")
    n_batches = data.draw(st.integers(2, 4), label="batches")
    arrival = {n: data.draw(st.lists(st.integers(0, n_batches - 1), min_size=df.height, max_size=df.height),
                            label=f"arrival {n}") for n, df in frames.items()}
    edited = {n: set(data.draw(st.sets(st.integers(0, df.height - 1), max_size=3), label=f"edited {n}"))
              for n, df in frames.items()}
    withdrawn = {n: set(data.draw(st.sets(st.integers(0, df.height - 1), max_size=2), label=f"withdrawn {n}"))
                 for n, df in frames.items()}
    for b in range(n_batches):
        last = b == n_batches - 1
        batch = {}
        for n, df in frames.items():
            keep = [i for i in range(df.height) if arrival[n][i] <= b and not (last and i in withdrawn[n])]
            if not keep:
                keep = [0]
            part = df.with_row_index("_i")
            if last:
                col = NAME_COLUMN[n]
                part = part.with_columns(pl.when(pl.col("_i").is_in(list(edited[n])))
                                         .then(pl.col(col) + "e").otherwise(pl.col(col)).alias(col))
            batch[n] = part.filter(pl.col("_i").is_in(keep)).drop("_i")
        before_last = copy_store(store, tmp / "full.duckdb") if last else None
        inc = link(project, sources=batch, store=store)
        assert entity_sizes_hold(store, inc.summary)
    full = link(project, sources=batch, store=before_last, full=True)
    assert entity_sizes_hold(before_last, full.summary)
    assert partition(inc.entities) == partition(full.entities)
    assert read_table(store, "links").equals(read_table(before_last, "links"))
    assert inc.summary["events"] == full.summary["events"]
    # The components the incremental runs kept up to date are those the full run computes.
    assert stored_components(store) == stored_components(before_last)


def stored_components(store: Path) -> set[frozenset[int]]:
    """The store's ``components`` table as a set of record (rk) sets."""
    rows = read_table(store, "components")
    return {frozenset(g["rk"].to_list()) for _, g in rows.group_by("component")}


def test_a_store_without_components_grows_the_closure_and_equals_a_full_run(demo, tmp_path: Path) -> None:
    """A store whose last run kept no components (an older store): the run finds what to
    re-cluster by the closure over the strong links, ends where a full run does and writes no
    partial components table; the next full run writes it whole."""
    import duckdb

    project, template = demo
    frames = raw_frames(project)
    store = copy_store(template, tmp_path / "inc.duckdb")
    con = duckdb.connect(str(store))
    con.execute("drop table components")
    con.close()
    inc, full, other = run_both(project, store, tmp_path, batch_two(frames))
    assert inc.summary["mode"] == "incremental" and inc.summary["reclustered_records"] < inc.summary["records"]
    assert_same_graph(inc, full, store, other)
    with duckdb.connect(str(store), read_only=True) as con:
        assert not con.execute("select count(*) from information_schema.tables "
                               "where table_name = 'components'").fetchone()[0]
    again = link(project, sources=batch_two(frames), store=store, full=True)
    assert again.summary["events"] == 0
    assert stored_components(store) == stored_components(other)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=400),
       st.integers(min_value=0, max_value=10_000), st.booleans())
def test_closure_is_the_union_of_the_seeds_components(n, m, seed, chain) -> None:
    """The closure grown step by step (and finished by components past a long chain) is
    exactly the components that hold a seed."""
    import random

    from idweave.linkage.cluster import closure
    from idweave.linkage.cluster import components

    rnd = random.Random(seed)
    rids = rnd.sample(range(3 * n + 5), n)  # sparse, unordered rids
    pairs = [(rnd.choice(rids), rnd.choice(rids)) for _ in range(m)]
    if chain:  # a path longer than the stepwise growth goes
        pairs += list(zip(rids, rids[1:]))
    edges = pl.DataFrame(pairs or None, schema={"rid_l": pl.Int64, "rid_r": pl.Int64}, orient="row")
    seeds = pl.Series([rnd.choice(rids) for _ in range(rnd.randint(0, 3))] + [10 ** 9], dtype=pl.Int64)
    cc = components(edges, rids)
    hit = set(cc.filter(pl.col("rid").is_in(seeds.implode()))["cluster"])
    want = sorted(cc.filter(pl.col("cluster").is_in(list(hit)))["rid"])
    assert closure(seeds, edges, pl.Series(rids)).to_list() == want
