"""Commands for accountable identity: subject-access, forget, model.

Each calls the library function of the same name (idweave.linkage.subject, .forget,
.model_report) and prints. Every value from the data is printed as a rich ``Text`` of
:func:`~idweave.linkage.subject.printable` (control characters escaped), never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from idweave.cli._common import console
from idweave.cli._wait import reads_store
from idweave.cli.root import app

PROJECT = typer.Argument(..., help="The project file (YAML).", exists=False)


def _t(value) -> Text:
    from idweave.linkage.subject import printable

    return Text(printable(value))


def _write_page(path: Path, page: str) -> None:
    from idweave.linkage.errors import IdweaveError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise IdweaveError(f"cannot write the page: {exc.strerror}", file=str(path)) from None


@app.command("subject-access")
@reads_store
def subject_access_cmd(
    project: Path = PROJECT,
    record_ref: Optional[str] = typer.Argument(None, metavar="[SOURCE:ID]", help="A record of the person."),
    record: Optional[str] = typer.Option(None, "--record", help="Or the person as JSON attributes (found by lookup)."),
    date_format: Optional[str] = typer.Option(None, "--date-format", help="strftime format of --record's dates."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write the report as a self-contained HTML page."),
) -> None:
    """Everything the store holds about one person: records, links and their evidence,
    decisions, history, runs and models. Writes nothing to the store."""
    from idweave.linkage.subject import render_html, subject_access

    rep = subject_access(project, record=record_ref, record_json=record, date_format=date_format)
    if html_out is not None:
        _write_page(html_out, render_html(rep))
    if as_json:
        console.print_json(json.dumps(rep.to_dict(), default=str))
        return
    console.print(Text("subject access: ") + _t(rep.asked))
    for n in rep.notes:
        console.print(_t(n))
    if rep.entity_id is None:
        return
    head = Text(f"entity {rep.entity_id} ({rep.status}), threshold {rep.threshold}")
    if len(rep.lineage) > 1:
        head += Text(f"; ids merged into it: {', '.join(rep.lineage[1:])}")
    console.print(head)
    if rep.match:
        console.print(Text(f"found by lookup: match probability {rep.match['match_probability']:.4f} "
                           "(best record ") + _t(rep.match["best_record"]) + Text(")"))
    if rep.candidates:
        t = Table(title="other candidates above the review band")
        for c in ("entity", "probability", "best record"):
            t.add_column(c)
        for c in rep.candidates:
            t.add_row(c["entity_id"], f"{c['match_probability']:.4f}", _t(c["best_record"]))
        console.print(t)
    console.print(Text(f"records held ({len(rep.records)}):", style="bold"))
    for r in rep.records:
        t = Table(title=None, show_header=False, box=None, padding=(0, 2))
        t.add_column("attribute")
        t.add_column("value")
        for a, v in r["attributes"].items():
            t.add_row(a, _t(v))
        console.print(_t(f"{r['source']}:{r['record_id']}") + Text(f"  (seen in runs {r['first_seen_run']} to "
                                                                      f"{r['last_seen_run']})"))
        console.print(t)
    t = Table(title=f"links between them ({len(rep.links)})")
    for c in ("left", "right", "probability", "joins", "evidence"):
        t.add_column(c)
    for lk in rep.links:
        t.add_row(_t(lk["left"]), _t(lk["right"]), f"{lk['match_probability']:.4f}", "yes" if lk["joins"] else "no",
                  _t(lk["in_words"]))
    console.print(t)
    t = Table(title=f"decisions ({len(rep.decisions)})")
    for c in ("#", "when", "who", "action", "why", "in force"):
        t.add_column(c)
    for d in rep.decisions:
        t.add_row(str(d["decision_id"]), _t(d["decided_at"]), _t(d["author"]), _t(d["action"]), _t(d["reason"]),
                  "yes" if d["in_force"] else "no")
    console.print(t)
    t = Table(title=f"history ({len(rep.events)} events)")
    for c in ("event", "run", "decision", "what", "entity", "other", "record", "detail"):
        t.add_column(c)
    for e in rep.events:
        t.add_row(str(e["event_id"]), _t(e["run_id"]), _t(e["decision_id"]), _t(e["type"]), _t(e["entity_id"]),
                  _t(e["other_entity_id"]), _t(f"{e['source']}:{e['record_id']}" if e["source"] else None),
                  _t(e["detail"]))
    console.print(t)
    t = Table(title="runs and models")
    for c in ("run", "started", "mode", "model version", "threshold"):
        t.add_column(c)
    for r in rep.runs:
        t.add_row(str(r["run_id"]), _t(r["started_at"]), _t(r["mode"]), _t(r["model_version"]), _t(r["threshold"]))
    console.print(t)
    if html_out is not None:
        console.print(Text(f"wrote {html_out}"))


@app.command("forget")
@reads_store
def forget_cmd(
    project: Path = PROJECT,
    record_ref: str = typer.Argument(..., metavar="SOURCE:ID", help="The record to erase."),
    reason: str = typer.Option(..., "--reason", help="Why (kept with the erasure)."),
    author: Optional[str] = typer.Option(None, "--author", help="Who erases (default: $IDWEAVE_AUTHOR or the user)."),
) -> None:
    """Erase a record: its attributes, links, block keys and place in decisions; its entity
    is re-resolved (a bridge's entity splits). Later runs refuse or skip it."""
    from idweave.linkage.explain import parse_record_ref
    from idweave.linkage.forget import forget

    s, r = parse_record_ref(record_ref)
    res = forget(project, s, r, reason=reason, author=author)
    now = ", ".join(res.entities) if res.entities else "none (it was the entity's only record; the entity is retired)"
    console.print(Text(f"erased {s}:{r} (decision #{res.decision_id}): {res.moved} record(s) moved, "
                       f"{res.events} event(s); entities now: {now}"))
    for n in res.notes:
        console.print(_t(n))


@app.command("model")
@reads_store
def model_cmd(
    project: Path = PROJECT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write it as a page with a match-weight chart."),
) -> None:
    """The stored model, readable: every comparison's levels with m, u, match weight and the
    stored links in each; the prior; the training log; where the model came from."""
    from idweave.linkage.model_report import in_words, model_report, render_html

    rep = model_report(project)
    if html_out is not None:
        _write_page(html_out, render_html(rep))
    if as_json:
        console.print_json(json.dumps(rep.to_dict(), default=str))
        return
    o = rep.origin
    per = ", ".join(f"{k} {v:,}" for k, v in (o.get("records_per_source") or {}).items())
    console.print(_t(f"model {rep.version}: trained in run {o.get('run')} ({o.get('mode')}) at {o.get('trained_at')} "
                     f"on {o.get('records')} records" + (f" ({per})" if per else "") +
                     f", Splink {o.get('splink_version')}"))
    console.print(_t(f"prior {rep.prior:.4g} ({rep.prior_weight:+.2f} bits); threshold of the last run "
                     f"{rep.threshold}; {rep.links:,} stored links"))
    t = Table(title="comparisons, most similar level first")
    for c, j in (("comparison", "left"), ("level", "left"), ("m", "right"), ("u", "right"),
                 ("weight (bits)", "right"), ("tf", "left"), ("stored links", "right")):
        t.add_column(c, justify=j)
    for c in rep.comparisons:
        for i, lv in enumerate(c["levels"]):
            t.add_row(_t(c["comparison"] if i == 0 else ""), _t(lv["level"]),
                      "" if lv["m"] is None else f"{lv['m']:.4g}", "" if lv["u"] is None else f"{lv['u']:.4g}",
                      "" if lv["weight"] is None else f"{lv['weight']:+.2f}", "yes" if lv["term_frequency"] else "",
                      f"{lv['links']:,}")
        t.add_row("", "null (missing)", "", "", "0", "", f"{c['null_links']:,}")
    console.print(t)
    console.print(Text("in words:", style="bold"))
    for line in in_words(rep)[:1]:
        console.print(Text("  ") + _t(line))
    console.print(Text("training log:", style="bold"))
    for line in rep.training_log or ["none kept"]:
        console.print(Text("  - ") + _t(line))
    for n in rep.notes:
        console.print(_t(n))
    if html_out is not None:
        console.print(Text(f"wrote {html_out}"))
