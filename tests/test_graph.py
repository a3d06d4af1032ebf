"""The identity store: its schema (every table and column documented), persistent ids
(minted once, inherited by largest overlap, oldest survives a merge, largest part keeps the
id on a split, every change an event), and stable ids across runs."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import ROOT
from identity_helpers import copy_store, dump, linked_copy, raw_frames, read_table
from idweave.linkage import link
from idweave.linkage.graph import SCHEMA_VERSION, Store, assign_ids


def minted(prefix: str = "N"):
    n = iter(range(1, 1000))
    return lambda: f"{prefix}{next(n)}"


AGES = {"EA": (1, "EA"), "EB": (2, "EB"), "EC": (3, "EC")}


# ------------------------------------------------------------------ assign_ids
def test_unchanged_clusters_keep_their_ids_and_make_no_event() -> None:
    a = assign_ids({("s", "1"): 0, ("s", "2"): 0, ("s", "3"): 2}, {("s", "1"): "EA", ("s", "2"): "EA", ("s", "3"): "EB"},
                   AGES, mint=minted())
    assert a.entity_of == {("s", "1"): "EA", ("s", "2"): "EA", ("s", "3"): "EB"}
    assert (a.events, a.created, a.merged, a.touched) == ([], [], [], set())


def test_a_merge_keeps_the_oldest_id_and_the_other_points_to_it() -> None:
    a = assign_ids({("s", "1"): 0, ("s", "2"): 0, ("s", "3"): 0},
                   {("s", "1"): "EB", ("s", "2"): "EA", ("s", "3"): "EB"}, AGES, mint=minted())
    assert set(a.entity_of.values()) == {"EA"}
    assert a.merged == [("EB", "EA")]
    assert a.events == [
        {"type": "entities_merged", "entity_id": "EA", "other_entity_id": "EB"},
        {"type": "record_moved", "entity_id": "EA", "other_entity_id": "EB", "source": "s", "record_id": "1"},
        {"type": "record_moved", "entity_id": "EA", "other_entity_id": "EB", "source": "s", "record_id": "3"},
    ]


def test_of_equally_old_ids_the_one_bringing_most_records_survives_a_merge() -> None:
    same_run = {"EZ": (4, "EZ"), "EY": (4, "EY")}
    a = assign_ids({("s", "1"): 0, ("s", "2"): 0, ("s", "3"): 0},
                   {("s", "1"): "EY", ("s", "2"): "EZ", ("s", "3"): "EZ"}, same_run, mint=minted())
    assert a.merged == [("EY", "EZ")]  # EZ is not the smaller id, but it brings two records
    assert [e["record_id"] for e in a.events if e["type"] == "record_moved"] == ["1"]


def test_a_split_keeps_the_id_on_the_largest_part() -> None:
    old = {("s", str(i)): "EA" for i in range(1, 6)}
    a = assign_ids({("s", "1"): 0, ("s", "2"): 0, ("s", "3"): 2, ("s", "4"): 2, ("s", "5"): 2}, old, AGES,
                   mint=minted())
    assert a.entity_of == {("s", "1"): "N1", ("s", "2"): "N1", ("s", "3"): "EA", ("s", "4"): "EA", ("s", "5"): "EA"}
    assert a.created == [("N1", "EA")]
    assert a.events[:2] == [{"type": "entity_created", "entity_id": "N1", "other_entity_id": "EA", "detail": "split"},
                            {"type": "entity_split", "entity_id": "EA", "other_entity_id": "N1"}]
    assert [e["type"] for e in a.events[2:]] == ["record_moved", "record_moved"]


def test_new_records_join_or_make_entities() -> None:
    a = assign_ids({("s", "1"): 0, ("s", "9"): 0, ("t", "1"): 5}, {("s", "1"): "EA"}, AGES, mint=minted())
    assert a.entity_of == {("s", "1"): "EA", ("s", "9"): "EA", ("t", "1"): "N1"}
    assert a.events == [
        {"type": "record_added", "entity_id": "EA", "source": "s", "record_id": "9"},
        {"type": "entity_created", "entity_id": "N1", "other_entity_id": None, "detail": None},
        {"type": "record_added", "entity_id": "N1", "source": "t", "record_id": "1"},
    ]


def test_ids_are_opaque() -> None:
    from idweave.linkage.graph import new_entity_id

    ids = {new_entity_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(re.fullmatch(r"E[0-9A-F]{12}", i) for i in ids)


# ------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    project, store, _ = linked_copy("demo", tmp_path_factory.mktemp("graph") / "demo")
    return project, store


def test_the_same_input_again_changes_nothing(demo, tmp_path: Path) -> None:
    project, template = demo
    store = copy_store(template, tmp_path / "s.duckdb")
    before = dump(store)
    for full in (False, True):
        r = link(project, store=store, full=full)
        assert r.summary["events"] == 0
    after = dump(store)
    # Only the runs table grew, and records' last_seen_run moved on; nothing else changed.
    assert after["runs"]["n_events"].to_list() == [before["runs"]["n_events"][0], 0, 0]
    assert after["records"].drop("last_seen_run").equals(before["records"].drop("last_seen_run"))
    assert set(after["records"]["last_seen_run"]) == {3}
    for t in ("entities", "events", "links", "models", "model_tf", "decisions"):
        assert after[t].equals(before[t]), t


def test_entities_whose_records_did_not_change_keep_their_ids(demo, tmp_path: Path) -> None:
    """Start from half the records, then let the rest arrive: no entity whose records are all
    unchanged is renamed, whatever joins or leaves the others."""
    project, template = demo
    frames = raw_frames(project)
    store = copy_store(template, tmp_path / "s.duckdb")
    half = {n: df.with_row_index("_i").filter(pl.col("_i") % 2 == 0).drop("_i") for n, df in frames.items()}
    r1 = link(project, sources=half, store=store)
    r2 = link(project, sources=frames, store=store)
    assert r2.summary["mode"] == "incremental"
    before = {g: e for e, g in _groups(r1.entities).items()}
    after = {g: e for e, g in _groups(r2.entities).items()}
    same = set(before) & set(after)
    assert len(same) > 100
    assert [g for g in same if before[g] != after[g]] == []
    # An entity that only gained new records keeps its id too (the largest part is all of it).
    old_records = set(r1.entities.select("source", "record_id").iter_rows())
    grown = [(g0, g1) for g0 in before for g1 in after if g0 < g1 and not (g1 - g0) & old_records]
    assert grown and all(after[g1] == before[g0] for g0, g1 in grown)
    # Every change is an event: one per record added (with a new or an old entity).
    ev = read_table(store, "events").filter(pl.col("run_id") == r2.run_id)
    assert ev.filter(pl.col("type") == "record_added").height == r2.summary["new_records"]
    assert r2.summary["events"] == ev.height


def _groups(entities: pl.DataFrame) -> dict[str, frozenset]:
    out: dict[str, set] = {}
    for s, r, e in entities.iter_rows():
        out.setdefault(e, set()).add((s, r))
    return {e: frozenset(g) for e, g in out.items()}


def test_merged_ids_resolve_to_their_survivor(demo, tmp_path: Path) -> None:
    project, template = demo
    frames = raw_frames(project)
    store = copy_store(template, tmp_path / "s.duckdb")
    # Without the benefits claims, people held apart by missing evidence split in two;
    # when the claims come back, those pairs merge again.
    link(project, sources={**frames, "benefits": frames["benefits"].head(1)}, store=store)
    r = link(project, sources=frames, store=store)
    ent = read_table(store, "entities")
    merged = ent.filter(pl.col("status") == "merged")
    assert merged.height > 0
    with Store.open(store, read_only=True) as st:
        for loser, survivor in merged.select("entity_id", "merged_into").iter_rows():
            final = st.resolve(loser)
            assert final in set(r.entities["entity_id"])
            assert ent.filter(pl.col("entity_id") == final)["status"][0] == "active"
            assert loser in st.lineage(final) and st.lineage(final)[0] == final
            # The survivor is the oldest of the ids it absorbed.
            created = dict(ent.select("entity_id", "created_run").iter_rows())
            assert created[survivor] <= created[loser]
        assert st.resolve("ENOSUCHENTITY") is None


def test_runs_record_what_they_did(demo, tmp_path: Path) -> None:
    project, template = demo
    store = copy_store(template, tmp_path / "s.duckdb")
    r = link(project, store=store)
    runs = read_table(store, "runs").sort("run_id")
    last = runs.row(-1, named=True)
    assert (last["run_id"], last["mode"], last["n_records"], last["n_new"], last["n_events"]) == (2, "incremental",
                                                                                               874, 0, 0)
    assert last["model_version"] == r.summary["model_version"] == runs["model_version"][0]
    assert last["n_pairs"] == r.summary["candidate_pairs"] + read_table(store, "links").filter(
        pl.col("rule") == "cluster completion").height
    assert last["started_at"] <= last["finished_at"] and len(last["signature"]) == 16


# ------------------------------------------------------------------ schema
_README = (ROOT / "README.md").read_text()
DOC = _README[_README.index("## Identity store\n"):_README.index("## Reviewing\n")]


def documented_columns() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^### `(\w+)`\n(.*?)(?=^### |\Z)", DOC, flags=re.M | re.S):
        out[m.group(1)] = set(re.findall(r"^\| `(\w+)` \|", m.group(2), flags=re.M))
    return out


def test_every_table_and_column_is_documented(demo) -> None:
    docs = documented_columns()
    with Store.open(demo[1], read_only=True) as st:
        rows = st.con.execute("select table_name, column_name from information_schema.columns").fetchall()
    attrs = {"first_name", "last_name", "full_name", "birth_date", "sex", "postcode", "ssn", "phone", "email"}
    missing = []
    for table, column in rows:
        if table == "links" and re.fullmatch(r"(level|w)_\w+", column):
            column = {"level": "level_<attribute>", "w": "w_<attribute>"}[column.split("_")[0]]
        if table == "records" and column in attrs:
            column = "<attribute>"
        if column.strip("<>") not in {c.strip("<>") for c in docs.get(table, set())} \
                and f"`{column}`" not in DOC:
            missing.append(f"{table}.{column}")
    assert missing == []
    assert set(docs) >= {"records", "links", "entities", "runs", "events", "decisions", "models", "model_tf", "meta"}


def test_an_older_store_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    Store.open(path).close()
    con = duckdb.connect(str(path))
    con.execute("alter table runs drop column signature")
    con.close()
    with Store.open(path) as st:
        cols = [r[0] for r in st.con.execute(
            "select column_name from information_schema.columns where table_name = 'runs'").fetchall()]
    assert cols[-1] == "signature"
    with Store.open(path, read_only=True) as st:
        assert st.con.execute("select value from meta").fetchall() == [(str(SCHEMA_VERSION),)]
