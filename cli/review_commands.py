"""Review commands: review (the queue, or --interactive), show, merge, split, keep-apart,
confirm, undo, decisions, export-labels, evaluate-labels; and the entity form of explain.

Each calls the library function of the same name (idweave.linkage.review, explain,
evaluate) and prints. Values from the data are printed as rich Text, never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from idweave.cli._common import cell, console, safe, shown_path, term
from idweave.cli.root import app
from idweave.cli._wait import reads_store

PROJECT = typer.Argument(..., help="The project file (YAML).", exists=False)
AUTHOR = typer.Option(None, "--author", help="Who decides (default: $IDWEAVE_AUTHOR, else the OS user).")
REASON = typer.Option(..., "--reason", help="Why: kept with the decision in the store.")

_KEYS_ENTITY = {"c": "confirm", "s": "split", "n": "skip", "q": "quit"}
_KEYS_PAIR = {"m": "merge", "k": "keep apart", "n": "skip", "q": "quit"}


def _rec(rec: tuple[str, str]) -> str:
    return f"{rec[0]}:{rec[1]}"


def _top_evidence(evidence: list[tuple[str, str, float]], n: int = 4) -> str:
    parts = sorted((e for e in evidence if e[1] != "null"), key=lambda e: -abs(e[2]))[:n]
    return ", ".join(f"{a} {lvl} {w:+.1f}" for a, lvl, w in parts)


# ---------------------------------------------------------------------------- rendering
def render_entity(view: Any, *, numbered: bool = False) -> list[Any]:
    """The side-by-side view of :class:`idweave.linkage.review.EntityView` as rich renderables."""
    out: list[Any] = []
    recs = view.records
    title = f"entity {safe(view.entity_id)}" + (f" (asked for {safe(view.asked)})" if view.asked != view.entity_id
                                                else "") + f": {recs.height} records, {safe(view.status)}"
    wide = recs.height <= 6
    t = Table(title=title, show_lines=False)
    labels = [(f"#{i + 1} " if numbered else "") + _rec(r) for i, r in
              enumerate(recs.select("source", "record_id").iter_rows())]
    if wide:
        t.add_column("attribute")
        for lab in labels:
            t.add_column(cell(lab), overflow="fold")
        for a in view.attributes:
            cells = [cell(a)]
            for i, v in enumerate(recs[a].to_list()):
                cells.append(_marked(v, view.diffs.get((i, a), [])))
            t.add_row(*cells)
    else:
        t.add_column("record")
        for a in view.attributes:
            t.add_column(a)
        for i, lab in enumerate(labels):
            t.add_row(cell(lab), *[_marked(v, view.diffs.get((i, a), []))
                                   for a, v in zip(view.attributes, [recs[a][i] for a in view.attributes])])
    out.append(t)
    out.append(Text("highlighted: characters that differ from the commonest value of the attribute", style="dim"))
    if view.links:
        lt = Table(title=f"links among its records (threshold {view.threshold})")
        for c in ("left", "right", "probability", "weight", "strongest evidence"):
            lt.add_column(c, justify="right" if c in ("probability", "weight") else "left")
        for ln in view.links:
            below = ln["match_probability"] < view.threshold
            lt.add_row(cell(_rec(ln["left"])), cell(_rec(ln["right"])), f"{ln['match_probability']:.4f}",
                       "" if ln["match_weight"] is None else f"{ln['match_weight']:+.2f}",
                       cell(_top_evidence(ln["evidence"])), style="dim" if below else None)
        out.append(lt)
    if view.nearby.height:
        nt = Table(title="nearest records of other entities")
        for c in ("record", "other record", "other entity", "probability"):
            nt.add_column(c, justify="right" if c == "probability" else "left")
        for r in view.nearby.iter_rows(named=True):
            nt.add_row(cell(f"{r['source']}:{r['record_id']}"), cell(f"{r['other_source']}:{r['other_record_id']}"),
                       cell(r["other_entity_id"]), f"{r['match_probability']:.4f}")
        out.append(nt)
    if view.decisions:
        out.append(Text("decisions about these records: " + ", ".join(f"#{d}" for d in view.decisions)))
    return out


def _marked(value: Any, spans: list[tuple[int, int]]) -> Text:
    if value is None:
        return Text("·", style="dim")
    raw = str(value)
    text = Text(term(raw))
    if text.plain != raw:  # escapes shift the character positions: no highlight
        return text
    for a, b in spans:
        text.stylize("bold red reverse", a, b)
    return text


def _queue_table(items: list[Any], title: str) -> Table:
    t = Table(title=title)
    for c in ("rank", "entity", "reason", "size", "link", "detail"):
        t.add_column(c, justify="right" if c in ("rank", "size", "link") else "left")
    for it in items:
        ent = it.entity_id if it.other_entity_id is None else f"{it.entity_id} + {it.other_entity_id}"
        size = str(it.size) if it.other_size is None else f"{it.size} + {it.other_size}"
        reason = it.reason.replace("_", " ")
        if len(it.reasons) > 1:
            reason += f" (+{len(it.reasons) - 1})"
        t.add_row(str(it.rank), cell(ent), reason, size, "" if it.link is None else f"{it.link:.3f}", cell(it.detail))
    return t


def _print_result(res: Any) -> None:
    ents = ", ".join(res.entities)
    console.print(f"decision #{res.decision_id} ({res.action.replace('_', ' ')}) recorded: "
                  f"{res.moved} record(s) moved, {res.events} event(s); entities now: {safe(ents)}", highlight=False)
    for n in res.notes:
        console.print(f"note: {safe(n)}", highlight=False)


# ---------------------------------------------------------------------------- commands
@app.command("review")
@reads_store
def review_cmd(
    project: Path = PROJECT,
    limit: int = typer.Option(20, "--limit", help="How many items to list (0: all)."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Walk the queue and decide item by item."),
    margin_bits: float = typer.Option(3.0, "--margin-bits", help="Width of the uncertain band, in match-weight bits."),
    large_size: Optional[int] = typer.Option(None, "--large-size", help="Entities above this many records are listed."),
    show_all: bool = typer.Option(False, "--all", help="Include entities already reviewed."),
    author: Optional[str] = AUTHOR,
    as_json: bool = typer.Option(False, "--json", help="Print the items as JSON."),
) -> None:
    """The review queue: doubtful entities and entity pairs, most likely wrong first, each with its reason."""
    from idweave.linkage import review

    kw = dict(margin_bits=margin_bits, large_size=large_size, include_reviewed=show_all)
    if interactive:
        _interactive(project, author, kw)
        return
    every = review.queue(project, **kw)
    items = every[:limit] if limit else every
    if as_json:
        console.print_json(json.dumps([i.to_dict() for i in items], default=str))
        return
    total = len(every)
    console.print(_queue_table(items, f"review queue: {total} item(s)" + (f", first {len(items)}" if total > len(items) else "")))
    if items:
        console.print("next: idweave show PROJECT ENTITY_ID, then merge / split / keep-apart / confirm "
                      "(or review --interactive)", highlight=False)


def _interactive(project: Path, author: Optional[str], kw: dict[str, Any]) -> None:
    from idweave.linkage import review

    done: set[tuple[str, str | None]] = set()
    made = skipped = 0
    while True:
        items = review.queue(project, **kw)
        pending = [i for i in items if (i.entity_id, i.other_entity_id) not in done]
        if not pending:
            console.print("the queue is empty" if not items else "no more items in the queue")
            break
        it = pending[0]
        done.add((it.entity_id, it.other_entity_id))
        # A rule as wide as a terminal, even when the output is a pipe (and the console wide).
        console.print(Rule(f"item {it.rank} of {len(items)}: {it.reason.replace('_', ' ')}"),
                      width=min(console.width, 100))
        console.print(cell(it.detail))
        if len(it.reasons) > 1:
            console.print("also: " + ", ".join(r.replace("_", " ") for r in it.reasons[1:]), highlight=False)
        views = [review.show(project, it.entity_id)]
        if it.other_entity_id:
            views.append(review.show(project, it.other_entity_id))
        for v in views:
            for r in render_entity(v, numbered=it.other_entity_id is None):
                console.print(r)
        keys = _KEYS_PAIR if it.other_entity_id else _KEYS_ENTITY
        prompt = "  ".join(f"[{k}] {v}" for k, v in keys.items())
        while True:
            console.print(prompt + " ? ", end="", highlight=False, markup=False)
            ch = typer.getchar(echo=False)
            if ch in ("", "\x04"):
                ch = "q"
            ch = ch.lower()
            console.print(ch, highlight=False, markup=False)
            if ch in keys:
                break
            console.print(f"press one of {', '.join(keys)}", highlight=False)
        action = keys[ch]
        if action == "quit":
            break
        if action == "skip":
            skipped += 1
            continue
        chosen: list[str] = []
        if action == "split":
            recs = [f"{s}:{r}" for s, r in views[0].records.select("source", "record_id").iter_rows()]
            suggested = " ".join(f"#{recs.index(r) + 1}" for r in (it.suggested_split or []) if r in recs)
            answer = typer.prompt("records to split off (numbers or SOURCE:ID, separated by spaces)",
                                  default=suggested or None)
            for tok in answer.replace(",", " ").split():
                if tok.lstrip("#").isdigit() and 1 <= int(tok.lstrip("#")) <= len(recs):
                    chosen.append(recs[int(tok.lstrip("#")) - 1])
                else:
                    chosen.append(tok)
        # As on the command line: a reason is required for every decision but confirm.
        reason = typer.prompt("reason", default="", show_default=False).strip()
        while not reason and action != "confirm":
            console.print("a reason is required (it is kept with the decision)", highlight=False)
            reason = typer.prompt("reason", default="", show_default=False).strip()
        try:
            if action == "confirm":
                res = review.confirm(project, it.entity_id, author=author, reason=reason)
            elif action == "split":
                res = review.split(project, it.entity_id, chosen, author=author, reason=reason)
            elif action == "merge":
                res = review.merge(project, it.entity_id, it.other_entity_id, author=author, reason=reason)
            else:
                res = review.keep_apart(project, it.entity_id, it.other_entity_id, author=author, reason=reason)
        except Exception as exc:  # a bad answer (e.g. a record not in the entity): say so, go on
            from idweave.linkage.errors import IdweaveError

            if not isinstance(exc, IdweaveError):
                raise
            console.print(f"[bold red]not recorded:[/] {safe(str(exc))}")
            continue
        made += 1
        _print_result(res)
    console.print(f"{made} decision(s) recorded, {skipped} item(s) skipped", highlight=False)


@app.command("show")
@reads_store
def show_cmd(
    project: Path = PROJECT,
    entity_id: str = typer.Argument(..., help="An entity id (a merged-away id shows the entity it is now part of)."),
    nearby: int = typer.Option(5, "--nearby", help="How many links to other entities to list."),
) -> None:
    """An entity's records side by side, differing characters highlighted, and the evidence of its links."""
    from idweave.linkage.review import show

    for r in render_entity(show(project, entity_id, nearby=nearby)):
        console.print(r)


