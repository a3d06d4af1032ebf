"""Golden records (linkage/golden.py): survivorship per attribute, `export --golden`, and the
golden record on the workbench's entity page."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import polars as pl
import pytest

from conftest import copy_fixture, run_cli

from idweave.linkage import review
from idweave.linkage.golden import golden


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_fixture("demo", tmp_path_factory.mktemp("golden") / "demo")
    res = run_cli("link", project)
    assert res.code == 0, res.err
    return project


def samuel(demo: Path) -> str:
    return next(it.entity_id for it in review.queue(demo, include_reviewed=True)
                if ("census", "182") in set(review.show(demo, it.entity_id).records.select(
                    "source", "record_id").iter_rows()))


def test_one_row_per_active_entity_with_where_each_value_came_from(demo: Path) -> None:
    g = golden(demo)
    from idweave.linkage.export import export
    active = export(demo)["entity_id"].n_unique()
    assert g.height == active == g["entity_id"].n_unique()
    row = g.filter(pl.col("entity_id") == samuel(demo)).row(0, named=True)
    # Father (1947, three records) and son (1977, two) in one entity: the father's values win;
    # his ssn is in tax and benefits: the tie goes to the source listed first (tax).
    assert (row["birth_date"], row["ssn"], row["ssn_source"], row["ssn_record_id"]) == \
        ("1947-09-10", "895843485", "tax", "T0000049")
    assert row["first_name"] == "samuel" and row["first_name_source"] == "census"


def test_rules_per_attribute(demo: Path) -> None:
    eid = samuel(demo)
    by_source = golden(demo, entity_id=eid, rules={"ssn": {"source_priority": ["benefits"]}}).row(0, named=True)
    assert (by_source["ssn_source"], by_source["ssn_record_id"]) == ("benefits", "BEN-0000003")
    with pytest.raises(Exception, match="source_priority: no source nowhere"):
        golden(demo, entity_id=eid, rules={"ssn": {"source_priority": ["nowhere"]}})
    with pytest.raises(Exception, match="no attribute height"):
        golden(demo, rules={"height": "longest"})


def test_export_golden_writes_the_file(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "golden.csv"
    res = run_cli("export", demo, "--out", out, "--golden")
    assert res.code == 0, res.err
    df = pl.read_csv(out, infer_schema_length=0)
    assert df.columns[:4] == ["entity_id", "first_name", "first_name_source", "first_name_record_id"]
    assert df.height == golden(demo).height
    res = run_cli("export", demo, "--out", tmp_path / "golden.txt", "--golden")
    assert res.code == 2 and "golden.txt" in res.error


def test_the_entity_page_shows_the_golden_record(demo: Path, tmp_path: Path) -> None:
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

    from idweave.web import make_app

    shutil.copytree(demo.parent, tmp_path / "demo")
    project = tmp_path / "demo" / "project.yaml"
    c = TestClient(make_app(project, token="t", author="ada"), base_url="http://127.0.0.1:8765")
    c.get("/?token=t")
    html = c.get(f"/entity/{samuel(project)}").text
    part = html[html.index('id="golden"'):html.index("</section>", html.index('id="golden"'))]
    assert "<th>ssn</th><td>895843485</td><td class=\"detail\">tax:T0000049</td>" in part


def _copy(demo: Path, tmp_path: Path, extra: str = "") -> Path:
    shutil.copytree(demo.parent, tmp_path / "demo")
    project = tmp_path / "demo" / "project.yaml"
    if extra:
        project.write_text(project.read_text() + extra)
    return project


def test_survivorship_in_the_project_file(demo: Path, tmp_path: Path) -> None:
    eid = samuel(demo)
    project = _copy(demo, tmp_path, "survivorship:\n  ssn: {source_priority: [benefits]}\n")
    want = golden(demo, entity_id=eid, rules={"ssn": {"source_priority": ["benefits"]}}).row(0, named=True)
    got = golden(project, entity_id=eid).row(0, named=True)
    assert got["ssn_source"] == want["ssn_source"] == "benefits" and got == want
    # A survivorship key changes no run: the run signature (project hash) stays.
    from idweave.linkage.project import load_project
    assert load_project(project).config_hash() == load_project(demo).config_hash()


@pytest.mark.parametrize("extra, message", [
    ("survivorship:\n  ssn: shortest\n", "survivorship.ssn: unknown rule 'shortest'"),
    ("survivorship:\n  height: longest\n", "survivorship.height: not a declared attribute"),
    ("survivorship:\n  ssn: {source_priority: [nowhere]}\n", "survivorship.ssn.source_priority: no source nowhere"),
    ("survivorship: longest\n", "survivorship: must be a mapping"),
])
def test_a_bad_survivorship_key_is_named_exit_2(demo: Path, tmp_path: Path, extra: str, message: str) -> None:
    project = _copy(demo, tmp_path, extra)
    res = run_cli("export", project, "--out", tmp_path / "g.csv", "--golden")
    assert res.code == 2 and message in res.error and "Traceback" not in res.error
    assert not (tmp_path / "g.csv").exists()


def test_a_pin_is_a_decision_export_uses_it_a_run_keeps_it_undo_lifts_it(demo: Path, tmp_path: Path) -> None:
    project = _copy(demo, tmp_path)
    eid = samuel(project)
    before = golden(project, entity_id=eid).row(0, named=True)
    res = run_cli("pin", project, eid, "first_name", "samuel j", "--reason", "as he signs", "--author", "ada")
    assert res.code == 0, res.error
    d = review.decisions(project).row(-1, named=True)
    assert (d["action"], d["author"], d["reason"], d["in_force"]) == ("pin", "ada", "as he signs", True)
    out = tmp_path / "golden.csv"
    assert run_cli("export", project, "--out", out, "--golden").code == 0
    row = pl.read_csv(out, infer_schema_length=0).filter(pl.col("entity_id") == eid).row(0, named=True)
    assert (row["first_name"], row["first_name_source"], row["first_name_record_id"]) == \
        ("samuel j", "pinned", f"#{d['decision_id']}")
    from idweave.linkage.history import history
    assert "pin" in history(project, eid).filter(pl.col("type") == "decision")["detail"].to_list()
    assert run_cli("link", project, "--full").code == 0  # survives a rerun (the entity keeps its id)
    assert golden(project, entity_id=eid).row(0, named=True)["first_name"] == "samuel j"
    again = run_cli("pin", project, eid, "first_name", "samuel j", "--reason", "again")
    assert again.code == 2 and "already in force" in again.error
    bad = run_cli("pin", project, eid, "height", "2m", "--reason", "x")
    assert bad.code == 2 and "no attribute 'height'" in bad.error
    review.undo(project, d["decision_id"], author="ada", reason="pinned by mistake")
    assert golden(project, entity_id=eid).row(0, named=True) == before
