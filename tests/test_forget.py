"""forget: erase a record from every table, re-resolve its entity, keep it out of later runs.

The bridge project is fixtures/tiny with three added benefits records and plain connected
components: BEN-X shares name, birth date and postcode with BEN-A, and name, ssn and e-mail
with BEN-B, while A and B hardly match; X holds A and B in one entity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import copy_fixture, run_cli, snapshot, table_rows
from idweave.linkage import link, review
from idweave.linkage._db import query_pl
from idweave.linkage.errors import IdweaveError, SourceError
from idweave.linkage.forget import forget
from idweave.linkage.graph import Store

A = {"claim_id": "BEN-A", "full_name": "Zebulon Quarterfield", "birth_date": "01/01/1911", "postcode": "ZZ1 1AA",
     "phone": "07000 000011", "email": "zeb.q@example.org", "ssn": "900111222", "true_person": "PA"}
X = {"claim_id": "BEN-X", "full_name": "Zebulon Quarterfield", "birth_date": "01/01/1911", "postcode": "ZZ1 1AA",
     "phone": "07000 000099", "email": "yol.p@example.org", "ssn": "900333444", "true_person": "PX"}
B = {"claim_id": "BEN-B", "full_name": "Zebulon Quarterfield", "birth_date": "05/05/1955", "postcode": "YY2 2BB",
     "phone": "07000 000022", "email": "yol.p@example.org", "ssn": "900333444", "true_person": "PB"}
# X's cleaned values, as the store holds them.
X_CLEAN = {"first_name": "zebulon", "last_name": "quarterfield", "full_name": "zebulon quarterfield",
           "birth_date": "1911-01-01", "postcode": "ZZ11AA", "phone": "7000000099", "email": "yol.p@example.org",
           "ssn": "900333444"}


def bridge_project(folder: Path) -> Path:
    project = copy_fixture("tiny", folder)
    with (folder / "benefits.ndjson").open("a") as f:
        for rec in (A, X, B):
            f.write(json.dumps(rec) + "\n")
    project.write_text(project.read_text() + "clustering: {method: components}\n")
    return project


@pytest.fixture(scope="module")
def linked_bridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bridge") / "tiny"
    project = bridge_project(folder)
    link(project)
    return folder


@pytest.fixture
def bridge(linked_bridge: Path, tmp_path: Path) -> Path:
    shutil.copytree(linked_bridge, tmp_path / "tiny")
    return tmp_path / "tiny" / "project.yaml"


def store_of(project: Path) -> Path:
    return project.parent / "out" / "tiny.duckdb"


def entity_of(project: Path) -> dict[str, str]:
    with duckdb.connect(str(store_of(project)), read_only=True) as con:
        return dict(con.execute("select record_id, entity_id from records where source = 'benefits' "
                                "and record_id like 'BEN-_'").fetchall())


def dump(store: Path) -> dict[str, list]:
    """Every row of every table, sorted: what a failed command must leave as it was."""
    with duckdb.connect(str(store), read_only=True) as con:
        tables = [t for (t,) in con.execute("select table_name from information_schema.tables").fetchall()]
        return {t: sorted(map(repr, con.execute(f'select * from "{t}"').fetchall())) for t in tables}


def occurrences(store: Path, value: str) -> list[tuple[str, str, tuple]]:
    """(table, column, row) of every cell of every table whose text contains ``value``."""
    found = []
    with duckdb.connect(str(store), read_only=True) as con:
        tables = [t for (t,) in con.execute("select table_name from information_schema.tables").fetchall()]
        for t in tables:
            cols = [c for (c,) in con.execute("select column_name from information_schema.columns "
                                              "where table_name = ?", [t]).fetchall()]
            for c in cols:
                rows = con.execute(f'select * from "{t}" where contains(cast("{c}" as varchar), ?)', [value]).fetchall()
                found += [(t, c, r) for r in rows]
    return found


def test_the_fixture_is_a_bridge(linked_bridge: Path) -> None:
    ents = entity_of(linked_bridge / "project.yaml")
    assert ents["BEN-A"] == ents["BEN-X"] == ents["BEN-B"]
    with duckdb.connect(str(store_of(linked_bridge / "project.yaml")), read_only=True) as con:
        p = con.execute("select match_probability from links where record_id_l = 'BEN-A' "
                        "and record_id_r = 'BEN-B'").fetchone()
    assert p is None or p[0] < 0.5


def test_forget_splits_the_bridged_entity(bridge: Path) -> None:
    before = entity_of(bridge)["BEN-X"]
    res = forget(bridge, "benefits", "BEN-X", reason="subject's request", author="dpo")
    after = entity_of(bridge)
    assert "BEN-X" not in after
    assert after["BEN-A"] != after["BEN-B"]
    assert before in (after["BEN-A"], after["BEN-B"])  # one part keeps the id
    assert res.entity_id == before and sorted(res.entities) == sorted({after["BEN-A"], after["BEN-B"]})
    with duckdb.connect(str(store_of(bridge)), read_only=True) as con:
        dec = con.execute("select decision_id, author, action, reason from decisions").fetchall()
        assert dec == [(res.decision_id, "dpo", "erase", "subject's request")]
        ev = con.execute("select type, entity_id, source, record_id, detail from events "
                         "where decision_id = ? order by event_id", [res.decision_id]).fetchall()
        er = con.execute("select source, record_id, reason, author, decision_id, length(id_sha256) "
                         "from erasures").fetchall()
        sizes = dict(con.execute("select entity_id, size from entities where status = 'active'").fetchall())
    types = [e[0] for e in ev]
    assert "entity_split" in types and "entity_created" in types and types.count("record_erased") == 1
    assert ("record_erased", before, "benefits", "BEN-X", "subject's request") in ev
    assert er == [("benefits", "BEN-X", "subject's request", "dpo", res.decision_id, 64)]
    counts = pl.DataFrame({"e": list(entity_of(bridge).values())}).group_by("e").len()
    with duckdb.connect(str(store_of(bridge)), read_only=True) as con:
        held = dict(con.execute("select entity_id, count(*) from records group by 1").fetchall())
    assert all(sizes[e] == n for e, n in held.items()) and counts.height >= 2


def test_no_table_holds_any_value_of_the_erased_record(bridge: Path) -> None:
    forget(bridge, "benefits", "BEN-X", reason="erasure request")
    store = store_of(bridge)
    with duckdb.connect(str(store), read_only=True) as con:
        remaining = query_pl(con, "select * from records")
    for attr, value in X_CLEAN.items():
        held_by_others = remaining.filter(pl.col(attr) == value).height > 0
        hits = occurrences(store, value)
        if not held_by_others:
            assert hits == [], (attr, hits)  # a value only X held is nowhere
        else:
            # A value others hold too stays in their rows (and their term frequencies) only.
            assert {t for t, _, _ in hits} <= {"records", "model_tf"}, (attr, hits)
            assert all(r[1] != "BEN-X" for t, _, r in hits if t == "records")
    assert occurrences(store, "BEN-X") == [] or {t for t, _, _ in occurrences(store, "BEN-X")} <= {
        "events", "erasures", "decisions"}
    # the ids it leaves are the record id (events, the erasure, the erase decision), never a value
    model = json.loads((bridge.parent / "out" / "tiny.model.json").read_text())
    text = json.dumps(model)
    for value in X_CLEAN.values():
        assert value not in text
    assert "tf" not in {k.split("_")[0] for k in model}  # m and u only: no value tables in the JSON


def test_a_value_only_the_record_held_leaves_the_tf_table(bridge: Path) -> None:
    store = store_of(bridge)
    with duckdb.connect(str(store), read_only=True) as con:
        before = con.execute("select count(*) from model_tf where value = 'ZZ11AA'").fetchone()[0]
    forget(bridge, "benefits", "BEN-A", reason="erasure request")   # X still holds ZZ11AA
    with duckdb.connect(str(store), read_only=True) as con:
        assert con.execute("select count(*) from model_tf where value = 'ZZ11AA'").fetchone()[0] == before
    forget(bridge, "benefits", "BEN-X", reason="erasure request")   # now nobody does
    assert [h for h in occurrences(store, "ZZ11AA")] == []


def test_a_later_run_refuses_the_erased_record(bridge: Path) -> None:
    forget(bridge, "benefits", "BEN-X", reason="erasure request")
    before = snapshot(bridge.parent / "out")
    with pytest.raises(SourceError, match=r"record benefits:BEN-X was erased"):
        link(bridge)
    res = run_cli("link", bridge)
    assert res.code == 2
    assert "benefits.ndjson: record benefits:BEN-X was erased (idweave forget) but is in the source again" in res.error
    assert "erasure: suppress" in res.error
    for value in X_CLEAN.values():
        assert value not in res.err and value not in res.out
    assert snapshot(bridge.parent / "out") == before


def test_suppress_skips_and_counts_and_changes_nothing(bridge: Path) -> None:
    forget(bridge, "benefits", "BEN-X", reason="erasure request")
    bridge.write_text(bridge.read_text() + "erasure: suppress\n")
    after_forget = entity_of(bridge)
    r = link(bridge)
    assert r.summary["erased_skipped"] == 1 and r.summary["events"] == 0
    assert r.summary["records_per_source"]["benefits"] == r.entities.filter(pl.col("source") == "benefits").height
    assert entity_of(bridge) == after_forget
    shown = run_cli("link", bridge)
    assert shown.code == 0 and ["erased records skipped", "1"] in table_rows(shown.out)
    full = link(bridge, full=True)
    assert full.summary["events"] == 0 and entity_of(bridge) == after_forget
    assert ("benefits", "BEN-X") not in set(full.entities.select("source", "record_id").iter_rows())


def test_incremental_after_forget_equals_a_full_run(bridge: Path, tmp_path: Path) -> None:
    """The records that had a link to the erased one are decided again by the next
    incremental run (not replayed from a trace the erased record was part of)."""
    forget(bridge, "benefits", "BEN-X", reason="erasure request")
    bridge.write_text(bridge.read_text() + "erasure: suppress\n")
    new = dict(A, claim_id="BEN-N", phone="07000 000022", email="yol.p@example.org", ssn="900333444")
    with (bridge.parent / "benefits.ndjson").open("a") as f:
        f.write(json.dumps(new) + "\n")
    other = tmp_path / "copy"
    shutil.copytree(bridge.parent, other)
    inc = link(bridge)
    full = link(other / "project.yaml", full=True)
    assert inc.summary["mode"] == "incremental"

    def parts(entities: pl.DataFrame) -> set[frozenset]:
        g = entities.group_by("entity_id").agg(pl.concat_str(["source", "record_id"], separator=":").alias("r"))
        return {frozenset(x) for x in g["r"].to_list()}

    assert parts(inc.entities) == parts(full.entities)
    with Store.open(store_of(bridge), read_only=True) as st:
        assert st.con.execute("select count(*) from erasure_pending").fetchone()[0] == 0


def test_a_failed_forget_leaves_the_store_as_it_was(bridge: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = dump(store_of(bridge))

    def broken(self, events, **kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "append_events", broken)
    with pytest.raises(RuntimeError):
        forget(bridge, "benefits", "BEN-X", reason="erasure request")
    monkeypatch.undo()
    assert dump(store_of(bridge)) == before


def test_forget_cli_and_its_errors(bridge: Path) -> None:
    res = run_cli("forget", bridge, "benefits:BEN-X", "--reason", "asked", "--author", "dpo")
    assert res.code == 0, res.err
    assert res.out.startswith("erased benefits:BEN-X (decision #1):")
    assert "entities now:" in res.out
    again = run_cli("forget", bridge, "benefits:BEN-X", "--reason", "asked")
    assert again.code == 2 and again.error == "Error: record benefits:BEN-X was erased already"
    missing = run_cli("forget", bridge, "benefits:NOPE", "--reason", "asked")
    assert missing.code == 2 and missing.error == "Error: no record benefits:NOPE in the store"
    no_reason = run_cli("forget", bridge, "benefits:BEN-A", "--reason", " ")
    assert no_reason.code == 2 and "needs a reason" in no_reason.error
    with pytest.raises(IdweaveError, match="erasure .* cannot be undone"):
        review.undo(bridge, 1, reason="oops")
    sa = run_cli("subject-access", bridge, "benefits:BEN-X")
    assert sa.code == 2 and "was erased" in sa.error
    listed = review.decisions(bridge)
    assert listed["action"].to_list() == ["erase"] and listed["author"].to_list() == ["dpo"]


def test_forget_a_lone_record_retires_its_entity(linked_bridge: Path, tmp_path: Path) -> None:
    shutil.copytree(linked_bridge, tmp_path / "t")
    project = tmp_path / "t" / "project.yaml"
    with duckdb.connect(str(project.parent / "out" / "tiny.duckdb"), read_only=True) as con:
        eid, rid = con.execute("select entity_id, any_value(record_id) from records group by entity_id "
                               "having count(*) = 1 order by entity_id limit 1").fetchone()
        src = con.execute("select source from records where record_id = ?", [rid]).fetchone()[0]
    res = forget(project, src, rid, reason="erasure request")
    assert res.entities == []
    with duckdb.connect(str(project.parent / "out" / "tiny.duckdb"), read_only=True) as con:
        assert con.execute("select status, size from entities where entity_id = ?", [eid]).fetchone() == ("retired", 0)


def test_a_killed_forget_leaves_the_store_whole_or_erased(linked_bridge: Path, tmp_path: Path) -> None:
    """``idweave forget`` killed with SIGKILL at times spread over its run (a real process,
    no test hook): the store is exactly as before, or holds the whole erasure."""
    import os
    import signal
    import subprocess
    import sys
    import time

    for i, delay in enumerate((0.3, 0.8, 1.2, 1.6, 2.0, 2.6)):
        folder = tmp_path / f"k{i}"
        shutil.copytree(linked_bridge, folder)
        project = folder / "project.yaml"
        before = dump(store_of(project))
        proc = subprocess.Popen([sys.executable, "-c", "from idweave.cli.app import main; main()", "forget",
                                 str(project), "benefits:BEN-X", "--reason", "asked"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = dump(store_of(project))
        if after == before:
            forget(project, "benefits", "BEN-X", reason="asked")  # and it can be done again
        assert "BEN-X" not in entity_of(project)
        with duckdb.connect(str(store_of(project)), read_only=True) as con:
            assert con.execute("select count(*) from erasures").fetchone()[0] == 1
            assert con.execute("select count(*) from links where record_id_l = 'BEN-X' "
                               "or record_id_r = 'BEN-X'").fetchone()[0] == 0
            assert con.execute("select count(*) from decisions where action = 'erase'").fetchone()[0] == 1
    # Which of the two each kill gives depends on the machine's speed: both are whole.
