"""Output that must not attack its reader (issue 13), and the rough edges a newcomer hits.

* CSV exports neutralise spreadsheet formulas (a leading ``'``); Parquet keeps the values.
* Terminal output shows control characters (ANSI/OSC escapes) and rich markup from records,
  reasons and authors as visible text, never acting on them.
* ``--version``, a repeated decision, the interactive reason, the link summary's kind of
  run, ``lookup --source``, ``evaluate --truth`` on a mapped column, paths, piped width.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import ROOT, Linked, run_cli
from idweave.linkage import review

ESC = "\x1b"
# Record ids and names a hostile source could hold.
EVIL_IDS = ["=1+2", "@SUM(A1)", "-3", "+4", "\tx", f"{ESC}]0;owned{ESC}\\", "[bold]p6[/bold]", "'q"]
EVIL_NAMES = ["=HYPERLINK(\"http://x\")", "Ann", f"Ann{ESC}[31m", "[red]Ann[/red]", "Ann", "Ann", "Ann", "Ann"]

PROJECT = """\
store: out/evil.duckdb
threshold: 0.5
attributes:
  first_name: given_name
  last_name: family_name
  birth_date: date
sources:
  people:
    path: people.csv
    id: id
    columns: {first_name: first, last_name: last, birth_date: born}
  others:
    path: others.csv
    id: id
    columns: {first_name: first, last_name: last, birth_date: born}
"""


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linked project whose record ids and names are hostile."""
    folder = tmp_path_factory.mktemp("evil")
    rows = [{"id": i, "first": n, "last": "Lee", "born": "1980-01-02"} for i, n in zip(EVIL_IDS, EVIL_NAMES)]
    pl.DataFrame(rows).write_csv(folder / "people.csv")
    pl.DataFrame([dict(r, id="o" + str(k)) for k, r in enumerate(rows)]).write_csv(folder / "others.csv")
    (folder / "project.yaml").write_text(PROJECT)
    result = run_cli("link", folder / "project.yaml")
    assert result.code == 0, result.err
    return folder / "project.yaml"


def _entity_of(project: Path, rid: str) -> str:
    from idweave.linkage.export import export

    df = export(project)
    return df.filter((pl.col("source") == "people") & (pl.col("record_id") == rid))["entity_id"][0]


# ------------------------------------------------------------------------------ CSV
def test_csv_export_neutralises_formulas_and_parquet_keeps_values(evil: Path, tmp_path: Path) -> None:
    csv, pq = tmp_path / "e.csv", tmp_path / "e.parquet"
    assert run_cli("export", evil, "--with-attributes", "--out", csv).code == 0
    assert run_cli("export", evil, "--with-attributes", "--out", pq).code == 0
    got = pl.read_csv(csv, infer_schema=False).filter(pl.col("source") == "people").sort("record_id")
    raw = pl.read_parquet(pq).filter(pl.col("source") == "people").sort("record_id")
    assert sorted(raw["record_id"].to_list()) == sorted(i.strip() for i in EVIL_IDS)  # Parquet: as stored
    for cell in got["record_id"].to_list() + got["first_name"].drop_nulls().to_list():
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert "'=1+2" in got["record_id"].to_list() and "''q" in got["record_id"].to_list()
    # What CSV holds is what Parquet holds once the quote is taken off.
    from idweave.linkage.csvsafe import restore_formulas

    assert sorted(restore_formulas(got["record_id"]).to_list()) == sorted(raw["record_id"].to_list())


def test_export_labels_neutralise_and_read_back_as_they_were(evil: Path, tmp_path: Path) -> None:
    copy = tmp_path / "p"
    import shutil

    shutil.copytree(evil.parent, copy)
    project = copy / "project.yaml"
    e1, e2 = _entity_of(project, "=1+2"), _entity_of(project, "@SUM(A1)")
    if e1 == e2:
        review.split(project, e1, [("people", "=1+2")], author="ada", reason="two people")
    else:
        review.keep_apart(project, e1, e2, author="ada", reason="two people")
    out = tmp_path / "labels.csv"
    assert run_cli("export-labels", project, "--out", out).code == 0
    text = out.read_text()
    assert "'=1+2" in text and "\n=" not in text and ",=" not in text
    from idweave.linkage.sources import read_pair_labels

    ids = set(read_pair_labels(out)["record_id_l"]) | set(read_pair_labels(out)["record_id_r"])
    assert "=1+2" in ids  # the reader undoes the quote


# ------------------------------------------------------------------------------ terminal
def _clean(result) -> str:
    text = result.out + result.err
    assert ESC not in text, repr(text[:500])
    assert "\x07" not in text
    return text


def test_show_and_explain_escape_records(evil: Path) -> None:
    eid = _entity_of(evil, f"{ESC}]0;owned{ESC}\\")
    text = _clean(run_cli("show", evil, eid))
    assert "\\x1b]0;owned" in text  # shown, not acted on
    eid = _entity_of(evil, "[bold]p6[/bold]")
    text = _clean(run_cli("show", evil, eid))
    assert "[bold]p6[/bold]" in text  # markup shown as text
    text = _clean(run_cli("explain", evil, f"people:{ESC}]0;owned{ESC}\\", "people:[bold]p6[/bold]"))
    assert "[bold]p6[/bold]" in text
    _clean(run_cli("explain", evil, eid))


