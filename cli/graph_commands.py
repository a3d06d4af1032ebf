"""Commands that read the identity graph: lookup, history, diff.

Each calls the library function of the same name (idweave.linkage.lookup, .history) and
prints. Values from the data are printed as rich Text, never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from idweave.cli._common import cell, console, safe, term
from idweave.cli.root import app
from idweave.cli._wait import reads_store

PROJECT = typer.Argument(..., help="The project file (YAML).", exists=False)


def _parse_records(text: str) -> dict | list[dict]:
    from idweave.linkage.errors import LookupInputError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LookupInputError(f"--record is not valid JSON ({exc.msg} at character {exc.pos})",
                               hint='write it as \'{"first_name": "Ann", "birth_date": "1980-03-25"}\'') from None
    if isinstance(value, dict):
        return value  # one record: errors name no position
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    raise LookupInputError("--record must be a JSON object (or a list of objects) of attribute -> value")


@app.command("lookup")
@reads_store
def lookup_cmd(
    project: Path = PROJECT,
    record: str = typer.Option(..., "--record", help="The record as JSON: '{\"first_name\": ..., ...}' (or a list)."),
    top: int = typer.Option(5, "--top", help="How many entities to show per record."),
    source: Optional[str] = typer.Option(None, "--source", help="The source the record comes from, if any."),
    date_format: Optional[str] = typer.Option(None, "--date-format", help="strftime format of its dates."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON lines."),
) -> None:
    """The entities that best match a record: probability and the evidence of the best pair.
    Writes nothing."""
    from idweave.linkage.lookup import lookup

    res = lookup(project, _parse_records(record), top=top, source=source, date_format=date_format)
    if as_json:
        for row in res.iter_rows(named=True):
            console.print_json(json.dumps(row, default=str))
        return
    if res.height == 0:
        console.print("no candidate: no stored record shares a blocking key with this record")
        return
    comps = [c[len("level_"):] for c in res.columns if c.startswith("level_")]
    for q in res["query"].unique(maintain_order=True).to_list():
        part = res.filter(res["query"] == q)
        t = Table(title=f"record {q + 1}: best entities" if res["query"].n_unique() > 1 else "best entities")
        for c, j in (("rank", "right"), ("entity", "left"), ("probability", "right"), ("match", "left"),
                     ("records", "right"), ("best record", "left"), ("evidence (bits)", "left")):
            t.add_column(c, justify=j)
        for r in part.iter_rows(named=True):
            ev = sorted(((c, r[f"level_{c}"], r[f"w_{c}"]) for c in comps if r[f"level_{c}"] != "null"),
                        key=lambda e: -abs(e[2]))
            evidence = ", ".join(f"{c} {lvl} {w:+.1f}" for c, lvl, w in ev[:5])
            t.add_row(str(r["rank"]), cell(r["entity_id"]), f"{r['match_probability']:.4f}",
                      "yes" if r["is_match"] else "no", str(r["records"]),
                      cell(f"{r['source']}:{r['record_id']}"), cell(evidence))
        console.print(t)


@app.command("history")
@reads_store
def history_cmd(
    project: Path = PROJECT,
    entity_id: str = typer.Argument(..., help="An entity id (an old, merged id is followed to its survivor)."),
    as_json: bool = typer.Option(False, "--json", help="Print the events as JSON lines."),
) -> None:
    """What happened to an entity, run by run: created, records added, moved, merged, split."""
    from idweave.linkage.history import history, resolve_entity

    res = resolve_entity(project, entity_id)
    events = history(project, entity_id)
    if as_json:
        for row in events.iter_rows(named=True):
            console.print_json(json.dumps(row, default=str))
        return
    if res.redirected:
        when = (f" in run {res.merged_run}" if res.merged_run else
                f" by decision {res.merged_decision}" if res.merged_decision else "")
        console.print(f"{safe(entity_id)} was merged into {safe(res.entity_id)}{when}; showing the history of "
                      f"{safe(res.entity_id)}",
                      highlight=False)
    others = [e for e in res.lineage if e != res.entity_id]
    status = safe(f"{res.entity_id}: {res.status}" + (f"; ids merged into it: {', '.join(others)}" if others else ""))
    console.print(status, highlight=False)
    t = Table(title=f"history of {safe(res.entity_id)}")
    for c in ("run", "decision", "event", "entity", "other entity", "record", "detail"):
        t.add_column(c)
    for r in events.iter_rows(named=True):
        rec = f"{r['source']}:{r['record_id']}" if r["source"] else ""
        t.add_row("" if r["run_id"] is None else str(r["run_id"]),
                  "" if r["decision_id"] is None else str(r["decision_id"]),
                  cell(r["type"]), cell(r["entity_id"]), cell(r["other_entity_id"]), cell(rec), cell(r["detail"] or ""))
    console.print(t)


@app.command("diff")
@reads_store
def diff_cmd(
    project: Path = PROJECT,
    run: int = typer.Option(..., "--run", help="The run number (see `idweave link`)."),
    as_json: bool = typer.Option(False, "--json", help="Print the changes as JSON lines."),
) -> None:
    """What one run changed: entities created, merged, split, retired; records added,
    moved, changed, removed."""
    from idweave.linkage.history import diff

    d = diff(project, run)
    if as_json:
        for row in d.iter_rows(named=True):
            console.print_json(json.dumps(row, default=str))
        return
    counts = d.group_by("change").len().sort("change")
    t = Table(title=f"run {run}: changes")
    t.add_column("change")
    t.add_column("count", justify="right")
    for change, n in counts.iter_rows():
        t.add_row(change, f"{n:,}")
    if d.height == 0:
        console.print(f"run {run} changed nothing")
        return
    console.print(t)
    ent = d.filter(~d["change"].str.starts_with("record_"))
    if ent.height:
        e = Table(title="entities")
        for c in ("change", "entity", "other entity", "detail"):
            e.add_column(c)
        for r in ent.iter_rows(named=True):
            e.add_row(cell(r["change"]), cell(r["entity_id"]), cell(r["other_entity_id"]), cell(r["detail"] or ""))
        console.print(e)
    rec = d.filter(d["change"].str.starts_with("record_"))
    if rec.height:
        r_t = Table(title="records")
        for c in ("change", "record", "entity", "from entity"):
            r_t.add_column(c)
        for r in rec.iter_rows(named=True):
            r_t.add_row(cell(r["change"]), cell(f"{r['source']}:{r['record_id']}"), cell(r["entity_id"]),
                        cell(r["other_entity_id"]))
        console.print(r_t)