@app.command("merge")
@reads_store
def merge_cmd(
    project: Path = PROJECT,
    first: str = typer.Argument(..., help="An entity id."),
    second: str = typer.Argument(..., help="The other entity id."),
    reason: str = REASON,
    author: Optional[str] = AUTHOR,
) -> None:
    """Two entities are one person: the older id survives, the other is merged into it."""
    from idweave.linkage.review import merge

    _print_result(merge(project, first, second, author=author, reason=reason))


@app.command("split")
@reads_store
def split_cmd(
    project: Path = PROJECT,
    entity_id: str = typer.Argument(..., help="The entity to split."),
    records: list[str] = typer.Argument(..., help="SOURCE:ID of each record that leaves it."),
    reason: str = REASON,
    author: Optional[str] = AUTHOR,
) -> None:
    """The named records leave the entity and become a new one (or join another entity their
    links reach), never to rejoin the rest."""
    from idweave.linkage.review import split

    _print_result(split(project, entity_id, records, author=author, reason=reason))


@app.command("keep-apart")
@reads_store
def keep_apart_cmd(
    project: Path = PROJECT,
    first: str = typer.Argument(..., help="An entity id or SOURCE:ID of a record."),
    second: str = typer.Argument(..., help="An entity id or SOURCE:ID of a record."),
    reason: str = REASON,
    author: Optional[str] = AUTHOR,
) -> None:
    """Two records or entities must never be joined, whatever later runs score."""
    from idweave.linkage.review import keep_apart

    _print_result(keep_apart(project, first, second, author=author, reason=reason))