def test_lookup_history_review_and_count_pairs_escape(evil: Path) -> None:
    text = _clean(run_cli("lookup", evil, "--record", '{"first_name": "Ann", "last_name": "Lee", '
                                                      '"birth_date": "1980-01-02"}', "--top", "20"))
    assert "\\x1b" in text or "[bold]p6[/bold]" in text
    _clean(run_cli("history", evil, _entity_of(evil, f"{ESC}]0;owned{ESC}\\")))
    _clean(run_cli("review", evil, "--limit", "0", "--margin-bits", "40"))
    _clean(run_cli("count-pairs", evil))
    _clean(run_cli("diff", evil, "--run", "1"))


def test_decisions_escape_author_and_reason(evil: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(evil.parent, copy)
    project = copy / "project.yaml"
    eid = _entity_of(project, "-3")
    done = run_cli("confirm", project, eid, "--reason", f"ok{ESC}]0;pwn\x07 [bold]x[/bold]",
                   "--author", f"ad{ESC}[2Ja")
    _clean(done)
    text = _clean(run_cli("decisions", project))
    assert "[bold]x[/bold]" in text and "\\x1b]0;pwn\\x07" in text and "ad\\x1b[2Ja" in text
    # Confirming it again while nothing changed records nothing and says which decision holds.
    again = run_cli("confirm", project, eid)
    assert again.code == 2
    assert "already in force: decision #1 confirmed entity" in again.error
    assert review.decisions(project).height == 1


def test_a_repeated_keep_apart_records_nothing(linked_copy: Path) -> None:
    from idweave.linkage.export import export

    e = export(linked_copy)["entity_id"].unique().sort().to_list()
    assert run_cli("keep-apart", linked_copy, e[0], e[1], "--reason", "two people").code == 0
    again = run_cli("keep-apart", linked_copy, e[1], e[0], "--reason", "two people")
    assert again.code == 2, again.err
    assert "already in force: decision #1 keeps these records apart" in again.error
    assert review.decisions(linked_copy).height == 1


# ------------------------------------------------------------------------------ newcomer
def test_version() -> None:
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.code == 0
    assert result.out.strip() == f"idweave {version('idweave')}"


def test_link_summary_says_full_or_incremental(linked_copy: Path) -> None:
    again = run_cli("link", linked_copy)
    assert again.code == 0, again.err
    assert "run 2 (incremental)" in again.out
    full = run_cli("link", "--full", linked_copy)
    assert "run 3 (full)" in full.out


def test_lookup_refuses_an_unknown_source(linked_tiny: Linked) -> None:
    result = run_cli("lookup", linked_tiny.project, "--record", '{"first_name": "Ann"}', "--source", "taxx")
    assert result.code == 2
    assert result.error == ("Error: --source: unknown source 'taxx'; the project's sources are benefits, census, "
                            "tax")


def test_lookup_names_no_record_for_a_single_query(linked_tiny: Linked) -> None:
    result = run_cli("lookup", linked_tiny.project, "--record", '{"first_nam": "Ann"}')
    assert result.code == 2
    assert "record '0'" not in result.error
    assert result.error.startswith("Error: column 'first_nam': unknown attribute 'first_nam'")


def test_evaluate_warns_when_the_truth_is_a_mapped_column(linked_tiny: Linked) -> None:
    result = run_cli("evaluate", linked_tiny.project, "--truth", "zip")
    assert result.code == 0, result.err
    assert "warning: the truth column 'zip' is mapped to an attribute (census.columns.postcode)" in result.err
    clean = run_cli("evaluate", linked_tiny.project, "--truth", "true_person")
    assert "warning" not in clean.err


def test_interactive_decision_with_an_empty_reason_asks_again(linked_copy: Path) -> None:
    from idweave.cli.app import _register, app

    _register()
    items = review.queue(linked_copy, margin_bits=40)
    k = next(n for n, i in enumerate(items) if i.other_entity_id is not None)
    result = CliRunner().invoke(app, ["review", str(linked_copy), "--interactive", "--margin-bits", "40",
                                      "--author", "ada"], input="n" * k + "k" + "\n" + "twins\n" + "q")
    assert result.exit_code == 0, result.output
    assert "a reason is required" in result.output
    assert review.decisions(linked_copy)["reason"].to_list() == ["twins"]


def test_paths_are_printed_folded(tmp_path: Path, linked_tiny: Linked) -> None:
    import shutil

    folder = tmp_path / "a" / "b"
    shutil.copytree(linked_tiny.folder, folder)
    text = (folder / "project.yaml").read_text().replace("store: out/tiny.duckdb", "store: ../b/out/tiny.duckdb")
    (folder / "project.yaml").write_text(text)
    from idweave.linkage import load_project

    assert ".." not in str(load_project(folder / "project.yaml").store)


def test_piped_output_at_80_columns_keeps_ids_whole(linked_tiny: Linked) -> None:
    from idweave.linkage.export import export

    df = export(linked_tiny.project)
    eid = df.group_by("entity_id").len().sort("len", "entity_id", descending=True)["entity_id"][0]
    env = dict(os.environ, COLUMNS="80")
    env.pop("IDWEAVE_PROGRESS", None)
    script = Path(sys.executable).with_name("idweave")
    done = subprocess.run([str(script), "show", str(linked_tiny.project), eid],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "…" not in done.stdout
    for rid in df.filter(pl.col("entity_id") == eid)["record_id"]:
        assert rid in done.stdout
