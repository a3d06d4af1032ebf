"""What ``idweave link`` does before and while it runs (issue 14, items 4 and 5): a rerun that
finds nothing to do imports none of the pipeline (scoring, Splink, clustering, numpy), and a
run tells a progress callback how many pairs it has scored of how many."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

from conftest import run_cli
from idweave.linkage import _incremental as inc
from idweave.linkage import link
from idweave.linkage.project import load_project

ROOT = Path(__file__).resolve().parents[1]

# The modules a no-op rerun must not pay for.
_HEAVY = ("idweave.linkage.pipeline", "idweave.linkage.scoring", "idweave.linkage.cluster", "splink", "numpy")


def _probe(project: Path) -> dict:
    """``idweave link PROJECT --json`` in a new process under ``-X importtime``: its mode and
    which of the heavy modules it imported."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "idweave.cli.app", "link", str(project), "--json"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    return {"mode": json.loads(p.stdout)["mode"], "imported": [m for m in _HEAVY if m in imported]}


def test_a_rerun_with_nothing_to_do_imports_no_pipeline(linked_copy: Path) -> None:
    link(linked_copy)  # this copy's files are recorded
    assert _probe(linked_copy) == {"mode": "unchanged", "imported": []}


def test_a_rerun_with_something_to_do_runs_the_pipeline(linked_copy: Path) -> None:
    link(linked_copy)
    text = linked_copy.read_text()
    linked_copy.write_text(text.replace("threshold: 0.9", "threshold: 0.85"))
    probe = _probe(linked_copy)
    assert probe["mode"] == "incremental" and "idweave.linkage.cluster" in probe["imported"]


def test_the_unchanged_summary_is_what_link_returns(linked_copy: Path) -> None:
    first = link(linked_copy)
    summary = inc.unchanged_summary(load_project(linked_copy), None)
    again = link(linked_copy).summary
    assert summary is not None and summary["run_id"] == first.run_id == again["run_id"]
    assert {k: v for k, v in summary.items() if k != "timings"} == {k: v for k, v in again.items() if k != "timings"}
    assert inc.unchanged_summary(load_project(linked_copy), 0.97) is None  # another threshold runs


def test_progress_counts_the_pairs_scored(linked_copy: Path) -> None:
    calls: list[tuple] = []

    def progress(stage: str, state: str, done: int | None = None, total: int | None = None) -> None:
        calls.append((stage, state, done, total))

    r = link(linked_copy, full=True, progress=progress)
    counts = [(d, t) for s, st, d, t in calls if s == "score" and st == "advance"]
    assert counts and counts[-1][0] == counts[-1][1] == r.summary["candidate_pairs"]
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)
    stages = [s for s, st, *_ in calls if st == "start"]
    assert stages == [s for s, st, *_ in calls if st == "end"] and {"score", "cluster", "store"} <= set(stages)
    # Each count lies between its stage's start and end.
    at = calls.index(("score", "start", None, None))
    assert all(at < i < calls.index(("score", "end", None, None))
               for i, c in enumerate(calls) if c[:2] == ("score", "advance"))


def test_a_two_argument_callback_gets_no_counts(linked_copy: Path) -> None:
    calls: list[tuple[str, str]] = []
    link(linked_copy, full=True, progress=lambda stage, state: calls.append((stage, state)))
    assert calls and {state for _, state in calls} == {"start", "end"}


def test_scoring_in_pieces_gives_the_scores_of_one_piece(linked_tiny) -> None:
    from idweave.linkage.graph import Store
    from idweave.linkage.model import TrainedModel
    from idweave.linkage.scoring import stored_model
    from idweave.linkage.sources import load_records

    project = load_project(linked_tiny.project)
    recs = (load_records(project).sort("source", "record_id").with_row_index("rid")
            .with_columns(pl.col("rid").cast(pl.Int64)))
    with Store.open(project.store, read_only=True) as st:
        settings, tf, _ = stored_model(st)
    model = TrainedModel(settings, tf, [])
    n = recs.height
    pairs = pl.DataFrame({"rid_l": [i for i in range(n) for j in range(i + 1, n) if (i * 7 + j) % 5 == 0],
                          "rid_r": [j for i in range(n) for j in range(i + 1, n) if (i * 7 + j) % 5 == 0]})
    pairs = pairs.with_columns(pl.lit(0, pl.Int32).alias("rule"))
    seen: list[tuple[int, int]] = []
    pieces = inc.score_chunks(recs, pairs, model, chunk=37, count=lambda d, t: seen.append((d, t)))
    whole = inc.score_chunks(recs, pairs, model)
    assert len(seen) > 3 and seen[-1] == (pairs.height, pairs.height)
    assert inc.canonical_scores(pieces, model.prior).equals(inc.canonical_scores(whole, model.prior))
    assert pieces.select("rid_l", "rid_r").equals(pairs.sort("rid_l", "rid_r").select("rid_l", "rid_r"))


def test_the_cli_shows_the_counts(linked_copy: Path, monkeypatch) -> None:
    monkeypatch.setenv("IDWEAVE_PROGRESS", "1")  # the display of a terminal, in a test
    r = run_cli("link", linked_copy, "--full")
    assert r.code == 0 and "pairs scored" in r.err
