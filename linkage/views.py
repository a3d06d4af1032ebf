"""Views: what a review screen shows, gathered from the store by the library functions of
:mod:`~idweave.linkage.review`, :mod:`~idweave.linkage.explain` and :mod:`~idweave.linkage.history`.

The web workbench (``idweave serve``) renders these and nothing else; it holds no business
logic. Each function opens the store read-only (except :func:`decide`, which records a
decision through :mod:`~idweave.linkage.review`).

* :func:`queue_page` filters and searches the review queue and adds, per item, the
  probabilities of its links (for a sparkline) and the sources of its records;
* :func:`entity_page` is an entity's records side by side with what differs, its links and
  the tree that holds it, the evidence of one link, its history and its near misses;
* :func:`model_view` is the model's comparisons level by level (m, u, match weight);
* :func:`entity_version` is a digest that changes whenever an entity does (a record joins,
  leaves or changes, or a decision about its records is made or undone); :func:`decide`
  refuses a decision made on a stale version with :class:`ConflictError`, so two stewards
  deciding on one entity at once cannot both apply;
* :func:`decision_changes` says what a decision did: entities created, merged or restored,
  records moved.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> page = queue_page("fixtures/tiny/project.yaml")
>>> page.total >= len(page.rows)
True
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import polars as pl

from idweave.linkage import explain as explain_mod
from idweave.linkage import history as history_mod
from idweave.linkage import queue as queue_mod
from idweave.linkage import review
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.project import resolve_project
from idweave.linkage.project import Project

__all__ = [
    "store_state", "QueueRow", "QueuePage", "queue_page", "EntityPage", "entity_page", "segments",
    "ModelView", "model_view", "entity_version", "ConflictError", "decide", "DecisionChanges",
    "decision_changes", "find_entities", "ACTIONS", "queue_neighbours", "current_queue",
]

ProjectLike = Project | str | Path | Mapping[str, Any]
Rec = tuple[str, str]

#: The decisions :func:`decide` records, by the name of their :mod:`review` function.
ACTIONS = ("confirm", "split", "merge", "keep_apart", "pin", "undo")


class ConflictError(IdweaveError):
    """The entity changed since the decision's page was loaded (another steward's decision,
    or a run): nothing was recorded; reload and decide again."""


def _open(project: ProjectLike) -> tuple[Project, Store]:
    proj = resolve_project(project)
    return review.open_store(proj, read_only=True)


def current_queue(project: ProjectLike) -> queue_mod.StoredQueue:
    """The store's review queue now (:func:`~idweave.linkage.queue.current_queue`), for a
    screen that shows several parts of it.

    >>> current_queue("fixtures/tiny/project.yaml").frame.height >= 0
    True
    """
    proj, st = _open(project)
    with st:
        return queue_mod.current_queue(st, proj)


def store_state(project: ProjectLike) -> str:
    """A key of the store's state that changes with every run and decision, so a cache keyed
    by it is never stale: the modification time and size of the store file and of its
    write-ahead log (every commit writes one of them), read without opening the store.

    >>> a = store_state("fixtures/tiny/project.yaml"); a == store_state("fixtures/tiny/project.yaml")
    True
    """
    proj = resolve_project(project)
    parts = []
    for path in (Path(proj.store), Path(str(proj.store) + ".wal")):
        try:
            s = path.stat()
            parts.append(f"{s.st_mtime_ns}.{s.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return ":".join(parts)


# --------------------------------------------------------------------------------------
# the queue
# --------------------------------------------------------------------------------------
@dataclass
class QueueRow:
    """One queue item as a screen lists it: the item, the probabilities of its links (inside
    the entity; across, for a pair), lowest first, and the sources of its records."""

    item: review.QueueItem
    probabilities: list[float]
    sources: list[str]


@dataclass
class QueuePage:
    """The filtered queue: ``rows`` (at most ``limit``), how many items matched (``total``)
    and were in the queue (``queue_size``), the item count per reason, the sources, and the
    entities a search found (also those not in the queue, so a screen can link to them)."""

    rows: list[QueueRow]
    total: int
    queue_size: int
    reasons: dict[str, int]
    sources: list[str]
    found: list[str] = field(default_factory=list)
    threshold: float | None = None


def _resolve_search(st: Store, text: str) -> list[str]:
    """Entity ids a search names: an entity id (followed through merges), a ``source:id``
    record, or a bare record id (in any source)."""
    text = text.strip()
    if not text:
        return []
    out: list[str] = []
    eid = st.resolve(text)
    if eid is not None:
        out.append(eid)
    if ":" in text:
        s, r = text.split(":", 1)
        found = st.entity_of(s, r)
        rows = [] if found is None else [found]
    else:
        rows = st.entities_of_record_id(text)
    out += [e for e in rows if e not in out]
    return out


def queue_page(project: ProjectLike, *, items: Sequence[review.QueueItem] | None = None, reason: str | None = None,
               source: str | None = None, min_size: int | None = None, max_size: int | None = None,
               search: str | None = None, limit: int = 50, queue: queue_mod.StoredQueue | None = None) -> QueuePage:
    """The review queue filtered by reason (any of an item's reasons), source (an item with
    a record of it), size (of the larger entity) and a search (an entity id or a record
    ``source:id``), at most ``limit`` rows, each with its link probabilities.

    The queue is the store's (:func:`~idweave.linkage.queue.current_queue`: kept in the
    store, made current; ``queue`` if the caller has it), filtered and paged as a frame;
    ``items`` is accepted for callers that hold a list of items instead.

    >>> page = queue_page("fixtures/tiny/project.yaml", limit=2)
    >>> len(page.rows) <= 2 and all(r.probabilities == sorted(r.probabilities) for r in page.rows)
    True
    >>> queue_page("fixtures/tiny/project.yaml", search="no-such-entity").total
    0
    """
    proj, st = _open(project)
    with st:
        thr, _, _ = review.run_info(st, proj)
        found = _resolve_search(st, search) if search else []
        if items is not None:
            frame = _frame_of_items(st, items)
        else:
            frame = (queue or queue_mod.current_queue(st, proj)).frame.filter(pl.col("open"))
    reasons = Counter(frame["reasons"].explode().drop_nulls().to_list()) if frame.height else Counter()
    f = frame
    if reason:
        f = f.filter(pl.col("reasons").list.contains(reason))
    if source:
        f = f.filter(pl.col("sources").list.contains(source))
    big = pl.max_horizontal(pl.col("size"), pl.col("other_size").fill_null(0))
    if min_size is not None:
        f = f.filter(big >= min_size)
    if max_size is not None:
        f = f.filter(big <= max_size)
    if search:
        hit = list(found)
        f = f.filter(pl.col("entity_id").is_in(hit) | pl.col("other_entity_id").fill_null("").is_in(hit))
    rows = [QueueRow(item=queue_mod.as_item(int(r["rank"]), r), probabilities=list(r["probabilities"] or []),
                     sources=list(r["sources"] or []))
            for r in f.sort("rank").head(max(0, int(limit))).iter_rows(named=True)]
    return QueuePage(rows=rows, total=f.height, queue_size=frame.height, reasons=dict(reasons),
                     sources=sorted(proj.sources), found=found, threshold=thr)


def _frame_of_items(st: Store, items: Sequence[review.QueueItem]) -> pl.DataFrame:
    """Queue items given by a caller as the rows :func:`queue_page` filters (their sources
    and link probabilities read from the store)."""
    ids = sorted({e for it in items for e in (it.entity_id, it.other_entity_id) if e})
    recs = st.records_of_entities(ids).select("source", "record_id", "entity_id") if ids else pl.DataFrame(
        schema={"source": pl.Utf8, "record_id": pl.Utf8, "entity_id": pl.Utf8})
    entity_of = {(s, r): e for s, r, e in recs.iter_rows()}
    by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    if recs.height:
        for sl, rl, sr, rr, p in st.links_among(list(entity_of)).select(
                "source_l", "record_id_l", "source_r", "record_id_r", "match_probability").iter_rows():
            a, b = entity_of.get((sl, rl)), entity_of.get((sr, rr))
            if a and b:
                by_pair[(min(a, b), max(a, b))].append(float(p))
    sources_of: dict[str, set[str]] = defaultdict(set)
    for s, _r, e in recs.iter_rows():
        sources_of[e].add(s)
    out = []
    for it in items:
        key = (min(it.entity_id, it.other_entity_id or it.entity_id), max(it.entity_id, it.other_entity_id or it.entity_id))
        out.append({**{k: getattr(it, k) for k in ("rank", "entity_id", "other_entity_id", "reason", "reasons", "detail",
                                                  "size", "other_size", "link", "score", "suggested_split")},
                    "sources": sorted({x for e in key for x in sources_of.get(e, ())}),
                    "probabilities": sorted(by_pair.get(key, []))})
    schema = {"rank": pl.Int32, "entity_id": pl.Utf8, "other_entity_id": pl.Utf8, "reason": pl.Utf8,
              "reasons": pl.List(pl.Utf8), "detail": pl.Utf8, "size": pl.Int32, "other_size": pl.Int32,
              "link": pl.Float64, "score": pl.Float64, "suggested_split": pl.List(pl.Utf8),
              "sources": pl.List(pl.Utf8), "probabilities": pl.List(pl.Float64)}
    return pl.DataFrame(out, schema=schema)


def queue_neighbours(project: ProjectLike, entity_id: str, *, queue: queue_mod.StoredQueue | None = None
                     ) -> tuple[review.QueueItem | None, review.QueueItem | None]:
    """The open queue's items before and after the first item of ``entity_id`` (the first
    item, after an entity not in the queue): what a screen's previous and next links open.
    ``queue`` is the store's queue if the caller has it.

    >>> prev, nxt = queue_neighbours("fixtures/tiny/project.yaml", "no-such-entity")
    >>> prev is None
    True
    """
    proj, st = _open(project)
    with st:
        f = (queue or queue_mod.current_queue(st, proj)).frame.filter(pl.col("open")).sort("rank")
    at = f.with_row_index("i").filter(pl.col("entity_id") == entity_id)["i"].head(1).to_list()
    if not at:
        return None, (queue_mod.as_item(1, f.row(0, named=True)) if f.height else None)
    i = at[0]
    prev = queue_mod.as_item(i, f.row(i - 1, named=True)) if i > 0 else None
    nxt = queue_mod.as_item(i + 2, f.row(i + 1, named=True)) if i + 1 < f.height else None
    return prev, nxt


# --------------------------------------------------------------------------------------
# one entity
# --------------------------------------------------------------------------------------
def segments(value: Any, spans: Iterable[tuple[int, int]]) -> list[tuple[str, bool]]:
    """A value cut into (text, differs) pieces by the differing ``spans`` of
    :func:`review.diff_spans`, for a screen to highlight (and escape) piece by piece.

    >>> segments("jonathon", [(6, 7)])
    [('jonath', False), ('o', True), ('n', False)]
    >>> segments(None, [])
    []
    """
    if value is None:
        return []
    text = str(value)
    out: list[tuple[str, bool]] = []
    at = 0
    for a, b in sorted(spans):
        if a > at:
            out.append((text[at:a], False))
        if b > a:
            out.append((text[a:b], True))
        at = max(at, b)
    if at < len(text):
        out.append((text[at:], False))
    return out


@dataclass
class EntityPage:
    """Everything an entity screen shows.

    ``view`` is :func:`review.show` (records side by side, ``cells[i][attr]`` its values cut
    into differing pieces by :func:`segments`); ``explanation`` is
    :func:`explain.explain_entity` (the tree of strongest links, the weakest link);
    ``links`` the scored pairs among its records (evidence per comparison), ``chosen`` the
    index of the link whose evidence is shown (the weakest link unless asked), ``prior_weight``
    the model's prior in bits (a link's match weight is it plus its evidence);
    ``history`` its events; ``near_misses`` other entities linked to it, best first
    (entity id, best probability, links, their size); ``items`` its queue items;
    ``suggested_split`` the queue's suggestion, if any; ``decisions`` the decisions about its
    records; ``version`` its :func:`entity_version`; ``golden`` its golden record
    (attribute, surviving value, ``source:record_id`` it came from, or the pin that set it;
    :func:`golden.golden`) and ``golden_choices`` the values its records hold per attribute
    (what a steward can pin, :func:`review.pin`).
    """

    view: review.EntityView
    explanation: explain_mod.EntityExplanation
    cells: list[dict[str, list[tuple[str, bool]]]]
    links: list[dict[str, Any]]
    chosen: int | None
    prior_weight: float | None
    history: list[dict[str, Any]]
    near_misses: list[dict[str, Any]]
    items: list[review.QueueItem]
    suggested_split: list[str] | None
    decisions: list[dict[str, Any]]
    version: str
    redirected_from: str | None = None
    golden: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    golden_choices: dict[str, list[str]] = field(default_factory=dict)


def _prior_weight_of(st: Store) -> float | None:
    settings = st.latest_settings()
    if settings is None:
        return None
    p = float(settings.get("probability_two_random_records_match", 0) or 0)
    return math.log2(p / (1 - p)) if 0 < p < 1 else None


def entity_page(project: ProjectLike, entity_id: str, *, link: int | None = None, nearby: int = 10,
                items: Sequence[review.QueueItem] | None = None, open_only: bool = False,
                queue: queue_mod.StoredQueue | None = None) -> EntityPage:
    """The entity screen's content (see :class:`EntityPage`). ``link`` picks the link whose
    evidence is shown (an index into ``links``); ``items`` is the queue if the caller has it,
    else the store's (``queue``, or read; reviewed items too, unless ``open_only``).

    >>> from idweave.linkage import link as run
    >>> eid = run("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> page = entity_page("fixtures/tiny/project.yaml", eid)
    >>> page.view.entity_id == eid and len(page.cells) == page.view.records.height
    True
    """
    proj = resolve_project(project)
    view = review.show(proj, entity_id, nearby=max(nearby * 5, 20))
    eid = view.entity_id
    ex = explain_mod.explain_entity(proj, eid)
    cells = []
    for i, row in enumerate(view.records.iter_rows(named=True)):
        cells.append({a: segments(row.get(a), view.diffs.get((i, a), [])) for a in view.attributes})
    links = view.links
    chosen = None
    if links:
        if link is not None and 0 <= int(link) < len(links):
            chosen = int(link)
        elif ex.weakest is not None:
            w = {ex.weakest.parent, ex.weakest.child}
            chosen = next((i for i, ln in enumerate(links) if {ln["left"], ln["right"]} == w), None)
        if chosen is None:
            chosen = min(range(len(links)), key=lambda i: links[i]["match_probability"])
    hist = history_mod.history(proj, eid).to_dicts()
    near: dict[str, dict[str, Any]] = {}
    if view.nearby.height:
        for row in view.nearby.iter_rows(named=True):
            n = near.setdefault(row["other_entity_id"], {"entity_id": row["other_entity_id"], "probability": 0.0,
                                                         "links": 0, "pairs": []})
            n["probability"] = max(n["probability"], float(row["match_probability"]))
            n["links"] += 1
            n["pairs"].append((f"{row['source']}:{row['record_id']}", f"{row['other_source']}:{row['other_record_id']}",
                               float(row["match_probability"])))
    near_list = sorted(near.values(), key=lambda n: (-n["probability"], n["entity_id"]))[:nearby]
    # One opening of the store for the sizes of the near misses, the version and the prior.
    _, st = _open(proj)
    with st:
        sizes = st.sizes_of(n["entity_id"] for n in near_list) if near_list else {}
        version = _version(st, eid)
        prior_weight = _prior_weight_of(st)
    for n in near_list:
        n["size"] = int(sizes.get(n["entity_id"], 0))
    if items is None:
        _, st = _open(proj)
        with st:
            f = (queue or queue_mod.current_queue(st, proj)).frame
        f = f.filter(pl.col("open")) if open_only else f
        f = f.filter((pl.col("entity_id") == eid) | (pl.col("other_entity_id") == eid))
        items = [queue_mod.as_item(int(r["rank"] or 0), r) for r in f.iter_rows(named=True)]
    mine = [it for it in items if eid in (it.entity_id, it.other_entity_id)]
    suggestion = next((it.suggested_split for it in mine if it.other_entity_id is None and it.suggested_split), None)
    decs = review.decisions(proj)
    involved = set(view.decisions)
    dec_rows = [d for d in decs.to_dicts() if d["decision_id"] in involved or d["undoes"] in involved]
    from idweave.linkage.golden import golden

    g = golden(proj, entity_id=eid).to_dicts()
    best = [(a, g[0][a], f"{g[0][a + '_source']}:{g[0][a + '_record_id']}"
             if g[0][a + "_source"] != "pinned" else f"pinned by decision {g[0][a + '_record_id']}")
            for a in view.attributes if g and g[0].get(a) is not None]
    choices = {a: sorted({str(v) for v in view.records[a].to_list() if v is not None}) for a in view.attributes}
    return EntityPage(view=view, explanation=ex, cells=cells, links=links, chosen=chosen,
                      prior_weight=prior_weight, history=hist, near_misses=near_list, items=mine,
                      suggested_split=suggestion, decisions=dec_rows, version=version,
                      redirected_from=None if view.asked == eid else view.asked, golden=best,
                      golden_choices=choices)


def find_entities(project: ProjectLike, text: str, *, limit: int = 10) -> list[dict[str, Any]]:
    """Active entities a search names (an entity id or its start, a ``source:id`` record or a
    bare record id), with their size and sources: what a merge form offers.

    >>> from idweave.linkage import link
    >>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> find_entities("fixtures/tiny/project.yaml", eid[:6])[0]["entity_id"][:6] == eid[:6]
    True
    """
    text = (text or "").strip()
    if not text:
        return []
    proj, st = _open(project)
    with st:
        ids = _resolve_search(st, text)
        if len(ids) < limit:
            like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            ids += [e for e in st.active_entities_like(like, limit) if e not in ids]
        ids = ids[:limit]
        out = []
        for e in ids:
            rows = st.members(e)
            if rows:
                out.append({"entity_id": e, "size": len(rows), "records": [f"{s}:{r}" for s, r in rows[:6]],
                            "sources": sorted({s for s, _ in rows})})
    return out


# --------------------------------------------------------------------------------------
# versions and decisions
# --------------------------------------------------------------------------------------
def _version(st: Store, entity_id: str) -> str:
    eid = st.resolve(str(entity_id))
    h = hashlib.sha256(f"{entity_id}\x1f{eid}".encode())
    if eid is None:
        return h.hexdigest()[:16]
    status = st.entity_status(eid)
    h.update(f"\x1f{status or ''}".encode())
    rows = st.record_hashes_of(eid)
    h.update(review.entity_digest(rows).encode())
    mine = {(s, r) for s, r, _ in rows}
    for d in review.decision_rows(st):
        p = d["payload"]
        if any((s, r) in mine for key in ("records_a", "records_b", "records", "rest", "left", "right")
               for s, r in p.get(key, [])):
            h.update(f"\x1e{d['decision_id']}:{d['undone_by']}".encode())
    return h.hexdigest()[:16]


def entity_version(project: ProjectLike, entity_id: str) -> str:
    """A digest of an entity as a steward sees it: its id after merges, status, records and
    their content, and the decisions about its records (and whether each was undone).
    A decision form carries it; :func:`decide` checks it.

    >>> from idweave.linkage import link
    >>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> entity_version("fixtures/tiny/project.yaml", eid) == entity_version("fixtures/tiny/project.yaml", eid)
    True
    """
    proj, st = _open(project)
    with st:
        return _version(st, entity_id)


def decide(project: ProjectLike, action: str, *, expected: Mapping[str, str] | None = None,
           author: str | None = None, reason: str = "", **args: Any) -> review.DecisionResult:
    """Record a decision (``action`` one of :data:`ACTIONS`, ``args`` those of the
    :mod:`review` function of that name) unless an entity it names changed since its
    version was read: ``expected`` maps entity ids to :func:`entity_version` values, and
    any mismatch raises :class:`ConflictError` with nothing recorded.

    The check and the decision are two steps on the store; callers that can decide at the
    same moment (the threads of one web server) hold one lock around this call, which makes
    the pair atomic among them.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-views.duckdb")
    >>> eid = link(p).entities["entity_id"][0]
    >>> v = entity_version(p, eid)
    >>> decide(p, "confirm", expected={eid: v}, author="ada", entity_id=eid).action
    'confirm'
    >>> try:
    ...     decide(p, "confirm", expected={eid: v}, author="bob", entity_id=eid)
    ... except ConflictError as exc:
    ...     print("conflict:", "changed since the page was loaded" in str(exc))
    conflict: True
    """
    if action not in ACTIONS:
        raise IdweaveError(f"unknown decision {action!r}; expected one of {', '.join(ACTIONS)}")
    proj = resolve_project(project)
    if expected:
        proj, st = _open(proj)
        with st:
            changed = [e for e, v in expected.items() if _version(st, e) != v]
            last = st.max_decision_id()
        if changed:
            by = f" (the last decision is #{last})" if last else ""
            raise ConflictError(f"entity {', '.join(changed)} changed since the page was loaded{by}: "
                                "nothing was recorded; reload it and decide again")
    fn = getattr(review, action)
    # The stored review queue is brought up to date in the decision's own opening of the store.
    return fn(proj, **args, author=author, reason=reason, after=queue_mod.refresh_stored_queue)


@dataclass
class DecisionChanges:
    """What one decision changed: entities created (with the entity each split from),
    merged (merged id, survivor), restored, and records moved (record, from, to)."""

    decision_id: int
    action: str
    author: str
    reason: str
    created: list[tuple[str, str | None]]
    merged: list[tuple[str, str]]
    restored: list[str]
    moved: list[tuple[str, str, str]]


def decision_changes(project: ProjectLike, decision_id: int) -> DecisionChanges:
    """The changes of one decision, from the events that name it.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-views2.duckdb")
    >>> e = link(p).entities["entity_id"].unique().sort().to_list()
    >>> res = review.merge(p, e[0], e[1], author="ada", reason="same")
    >>> ch = decision_changes(p, res.decision_id)
    >>> ch.action, len(ch.merged)
    ('merge', 1)
    """
    proj, st = _open(project)
    with st:
        d = st.decision_summary(decision_id)
        if d is None:
            raise IdweaveError(f"no decision #{decision_id} in the store")
        ev = st.decision_events(decision_id)
    created, merged, restored, moved = [], [], [], []
    for t, e, o, s, r in ev.iter_rows():
        if t == "entity_created":
            created.append((e, o))
        elif t == "entities_merged":
            merged.append((o, e))
        elif t == "entity_restored":
            restored.append(e)
        elif t == "record_moved":
            moved.append((f"{s}:{r}", o, e))
    return DecisionChanges(int(decision_id), d[0], d[1], d[2] or "", created, merged, restored, moved)


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
@dataclass
class ModelView:
    """The stored model of the latest run: ``comparisons`` (name, levels with label, m, u
    and match weight in bits), the prior, the threshold, the version and the model in plain
    words (``summary``: one line per comparison: what agreeing and disagreeing count)."""

    version: str | None
    prior: float | None
    prior_weight: float | None
    threshold: float | None
    comparisons: list[dict[str, Any]]
    summary: list[str]
    runs: list[dict[str, Any]]


def model_view(project: ProjectLike) -> ModelView:
    """The model screen's content (see :class:`ModelView`).

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> mv = model_view("fixtures/tiny/project.yaml")
    >>> mv.comparisons[0]["levels"][0].keys() >= {"label", "m", "u", "weight"}
    True
    """
    proj, st = _open(project)
    with st:
        stored = st.latest_model()
        thr, _, _ = review.run_info(st, proj)
        runs = st.run_rows(["run_id", "started_at", "mode", "model_version", "threshold", "n_records", "n_links",
                            "n_entities", "summary"], newest=10).to_dicts()
    for r in runs:
        try:
            s = json.loads(r.pop("summary") or "{}")
        except (TypeError, ValueError):
            s = {}
        r["mode_reason"] = s.get("mode_reason")
        r["training_log"] = s.get("training_log") or []
    if not stored:
        return ModelView(None, None, None, thr, [], [], runs)
    settings, _tf, version = stored
    prior = float(settings.get("probability_two_random_records_match", 0) or 0)
    comps, summary = [], []
    for c in settings.get("comparisons", []):
        levels = []
        for lv in c["comparison_levels"]:
            if lv.get("is_null_level"):
                continue
            m, u = lv.get("m_probability"), lv.get("u_probability")
            w = math.log2(m / u) if m and u else None
            levels.append({"label": str(lv.get("label_for_charts", "")), "m": m, "u": u, "weight": w,
                           "tf": bool(lv.get("tf_adjustment_column"))})
        name = c["output_column_name"]
        comps.append({"name": name, "levels": levels})
        known = [lv for lv in levels if lv["weight"] is not None]
        if known:
            top, bottom = known[0], known[-1]
            summary.append(f"{name}: '{top['label']}' counts {top['weight']:+.1f} bits "
                           f"(found in {100 * (top['m'] or 0):.0f}% of matches, {100 * (top['u'] or 0):.2g}% of "
                           f"non-matches); '{bottom['label']}' counts {bottom['weight']:+.1f} bits")
    pw = math.log2(prior / (1 - prior)) if 0 < prior < 1 else None
    return ModelView(version, prior, pw, thr, comps, summary, runs)
