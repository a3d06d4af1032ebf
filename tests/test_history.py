"""History and diff: an entity's events (an old, merged id followed to its survivor), and
what one run changed."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import run_cli
from identity_helpers import project_copy, raw_frames, read_table
from idweave.linkage import link
from idweave.linkage.errors import IdweaveError
from idweave.linkage.history import EVENT_TYPES, diff, history, resolve_entity


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """Run 1 without the benefits claims (but one), run 2 with all: entities merge."""
    folder = tmp_path_factory.mktemp("history") / "demo"
    project = project_copy("demo", folder)
    frames = raw_frames(project)
    r1 = link(project, sources={**frames, "benefits": frames["benefits"].head(1)})
    r2 = link(project, sources=frames)
    store = folder / "out" / "demo.duckdb"
    merged = read_table(store, "entities").filter(pl.col("status") == "merged")
    assert merged.height > 0
    return project, store, r1, r2, merged


def test_diff_lists_the_events_of_a_run(demo) -> None:
    project, store, r1, r2, _ = demo
    d1, d2 = diff(project, 1), diff(project, 2)
    assert d1.columns == ["change", "entity_id", "other_entity_id", "source", "record_id", "detail"]
    assert (d1.height, d2.height) == (r1.summary["events"], r2.summary["events"])
    counts1 = dict(d1.group_by("change").len().iter_rows())
    assert counts1 == {"entity_created": r1.summary["entities"], "record_added": r1.summary["records"]}
    counts2 = dict(d2.group_by("change").len().iter_rows())
    assert counts2["record_added"] == r2.summary["new_records"] == 263
    assert counts2["entities_merged"] == read_table(store, "entities").filter(pl.col("status") == "merged").height
    assert set(counts2) <= set(EVENT_TYPES)
    # Every record event names a record; every entity event names no record.
    assert d2.filter(pl.col("change").str.starts_with("record_"))["record_id"].null_count() == 0
    assert d2.filter(~pl.col("change").str.starts_with("record_"))["record_id"].null_count() == \
        d2.filter(~pl.col("change").str.starts_with("record_")).height


def test_a_rerun_has_an_empty_diff(demo, tmp_path: Path) -> None:
    project = demo[0]
    r = link(project, sources=raw_frames(project), store=tmp_path / "s.duckdb")
    again = link(project, sources=raw_frames(project), store=tmp_path / "s.duckdb")
    assert diff(project, again.run_id, store=tmp_path / "s.duckdb").height == 0
    assert diff(project, r.run_id, store=tmp_path / "s.duckdb").height == r.summary["events"]


def test_a_merged_id_resolves_to_its_survivor_and_shows_its_history(demo) -> None:
    project, store, _, r2, merged = demo
    loser, survivor = merged.row(0)[0], merged.row(0)[2]
    res = resolve_entity(project, loser)
    assert (res.asked, res.entity_id, res.status, res.merged_run, res.redirected) == (loser, survivor, "active", 2, True)
    assert res.lineage[0] == survivor and loser in res.lineage
    h = history(project, loser)
    assert h.equals(history(project, survivor))
    assert h["event_id"].is_sorted()
    # Both ids' lives are in it: created in run 1, merged in run 2.
    created = h.filter(pl.col("type") == "entity_created")["entity_id"].to_list()
    assert loser in created and survivor in created
    m = h.filter(pl.col("type") == "entities_merged")
    assert (survivor, loser) in set(m.select("entity_id", "other_entity_id").iter_rows())
    assert set(m["run_id"]) == {2}
    # The survivor's records are those the history added or moved in, less those that left.
    members = set(r2.entities.filter(pl.col("entity_id") == survivor).select("source", "record_id").iter_rows())
    ins = h.filter(pl.col("type").is_in(["record_added", "record_moved"]) & (pl.col("entity_id") == survivor))
    assert members <= set(ins.select("source", "record_id").iter_rows())


def test_an_active_id_resolves_to_itself(demo) -> None:
    project, _, _, r2, _ = demo
    eid = r2.entities["entity_id"][0]
    res = resolve_entity(project, eid)
    assert (res.entity_id, res.redirected, res.merged_run) == (eid, False, None)


@pytest.mark.parametrize("call,message", [
    (lambda p: history(p, "ENOSUCH"), "no entity 'ENOSUCH' in the store"),
    (lambda p: diff(p, 0), "no run 0 in the store; runs are numbered 1 to 2"),
    (lambda p: diff(p, 3), "no run 3 in the store; runs are numbered 1 to 2"),
])
def test_unknown_ids_and_runs_are_refused(demo, call, message) -> None:
    with pytest.raises(IdweaveError, match=message):
        call(demo[0])


def test_the_history_and_diff_commands(demo) -> None:
    project, _, _, r2, merged = demo
    loser, survivor = merged.row(0)[0], merged.row(0)[2]
    h = run_cli("history", project, loser)
    assert h.code == 0, h.err
    assert h.out.startswith(f"{loser} was merged into {survivor} in run 2; showing the history of {survivor}")
    assert f"history of {survivor}" in h.out and "entities_merged" in h.out
    d = run_cli("diff", project, "--run", "2")
    assert d.code == 0, d.err
    assert "run 2: changes" in d.out and "record_added" in d.out and "263" in d.out
    js = run_cli("diff", project, "--run", "2", "--json")
    assert js.code == 0 and js.out.count('"change"') == r2.summary["events"]
    bad = run_cli("diff", project, "--run", "9")
    assert bad.code == 2 and bad.error.endswith("no run 9 in the store; runs are numbered 1 to 2")
    unknown = run_cli("history", project, "ENOSUCH")
    assert unknown.code == 2 and "no entity 'ENOSUCH' in the store" in unknown.error
