"""End-to-end tests of the review commands (review, show, merge, split, keep-apart, confirm,
undo, decisions, export-labels, evaluate-labels, explain ENTITY_ID) on fixtures/tiny.

Read-only commands run on the session's linked store; commands that decide run on a private
copy. What is printed is checked against the library function each command wraps.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import Linked, run_cli, snapshot
from idweave.linkage import review
from idweave.linkage.explain import explain_entity
from test_review import largest, leaf, members, near_miss, sql, state, two_entities
from conftest import table_rows


def interactive(project: Path, keys: str, *extra: str):
    from idweave.cli.app import _register, app

    _register()
    return CliRunner().invoke(app, ["review", str(project), "--interactive", *extra], input=keys)


# ------------------------------------------------------------------------------ review
def test_review_lists_the_queue(linked_tiny: Linked) -> None:
    items = review.queue(linked_tiny.project)
    result = run_cli("review", linked_tiny.project, "--limit", "0")
    assert result.code == 0, result.err
    assert f"review queue: {len(items)} item(s)" in result.out
    rows = [r for r in table_rows(result.out) if r[0].isdigit()]
    want = []
    for i in items:
        ent = i.entity_id if i.other_entity_id is None else f"{i.entity_id} + {i.other_entity_id}"
        size = str(i.size) if i.other_size is None else f"{i.size} + {i.other_size}"
        reason = i.reason.replace("_", " ") + (f" (+{len(i.reasons) - 1})" if len(i.reasons) > 1 else "")
        want.append([str(i.rank), ent, reason, size, "" if i.link is None else f"{i.link:.3f}"])
    assert [r[:5] for r in rows] == want


def test_review_limit_and_json(linked_tiny: Linked) -> None:
    result = run_cli("review", linked_tiny.project, "--limit", "1", "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert got == [json.loads(json.dumps(i.to_dict())) for i in review.queue(linked_tiny.project, limit=1)]
    assert set(got[0]) == {"rank", "entity_id", "other_entity_id", "reason", "reasons", "detail", "size",
                           "other_size", "link", "score", "suggested_split", "kind"}


def test_review_without_a_store(tiny: Path) -> None:
    result = run_cli("review", tiny)
    assert result.code == 2
    assert result.error == f"Error: {tiny.parent / 'out' / 'tiny.duckdb'}: no store yet: run `idweave link` first"


# ------------------------------------------------------------------------------ show, explain
def test_show_prints_the_records_side_by_side(linked_tiny: Linked) -> None:
    p = linked_tiny.project
    big = largest(p)
    view = review.show(p, big)
    result = run_cli("show", p, big)
    assert result.code == 0, result.err
    assert f"entity {big}: {view.records.height} records, active" in result.out
    header = next([c.strip() for c in line.strip().strip("┃").split("┃")] for line in result.out.splitlines()
                  if line.strip().startswith("┃ attribute"))
    assert header == ["attribute"] + [f"{s}:{r}" for s, r in view.records.select("source", "record_id").rows()]
    attrs = [r[0] for r in table_rows(result.out) if r and r[0] in view.attributes]
    assert attrs == view.attributes
    assert f"links among its records (threshold {view.threshold})" in result.out
    assert "highlighted: characters that differ" in result.out


def test_show_highlights_the_differing_characters(linked_tiny: Linked) -> None:
    from idweave.cli.review_commands import render_entity

    view = review.show(linked_tiny.project, largest(linked_tiny.project))
    table = render_entity(view)[0]
    cells = {c.header.plain if hasattr(c.header, "plain") else c.header: list(c.cells) for c in table.columns}
    for (i, attr), spans in view.diffs.items():
        text = cells[f"{view.records['source'][i]}:{view.records['record_id'][i]}"][view.attributes.index(attr)]
        assert [(s.start, s.end) for s in text.spans] == spans
        assert all(s.style == "bold red reverse" for s in text.spans)


def test_unknown_entity_is_an_error(linked_tiny: Linked) -> None:
    for cmd in (["show"], ["explain"], ["confirm"]):
        result = run_cli(*cmd, linked_tiny.project, "ENOSUCH")
        assert result.code == 2
        assert result.error == "Error: no entity ENOSUCH in the store"


def test_explain_an_entity(linked_tiny: Linked) -> None:
    p = linked_tiny.project
    big = largest(p)
    ex = explain_entity(p, big)
    result = run_cli("explain", p, big)
    assert result.code == 0, result.err
    out = result.out
    assert out.startswith(f"entity {big}: {len(ex.records)} record(s), threshold {ex.threshold}")
    for s, r in ex.records:
        assert f"{s}:{r}" in out
    w = ex.weakest
    assert f"{w.child[0]}:{w.child[1]}  p={w.match_probability:.4f}" in out
    assert "◀ weakest link" in out
    assert (f"weakest link: {w.parent[0]}:{w.parent[1]} - {w.child[0]}:{w.child[1]} p={w.match_probability:.4f}; "
            f"a threshold above {w.match_probability:.4f} would split the entity") in out


# ------------------------------------------------------------------------------ decisions
def test_decision_commands_record_author_and_reason(linked_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = linked_copy
    a, b = two_entities(p)
    ma, mb = members(state(p))[a], members(state(p))[b]
    result = run_cli("merge", p, a, b, "--reason", "same person", "--author", "ada")
    assert result.code == 0, result.err
    survivor = state(p)[min(ma)]
    assert result.out.strip() == (f"decision #1 (merge) recorded: {len(mb) if survivor == a else len(ma)} "
                                  f"record(s) moved, {2 + (len(mb) if survivor == a else len(ma))} event(s); "
                                  f"entities now: {survivor}")

    big = largest(p)
    one = leaf(p, big)
    monkeypatch.setenv("IDWEAVE_AUTHOR", "bob")
    result = run_cli("split", p, big, f"{one[0]}:{one[1]}", "--reason", "another person")
    assert result.code == 0, result.err
    new = state(p)[one]
    assert f"decision #2 (split) recorded: 1 record(s) moved, 4 event(s); entities now: " in result.out

    x, y, _p = near_miss(p)
    result = run_cli("keep-apart", p, f"{x[0]}:{x[1]}", f"{y[0]}:{y[1]}", "--reason", "twins")
    assert result.code == 0, result.err
    monkeypatch.delenv("IDWEAVE_AUTHOR")
    result = run_cli("confirm", p, big)
    assert result.code == 0, result.err
    assert result.out.strip() == f"decision #4 (confirm) recorded: 0 record(s) moved, 1 event(s); entities now: {big}"
    result = run_cli("undo", p, "2", "--reason", "same person after all", "--author", "cy")
    assert result.code == 0, result.err
    assert state(p)[one] == big

    d = review.decisions(p)
    assert d.select("decision_id", "author", "action", "reason", "in_force").rows() == [
        (1, "ada", "merge", "same person", True),
        (2, "bob", "split", "another person", False),
        (3, "bob", "keep_apart", "twins", True),
        (4, getpass.getuser(), "confirm", "", True),
        (5, "cy", "undo", "same person after all", False)]
    result = run_cli("decisions", p)
    assert result.code == 0, result.err
    rows = [r for r in table_rows(result.out) if r[0].isdigit()]
    assert [(r[0], r[2], r[3], r[6]) for r in rows] == [
        ("1", "ada", "merge", "yes"), ("2", "bob", "split", "undone by #5"), ("3", "bob", "keep apart", "yes"),
        ("4", getpass.getuser(), "confirm", "yes"), ("5", "cy", "undo", "-")]
    assert new != big


def test_a_bad_decision_exits_2_and_leaves_the_store(linked_copy: Path) -> None:
    before = snapshot(linked_copy.parent)
    big = largest(linked_copy)
    cases = [
        (["merge", linked_copy, "ENOSUCH", big, "--reason", "x"], "Error: no entity ENOSUCH in the store"),
        (["split", linked_copy, big, "census:999", "--reason", "x"],
         f"Error: records census:999 are not in entity {big}"),
        (["undo", linked_copy, "3", "--reason", "x"], "Error: no decision #3 in the store"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert (result.code, result.error) == (2, message)
    result = run_cli("merge", linked_copy, big, big)
    assert result.code == 2 and "Missing option '--reason'" in result.err
    assert snapshot(linked_copy.parent) == before


# ------------------------------------------------------------------------------ feedback
def test_export_labels_and_evaluate_labels(linked_copy: Path, tmp_path: Path) -> None:
    a, b = two_entities(linked_copy)
    n = len(members(state(linked_copy))[a] | members(state(linked_copy))[b])
    assert run_cli("merge", linked_copy, a, b, "--reason", "same").code == 0
    out = tmp_path / "labels.csv"
    result = run_cli("export-labels", linked_copy, "--out", out)
    assert result.code == 0, result.err
    pairs = n * (n - 1) // 2
    assert result.out.strip() == f"wrote {pairs} labelled pairs ({pairs} match, 0 non-match) to {out}"
    assert pl.read_csv(out).height == pairs
    result = run_cli("evaluate-labels", linked_copy, "--labels", out)
    assert result.code == 0, result.err
    values = {r[0]: r[1] for r in table_rows(result.out) if len(r) == 2}
    assert values["labelled pairs"] == str(pairs) and values["precision"] == "1.0000" and values["f1"] == "1.0000"
    result = run_cli("export-labels", linked_copy, "--out", tmp_path / "labels.txt")
    assert (result.code, result.error) == (2, f"Error: {tmp_path / 'labels.txt'}: the labels file must end in .csv")


def test_evaluate_labels_reads_splink_label_files(linked_tiny: Linked, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("unique_id_l,source_dataset_l,unique_id_r,source_dataset_r,clerical_match_score\n"
                    "1,census,T0000001,tax,1.0\n1,census,999,census,0.0\n")
    rep = __import__("idweave.linkage.evaluate", fromlist=["evaluate_labels"]).evaluate_labels(
        linked_tiny.project, path)
    assert (rep.metrics["labelled_pairs"], rep.metrics["pairs_in_store"], rep.metrics["pairs_missing_records"]) == \
        (2, 1, 1)
    path.write_text("unique_id_l,unique_id_r,clerical_match_score\n1,2,1\n")
    result = run_cli("evaluate-labels", linked_tiny.project, "--labels", path)
    assert result.code == 2
    assert result.error == (f"Error: {path}: the labels file lacks the columns source_dataset_l, source_dataset_r; "
                            "found: unique_id_l, unique_id_r, clerical_match_score")


# ------------------------------------------------------------------------------ interactive
def test_interactive_review_confirms_keeps_apart_and_skips(linked_copy: Path) -> None:
    p = linked_copy
    # One session keeps the first pair apart (after an unknown key, which is asked again) ...
    items = review.queue(p, margin_bits=40)
    k = next(n for n, i in enumerate(items) if i.other_entity_id is not None)
    pair = items[k]
    result = interactive(p, "n" * k + "x" + "k" + "twins\n" + "q", "--margin-bits", "40", "--author", "ada")
    assert result.exit_code == 0, result.output
    assert "press one of m, k, n, q" in result.output
    assert f"decision #1 (keep apart) recorded: 0 record(s) moved, 1 event(s); entities now: " \
           f"{pair.entity_id}, {pair.other_entity_id}" in result.output
    assert f"1 decision(s) recorded, {k} item(s) skipped" in result.output
    # ... the next confirms the first entity.
    items = review.queue(p, margin_bits=40)
    k = next(n for n, i in enumerate(items) if i.other_entity_id is None)
    target = items[k]
    result = interactive(p, "n" * k + "c" + "looks right\n" + "q", "--margin-bits", "40", "--author", "ada")
    assert result.exit_code == 0, result.output
    assert f"1 decision(s) recorded, {k} item(s) skipped" in result.output
    d = review.decisions(p)
    assert d.select("action", "reason", "subject", "author").rows() == [
        ("keep_apart", "twins", f"{pair.entity_id} {pair.other_entity_id}", "ada"),
        ("confirm", "looks right", target.entity_id, "ada")]
    assert target.entity_id not in {i.entity_id for i in review.queue(p, margin_bits=40) if i.other_entity_id is None}


def test_interactive_review_splits_by_number(linked_copy: Path) -> None:
    p = linked_copy
    items = review.queue(p, margin_bits=40)
    target = next(i for i in items if i.other_entity_id is None and i.size >= 3)
    keys = "".join("n" for _ in items[:items.index(target)]) + "s" + "#2\n" + "not the same\n" + "q"
    view = review.show(p, target.entity_id)
    second = tuple(view.records.select("source", "record_id").row(1))
    result = interactive(p, keys, "--margin-bits", "40")
    assert result.exit_code == 0, result.output
    assert "1 decision(s) recorded" in result.output
    payload = json.loads(sql(p, "select payload from decisions")["payload"][0])
    assert payload["records"] == [list(second)] and payload["entity"] == target.entity_id
    assert state(p)[second] != target.entity_id


def test_interactive_review_stops_at_the_end_of_input(linked_copy: Path) -> None:
    result = interactive(linked_copy, "")
    assert result.exit_code == 0, result.output
    assert "0 decision(s) recorded, 0 item(s) skipped" in result.output
    assert review.decisions(linked_copy).height == 0