@app.command("confirm")
@reads_store
def confirm_cmd(
    project: Path = PROJECT,
    entity_id: str = typer.Argument(..., help="The entity that is right as it is."),
    reason: str = typer.Option("", "--reason", help="Why (optional)."),
    author: Optional[str] = AUTHOR,
) -> None:
    """The entity is right as it is: it leaves the review queue until its records change."""
    from idweave.linkage.review import confirm

    _print_result(confirm(project, entity_id, author=author, reason=reason))


@app.command("pin")
@reads_store
def pin_cmd(
    project: Path = PROJECT,
    entity_id: str = typer.Argument(..., help="The entity whose golden record to pin."),
    attribute: str = typer.Argument(..., help="The attribute (as in the project file)."),
    value: str = typer.Argument(..., help="The value the golden record keeps."),
    reason: str = REASON,
    author: Optional[str] = AUTHOR,
) -> None:
    """Pin a golden-record value: export --golden writes it whatever the survivorship rules pick."""
    from idweave.linkage.review import pin

    _print_result(pin(project, entity_id, attribute, value, author=author, reason=reason))


@app.command("undo")
@reads_store
def undo_cmd(
    project: Path = PROJECT,
    decision_id: int = typer.Argument(..., help="The decision to withdraw (see `idweave decisions`)."),
    reason: str = REASON,
    author: Optional[str] = AUTHOR,
) -> None:
    """Withdraw a decision: its constraints go and the records it moved go back."""
    from idweave.linkage.review import undo

    _print_result(undo(project, decision_id, author=author, reason=reason))


