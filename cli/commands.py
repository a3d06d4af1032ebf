"""Commands for the linkage job: link, export, count-pairs, explain, evaluate.

Each opens nothing itself: it calls the library function of the same name and prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from idweave.cli._common import cell, console, err_console, fail, safe, shown_path, stage_progress
from idweave.cli.root import app
from idweave.cli._wait import reads_store

PROJECT = typer.Argument(..., help="The project file (YAML).", exists=False)


@app.command("link")
def link_cmd(
    project: Path = PROJECT,
    threshold: Optional[float] = typer.Option(None, help="Match probability to join records (overrides the project)."),
    retrain: bool = typer.Option(False, "--retrain", help="Train a new model even if the store has one."),
    full: bool = typer.Option(False, "--full", help="Recompute everything instead of only what changed."),
    wait: float = typer.Option(0.0, help="Seconds to wait for another run holding the store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the linkage job: load, block, train (or reuse) the model, score, cluster, store."""
    from idweave.linkage._incremental import unchanged_summary
    from idweave.linkage.project import load_project, threshold_problem

    if threshold is not None and threshold_problem(threshold):
        fail(f"--threshold: {threshold_problem(threshold)}")
    proj = load_project(project)
    # A rerun with nothing to do is told before the pipeline (scoring, Splink, clustering) is
    # even imported: link() asks the same, but importing it is most of such a run's time.
    s = None if full or retrain else unchanged_summary(proj, threshold)
    if s is None:
        from idweave.linkage import link

        with _link_progress(not as_json) as progress:
            s = link(proj, threshold=threshold, retrain=retrain, full=full, progress=progress, wait=wait).summary
    if as_json:
        console.print_json(json.dumps(s, default=str))
        return
    t = Table(title=f"idweave link: run {s['run_id']} ({s.get('mode', 'full')})", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("run", cell(_run_kind(s)))
    for src, n in s["records_per_source"].items():
        t.add_row(cell(f"records in {src}"), f"{n:,}")
    if s.get("unparsed_dates"):
        for col, n in s["unparsed_dates"].items():
            t.add_row(cell(f"unparsed dates in {col}"), f"{n:,}")
    if s.get("erased_skipped"):
        t.add_row("erased records skipped", f"{s['erased_skipped']:,}")
    t.add_row("candidate pairs", f"{s['candidate_pairs']:,} ({s['pairs_per_record']} per record)")
    t.add_row("threshold", f"{s['threshold']}" + (" (chosen by the model)" if s["threshold_chosen"] else ""))
    t.add_row("links at threshold", f"{s['links']:,}")
    t.add_row("entities", f"{s['entities']:,}")
    t.add_row("model", f"{s['model_version']} ({'trained' if s['retrained'] else 'reused'})")
    t.add_row("events", f"{s['events']:,}")
    console.print(t)
    sizes = Table(title="entity sizes")
    sizes.add_column("records per entity", justify="right")
    sizes.add_column("entities", justify="right")
    for k, v in s["entity_sizes"].items():
        sizes.add_row(k, f"{v:,}")
    console.print(sizes)
    times = Table(title="time per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for k, v in s["timings"].items():
        times.add_row(k, f"{v:.2f}")
    console.print(times)
    if s.get("retrained") and s.get("training_log"):
        console.print("training notes:")
        for line in s["training_log"]:
            console.print(f"  - {line}", highlight=False)


# What the long stages of a run count, for the progress display.
_COUNTED = {"score": "pairs scored", "complete": "completion pairs scored"}


@contextmanager
def _link_progress(enabled: bool) -> Iterator[Callable[..., None]]:
    """The progress display of ``idweave link`` on a terminal: one line per stage, and for
    the stages that count (pairs scored) a bar with the counts, the time taken and an ETA.
    Elsewhere (a pipe, a log) one line per finished stage, as every long command does."""
    if not enabled or not console.is_terminal and os.environ.get("IDWEAVE_PROGRESS") != "1":
        with stage_progress(enabled) as plain:
            yield plain
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("eta"),
                  TimeRemainingColumn(), console=err_console, transient=False) as prog:
        tasks: dict[str, Any] = {}

        def cb(stage: str, state: str, done: int | None = None, total: int | None = None) -> None:
            if state == "start":
                tasks[stage] = prog.add_task(stage, total=None, counts="")
            elif state == "advance" and stage in tasks:
                what = _COUNTED.get(stage, "done")
                prog.update(tasks[stage], completed=done, total=total, counts=f"{done:,} / {total:,} {what}")
            elif stage in tasks:
                task = prog.tasks[tasks[stage]]
                end = task.total if task.total is not None else 1
                prog.update(tasks[stage], completed=end, total=end)

        yield cb


def _run_kind(s: dict) -> str:
    """How the summary names the kind of run: incremental or full (and why, if given)."""
    mode = s.get("mode") or ("incremental" if s.get("incremental") else "full")
    why = s.get("mode_reason") or s.get("why")
    return f"{mode}" + (f": {why}" if why else "")


@app.command("export")
@reads_store
def export_cmd(
    project: Path = PROJECT,
    out: Path = typer.Option(..., "--out", help="Output file: .csv or .parquet."),
    with_attributes: bool = typer.Option(False, "--with-attributes", help="Add the cleaned attributes."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Add only these attributes (a,b)."),
    golden: bool = typer.Option(False, "--golden", help="One golden record per entity instead (survivorship)."),
) -> None:
    """Write one row per record: source, record_id, entity_id."""
    from idweave.linkage.export import export

    if golden:
        from idweave.linkage.golden import golden as golden_records

        g = golden_records(project, out)
        console.print(f"wrote {g.height:,} golden records to {safe(shown_path(out))}", highlight=False)
        return
    df = export(project, out, with_attributes=with_attributes,
                columns=columns.split(",") if columns is not None else None)
    console.print(f"wrote {df.height:,} records in {df['entity_id'].n_unique():,} entities to {safe(shown_path(out))}",
                  highlight=False)
    attrs = [c for c in df.columns if c not in ("source", "record_id", "entity_id")]
    err_console.print("attributes written: " + (safe(", ".join(attrs)) if attrs else "none (ids only)"),
                      highlight=False)


@app.command("count-pairs")
@reads_store
def count_pairs_cmd(project: Path = PROJECT) -> None:
    """Before any scoring: the pairs each blocking rule adds, per source pair, and the total."""
    from idweave.blocking.rules import PAIR_BUDGET
    from idweave.linkage.export import count_pairs

    df = count_pairs(project)
    index = {r: i + 1 for i, r in enumerate(df["rule"].unique(maintain_order=True).to_list())}
    for sp in df["sources"].unique(maintain_order=True).to_list():
        part = df.filter(df["sources"] == sp)
        t = Table(title=f"candidate pairs: {safe(sp)}" if sp != "all" else "candidate pairs: all sources")
        for c, j in (("rule", "left"), ("added", "right"), ("cumulative", "right"), ("share of possible", "right"),
                     ("skipped blocks", "right"), ("#", "right"), ("cap", "right"), ("pairs made", "right"),
                     ("blocks above the cap", "left")):
            t.add_column(c, justify=j)
        for r in part.iter_rows(named=True):
            sharpens = f" (sharpens #{index[r['sharpens']]})" if r["sharpens"] is not None else ""
            child = part.filter(part["sharpens"] == r["rule"])["rule"].to_list()
            fate = (f"sharpened by #{index[child[0]]}" if r["big_blocks"] == "sharpened" and child
                    else r["big_blocks"])
            t.add_row(cell(r["rule"] + sharpens), f"{r['pairs_added']:,}", f"{r['cumulative']:,}",
                      f"{r['share_of_possible']:.4%}", f"{r['skipped_blocks']:,}", str(index[r["rule"]]),
                      f"{r['cap']:,}", f"{r['pairs_made']:,}", fate)
        console.print(t)
    total = df.filter(df["sources"] == "all")
    if total.height:
        last = total.row(-1, named=True)
        n = int(last["budget"] / PAIR_BUDGET)
        made = last["cumulative"]
        console.print(f"budget: {PAIR_BUDGET} pairs per record x {n:,} records = {last['budget']:,} pairs; "
                      f"the rules make {made:,} ({made / max(n, 1):.1f} per record): "
                      + ("within the budget" if made <= last["budget"] else "over the budget"), highlight=False)
        console.print(f"total: {last['cumulative']:,} candidate pairs of {last['possible']:,} possible "
                      f"({last['share_of_possible']:.4%})")


@app.command("explain")
@reads_store
def explain_cmd(
    project: Path = PROJECT,
    first: str = typer.Argument(..., help="SOURCE:ID of a record (or an entity id, see review commands)."),
    second: Optional[str] = typer.Argument(None, help="SOURCE:ID of the other record."),
) -> None:
    """Why two records are (or are not) one entity: each comparison's level and weight."""
    from idweave.linkage.explain import explain_pair, parse_record_ref

    if second is None:
        from idweave.cli.review_commands import print_entity_explanation

        print_entity_explanation(project, first)
        return
    ex = explain_pair(project, parse_record_ref(first), parse_record_ref(second))
    t = Table(title=f"{safe(first)} vs {safe(second)}")
    for c in ("comparison", "left", "right", "level", "weight"):
        t.add_column(c, justify="right" if c == "weight" else "left")
    t.add_row("prior", "", "", "", f"{ex.prior_weight:+.2f}")
    for c in ex.comparisons:
        # Values come from the data: escape them so rich never reads them as markup.
        t.add_row(cell(c.attribute), cell(c.left), cell(c.right), cell(c.level), f"{c.weight:+.2f}")
    t.add_row("[bold]total[/]", "", "", f"probability {ex.match_probability:.4f}", f"[bold]{ex.match_weight:+.2f}[/]")
    console.print(t)
    blocked = safe(", ".join(ex.blocking_rules)) if ex.blocking_rules else "no rule: the pair is never compared"
    # One line each, however long (a script may read them): the terminal wraps, not rich.
    console.print(f"blocked by: {blocked}", soft_wrap=True)
    console.print(f"scored in the last run: {'yes' if ex.candidate_in_last_run else 'no'}")
    console.print(f"same entity: {'yes' if ex.same_entity else 'no'} ({safe(ex.entity_left)} / "
                  f"{safe(ex.entity_right)}); threshold {ex.threshold}", highlight=False)
    for n in ex.notes:
        console.print(f"note: {safe(n)}", soft_wrap=True)


@app.command("evaluate")
@reads_store
def evaluate_cmd(
    project: Path = PROJECT,
    truth: str = typer.Option(..., "--truth", help="A column in the sources holding the true entity."),
    chart: Optional[Path] = typer.Option(None, "--chart", help="Write the threshold sweep as an HTML chart."),
    errors: int = typer.Option(10, "--errors", help="How many false and missed links to list."),
) -> None:
    """Precision, recall and F1 (pairwise and B-cubed) of the stored entities, a threshold
    sweep, and the worst errors."""
    from idweave.linkage.evaluate import evaluate

    rep = evaluate(project, truth=truth, max_errors=errors)
    for n in rep.notes:
        err_console.print(f"[bold yellow]warning:[/] {safe(n)}", highlight=False, soft_wrap=True)
    m = rep.metrics
    t = Table(title=f"evaluation against '{safe(truth)}' (threshold {rep.threshold})")
    for c in ("metric", "precision", "recall", "F1"):
        t.add_column(c, justify="right" if c != "metric" else "left")
    t.add_row("pairwise", f"{m['pairwise_precision']:.4f}", f"{m['pairwise_recall']:.4f}", f"{m['pairwise_f1']:.4f}")
    t.add_row("B-cubed", f"{m['bcubed_precision']:.4f}", f"{m['bcubed_recall']:.4f}", f"{m['bcubed_f1']:.4f}")
    console.print(t)
    console.print(f"entities: {m['entities']:,} (true: {m['true_entities']:,}); "
                  f"true pairs kept by blocking: {rep.blocking_recall:.4f}")
    sw = Table(title="threshold sweep")
    for c in ("threshold", "pairwise P", "pairwise R", "pairwise F1", "B-cubed F1", "entities"):
        sw.add_column(c, justify="right")
    best = max(rep.sweep["pairwise_f1"])
    for r in rep.sweep.iter_rows(named=True):
        style = "bold green" if r["pairwise_f1"] == best else None
        sw.add_row(f"{r['threshold']}", f"{r['pairwise_precision']:.4f}", f"{r['pairwise_recall']:.4f}",
                   f"{r['pairwise_f1']:.4f}", f"{r['bcubed_f1']:.4f}", f"{r['entities']:,}", style=style)
    console.print(sw)
    for title, df in (("false links (same entity, different truth)", rep.false_links),
                      ("missed links (scored, truth same, entities differ)", rep.missed_links)):
        if df.height:
            e = Table(title=title)
            for c in ("left", "right", "probability"):
                e.add_column(c)
            for r in df.iter_rows(named=True):
                e.add_row(cell(f"{r['source_l']}:{r['record_id_l']}"), cell(f"{r['source_r']}:{r['record_id_r']}"),
                          f"{r['match_probability']:.4f}")
            console.print(e)
    if chart is not None:
        from idweave.linkage.charts import sweep_chart_html

        chart.write_text(sweep_chart_html(rep.sweep, title=f"threshold sweep against '{truth}'",
                                          current=rep.threshold))
        console.print(f"chart written to {safe(shown_path(chart))}", highlight=False)
