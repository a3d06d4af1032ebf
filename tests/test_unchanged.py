"""A rerun on source files that did not change runs nothing (issue 14, item 4): the file-level
check of ``_incremental.unchanged_run`` (size and modification time, then the sha256 of a
file whose time moved or is too recent to trust), and the cases that must still run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl

from conftest import run_cli, snapshot
from idweave.linkage import _incremental as inc
from idweave.linkage import link
from idweave.linkage.project import load_project


def _entities(result) -> pl.DataFrame:
    return result.entities.sort("source", "record_id")


def _change_one_byte(f: Path) -> None:
    """One letter of the last data row of a CSV becomes another (the same size)."""
    data = f.read_bytes()
    i = data.rstrip(b"\n").rfind(b"a")
    assert i > data.find(b"\n")  # in a data row, not the header
    f.write_bytes(data[:i] + b"e" + data[i + 1:])


def test_a_rerun_on_the_same_files_runs_nothing_and_writes_nothing(linked_copy: Path) -> None:
    first = link(linked_copy)  # this copy's files are recorded (the shared folder's were before)
    before = snapshot(linked_copy.parent)
    again = link(linked_copy)
    s = again.summary
    assert (s["mode"], s["events"], s["new_records"], s["scored_pairs"]) == ("unchanged", 0, 0, 0)
    assert again.run_id == first.run_id and str(first.run_id) in s["mode_reason"]
    assert snapshot(linked_copy.parent) == before  # the store is byte for byte as it was
    for key in ("records", "records_per_source", "candidate_pairs", "pairs_per_rule", "threshold", "links",
                "entities", "entity_sizes", "model_version", "rules"):
        assert s[key] == first.summary[key], key
    assert _entities(again).equals(_entities(first))
    pairs = ["source_l", "record_id_l", "source_r", "record_id_r"]
    assert again.pairs.sort(pairs).equals(first.pairs.sort(pairs))


def test_a_file_rewritten_with_the_same_bytes_changes_nothing(linked_copy: Path) -> None:
    link(linked_copy)
    f = linked_copy.parent / "census.csv"
    f.write_bytes(f.read_bytes())
    later = time.time_ns() + 60 * 10**9
    os.utime(f, ns=(later, later))  # a new time for sure, the same bytes
    before = snapshot(linked_copy.parent)
    assert link(linked_copy).summary["mode"] == "unchanged"
    assert snapshot(linked_copy.parent) == before


def test_one_changed_byte_makes_an_incremental_run(linked_copy: Path) -> None:
    link(linked_copy)
    _change_one_byte(linked_copy.parent / "census.csv")
    r = link(linked_copy)
    assert (r.summary["mode"], r.summary["changed_records"], r.summary["new_records"]) == ("incremental", 1, 0)
    assert link(linked_copy).summary["mode"] == "unchanged"  # that run's files are recorded in turn


def test_a_byte_changed_within_the_time_step_is_found(linked_copy: Path) -> None:
    """A file modified just before the run that recorded it may change again without its
    time moving (file systems keep times in steps): its bytes are compared, not its time."""
    f = linked_copy.parent / "census.csv"
    now = time.time_ns()
    os.utime(f, ns=(now, now))
    link(linked_copy)
    _change_one_byte(f)
    os.utime(f, ns=(now, now))  # the very same size and time
    r = link(linked_copy)
    assert (r.summary["mode"], r.summary["changed_records"]) == ("incremental", 1)


def test_what_still_runs(linked_copy: Path, tmp_path: Path) -> None:
    """Another threshold, --full, --retrain-free frames, a changed project: each runs."""
    first = link(linked_copy)
    assert link(linked_copy, threshold=0.95).summary["mode"] == "incremental"
    assert link(linked_copy, threshold=0.95).summary["mode"] == "unchanged"  # the same threshold again
    assert link(linked_copy).summary["mode"] == "incremental"  # back to the project's
    assert link(linked_copy, full=True).summary["mode"] == "full"
    frames = {n: pl.read_csv(linked_copy.parent / "census.csv", infer_schema=False) for n in ["census"]}
    assert link(linked_copy, sources=frames).summary["mode"] != "unchanged"
    text = linked_copy.read_text()
    linked_copy.write_text(text.replace("threshold: 0.9", "threshold: 0.85"))
    assert link(linked_copy).summary["mode"] == "incremental"
    assert first.summary["mode"] in ("incremental", "full")


def test_a_decision_since_the_last_run_makes_a_run(linked_copy: Path) -> None:
    from idweave.linkage.decisions import split

    first = link(linked_copy)
    big = next(e for e, n in first.entities.group_by("entity_id").len().iter_rows() if n > 1)
    rec = first.entities.filter(pl.col("entity_id") == big).row(0, named=True)
    split(linked_copy, big, [(rec["source"], rec["record_id"])], author="test", reason="test")
    assert link(linked_copy).summary["mode"] == "incremental"


def test_a_file_that_changes_while_a_run_reads_it_is_not_recorded(tiny: Path) -> None:
    project = load_project(tiny)
    found = inc.source_files(project)
    assert found is not None and inc.still_as_found(found) is found
    f = tiny.parent / "census.csv"
    f.write_bytes(f.read_bytes() + b"\n")
    assert inc.still_as_found(found) is None


def test_the_cli_says_nothing_changed(linked_copy: Path) -> None:
    assert run_cli("link", linked_copy).code == 0
    again = run_cli("link", linked_copy)
    assert again.code == 0 and "unchanged" in again.out and "nothing to do" in again.out
