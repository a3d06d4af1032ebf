"""subject-access: every record, link, decision, event, run and model of one person's entity."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from conftest import Linked, copy_fixture, run_cli
from idweave.linkage import link, review
from idweave.linkage.errors import IdweaveError
from idweave.linkage.history import history
from idweave.linkage.subject import printable, render_html, review_floor, subject_access

HOSTILE_ID = "<b>[red]x[/red]\x1b[2J\u202e"


def biggest(store: Path) -> tuple[str, list[tuple[str, str]]]:
    with duckdb.connect(str(store), read_only=True) as con:
        eid = con.execute("select entity_id from records group by 1 order by count(*) desc, 1 limit 1").fetchone()[0]
        recs = con.execute("select source, record_id from records where entity_id = ? order by 1, 2", [eid]).fetchall()
    return eid, recs


def test_every_record_link_event_and_run_of_the_entity(linked_tiny: Linked) -> None:
    eid, recs = biggest(linked_tiny.store)
    rep = subject_access(linked_tiny.project, record=recs[-1])
    assert rep.entity_id == eid and rep.status == "active"
    assert [(r["source"], r["record_id"]) for r in rep.records] == recs
    with duckdb.connect(str(linked_tiny.store), read_only=True) as con:
        stored = {(s, r): a for s, r, a in con.execute(
            "select source, record_id, birth_date from records where entity_id = ?", [eid]).fetchall()}
        n_links = con.execute("select count(*) from links where (source_l, record_id_l) in "
                              "(select (source, record_id) from records where entity_id = ?) and "
                              "(source_r, record_id_r) in (select (source, record_id) from records "
                              "where entity_id = ?)", [eid, eid]).fetchone()[0]
        runs = [r for (r,) in con.execute("select run_id from runs").fetchall()]
        versions = [v for (v,) in con.execute("select model_version from runs").fetchall()]
    assert {(r["source"], r["record_id"]): r["attributes"]["birth_date"] for r in rep.records} == stored
    assert len(rep.links) == n_links >= len(recs) - 1
    strongest = rep.links[0]
    assert strongest["match_probability"] == max(lk["match_probability"] for lk in rep.links)
    assert "bits for" in strongest["in_words"] and strongest["joins"]
    assert [e["event_id"] for e in rep.events] == history(linked_tiny.project, eid)["event_id"].to_list()
    assert [r["run_id"] for r in rep.runs] == runs
    assert [m["version"] for m in rep.models] == sorted(set(versions))
    assert rep.decisions == [] and rep.match is None


def test_decisions_that_touched_the_records_are_listed(linked_copy: Path) -> None:
    eid, recs = biggest(linked_copy.parent / "out" / "tiny.duckdb")
    res = review.split(linked_copy, eid, [recs[0]], author="ada", reason="two people")
    rep = subject_access(linked_copy, record=recs[0])
    assert [(d["decision_id"], d["author"], d["action"], d["reason"], d["in_force"]) for d in rep.decisions] == [
        (res.decision_id, "ada", "split", "two people", True)]
    other = subject_access(linked_copy, record=recs[-1])
    assert [d["decision_id"] for d in other.decisions] == [res.decision_id]  # the rest was named in it too


def test_found_by_lookup_with_the_probability_and_the_other_candidates(linked_tiny: Linked) -> None:
    row = pl.read_csv(linked_tiny.folder / "census.csv", infer_schema=False).row(0, named=True)
    query = {"first_name": row["fname"], "last_name": row["surname"], "birth_date": row["dob"]}
    rep = subject_access(linked_tiny.project, record_json=json.dumps(query), date_format="%m/%d/%Y")
    assert rep.match is not None and rep.match["match_probability"] >= rep.threshold
    with duckdb.connect(str(linked_tiny.store), read_only=True) as con:
        eid = con.execute("select entity_id from records where source = 'census' and record_id = ?",
                          [row["person_no"]]).fetchone()[0]
    assert rep.entity_id == eid
    floor = review_floor(rep.threshold)
    assert all(c["match_probability"] >= floor and c["entity_id"] != eid for c in rep.candidates)
    nobody = subject_access(linked_tiny.project, record_json={"first_name": "Quxwelda", "last_name": "Zzyzx",
                                                             "birth_date": "1801-01-01"})
    assert nobody.entity_id is None and nobody.records == [] and "no entity matches" in nobody.notes[0]


def test_bad_input_is_one_clear_error(linked_tiny: Linked) -> None:
    with pytest.raises(IdweaveError, match="no record census:nope in the store"):
        subject_access(linked_tiny.project, record=("census", "nope"))
    with pytest.raises(IdweaveError, match="either a record"):
        subject_access(linked_tiny.project)
    res = run_cli("subject-access", linked_tiny.project, "--record", "{not json")
    assert res.code == 2 and "--record is not valid JSON" in res.error


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fixtures/tiny with a census record whose id and name carry markup, HTML and escapes."""
    folder = tmp_path_factory.mktemp("hostile") / "tiny"
    project = copy_fixture("tiny", folder)
    rows = list(csv.reader((folder / "census.csv").open()))
    first = rows[1]
    rows.append([HOSTILE_ID, first[1], first[2], first[3], first[4], first[5], first[6]])
    with (folder / "census.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    link(project)
    return project


def test_the_terminal_report_escapes_every_value(hostile: Path) -> None:
    res = run_cli("subject-access", hostile, "census:" + HOSTILE_ID)
    assert res.code == 0, res.err
    assert "\x1b" not in res.out and "\u202e" not in res.out
    assert "census:<b>[red]x[/red]\\u001b[2J\\u202e" in res.out  # markup shown as text, escapes written out
    as_json = run_cli("subject-access", hostile, "census:" + HOSTILE_ID, "--json")
    data = json.loads(as_json.out)
    assert HOSTILE_ID in [r["record_id"] for r in data["records"]]


def test_the_html_page_is_escaped_and_self_contained(hostile: Path, tmp_path: Path) -> None:
    page_file = tmp_path / "sa.html"
    res = run_cli("subject-access", hostile, "census:" + HOSTILE_ID, "--html", page_file)
    assert res.code == 0, res.err
    page = page_file.read_text()
    assert "<b>[red]" not in page and "&lt;b&gt;[red]x[/red]\\u001b[2J\\u202e" in page
    assert "\x1b" not in page
    lowered = page.lower()
    for asset in ("<script", "src=", "href=", "http://", "https://", "@import", "url("):
        assert asset not in lowered
    assert page.count("<table>") >= 4


def test_printable_and_render_handle_no_entity() -> None:
    assert printable("a\nb\tc") == "a\\u000ab\\u0009c"
    from idweave.linkage.subject import SubjectReport

    page = render_html(SubjectReport(asked="<x>", entity_id=None, status=None, threshold=0.9, notes=["<none>"]))
    assert "&lt;none&gt;" in page and "<none>" not in page