@app.command("decisions")
@reads_store
def decisions_cmd(project: Path = PROJECT) -> None:
    """Every human decision: when, who, what, why, and whether it is still in force."""
    from idweave.linkage.review import decisions

    df = decisions(project)
    t = Table(title=f"decisions: {df.height}")
    for c in ("id", "decided at", "author", "action", "subject", "reason", "in force"):
        t.add_column(c, justify="right" if c == "id" else "left")
    for r in df.iter_rows(named=True):
        state = "yes" if r["in_force"] else (f"undone by #{r['undone_by']}" if r["undone_by"] else "-")
        t.add_row(str(r["decision_id"]), f"{r['decided_at']:%Y-%m-%d %H:%M:%S}", cell(r["author"] or ""),
                  r["action"].replace("_", " "), cell(r["subject"]), cell(r["reason"] or ""), state)
    console.print(t)


@app.command("export-labels")
@reads_store
def export_labels_cmd(
    project: Path = PROJECT,
    out: Path = typer.Option(..., "--out", help="The labels file to write (.csv)."),
) -> None:
    """Write the decisions in force as labelled pairs in Splink's clerical format."""
    from idweave.linkage.review import export_labels

    df = export_labels(project, out)
    n1 = int((df["clerical_match_score"] >= 0.5).sum()) if df.height else 0
    console.print(f"wrote {df.height:,} labelled pairs ({n1:,} match, {df.height - n1:,} non-match) to {safe(shown_path(out))}",
                  highlight=False)


@app.command("evaluate-labels")
@reads_store
def evaluate_labels_cmd(
    project: Path = PROJECT,
    labels: Path = typer.Option(..., "--labels", help="Labelled pairs in Splink's clerical format (.csv)."),
    errors: int = typer.Option(10, "--errors", help="How many disagreements to list."),
) -> None:
    """Precision, recall and F1 of the stored entities against labelled pairs."""
    from idweave.linkage.evaluate import evaluate_labels

    rep = evaluate_labels(project, labels, max_errors=errors)
    m = rep.metrics
    for n in rep.notes:
        console.print(f"note: {safe(n)}", highlight=False)
    t = Table(title=f"evaluation against {safe(labels.name)}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("labelled pairs", f"{m['labelled_pairs']:,}")
    t.add_row("pairs with both records in the store", f"{m['pairs_in_store']:,}")
    for k in ("true_positives", "false_positives", "false_negatives", "true_negatives"):
        t.add_row(k.replace("_", " "), f"{m[k]:,}")
    for k in ("precision", "recall", "f1", "accuracy"):
        t.add_row(k, f"{m[k]:.4f}")
    console.print(t)
    if rep.disagreements.height:
        d = Table(title="disagreements")
        for c in ("left", "right", "label", "same entity", "probability"):
            d.add_column(c)
        for r in rep.disagreements.iter_rows(named=True):
            p = r["match_probability"]
            d.add_row(cell(f"{r['source_l']}:{r['record_id_l']}"), cell(f"{r['source_r']}:{r['record_id_r']}"),
                      f"{r['clerical_match_score']:g}", "yes" if r["same_entity"] else "no",
                      "not scored" if p is None else f"{p:.4f}")
        console.print(d)


def print_entity_explanation(project: Path, entity_id: str) -> None:
    """Explain why an entity's records are one entity: the tree of links that joins them,
    strongest first, and the weakest link it hangs by (``idweave explain PROJECT ENTITY_ID``)."""
    from idweave.linkage.explain import explain_entity

    ex = explain_entity(project, entity_id)
    head = f"entity {ex.entity_id}" + (f" (asked for {ex.asked})" if ex.asked != ex.entity_id else "")
    console.print(f"{safe(head)}: {len(ex.records)} record(s), threshold {ex.threshold}", highlight=False)
    if ex.root is None:
        return
    nodes = {ex.root: Tree(cell(_rec(ex.root)))}
    for ln in ex.tree:
        if ln.decision is not None:
            label = cell(f"{_rec(ln.child)}  joined by decision #{ln.decision}")
        else:
            label = cell(f"{_rec(ln.child)}  p={ln.match_probability:.4f}  w={ln.match_weight:+.2f}  "
                         f"{_top_evidence(ln.evidence)}")
            if ex.weakest is not None and ln.child == ex.weakest.child:
                label.append("  ◀ weakest link", style="bold red")
        nodes[ln.child] = nodes[ln.parent].add(label)
    console.print(nodes[ex.root])
    if ex.weakest is not None:
        w = ex.weakest
        console.print(cell(f"weakest link: {_rec(w.parent)} - {_rec(w.child)} p={w.match_probability:.4f}; "
                           f"a threshold above {w.match_probability:.4f} would split the entity"))
    if ex.unjoined:
        console.print(cell("not joined by any stored link: " + ", ".join(_rec(r) for r in ex.unjoined)))
