"""Review: what is doubtful (the queue), the evidence, and human decisions that persist.

A data steward works through :func:`queue` (entities and entity pairs ranked by how likely
they are to be wrong, each with its reasons), looks at an entity with :func:`show`, and
decides: :func:`merge`, :func:`split`, :func:`keep_apart`, :func:`confirm`, or :func:`undo`
of an earlier decision. A decision is written to the ``decisions`` table with its author,
time and reason, applied to the store at once (in one transaction, with events naming the
decision), and from then on is a constraint of every run (:func:`constraints`, which
``link`` calls): full or incremental, with or without retraining.

How decisions become constraints (all at record level, so they outlive entity ids):

* the decisions in force (not undone, not undos) are replayed oldest first;
* ``merge`` pins the records of both entities into one must-link group (groups join
  transitively: merge A+B then B+C pins A, B and C together);
* ``split`` takes the named records out of any group, pins them together, and forbids
  them (cannot-link) from every other record the entity had;
* ``keep_apart`` forbids every record of one side from every record of the other;
* ``confirm`` adds no constraint: the entity just leaves the queue until its records change.

A later decision wins over an earlier one where they disagree (a merge lifts an earlier
keep-apart between its records; a split takes its records out of an earlier merge), so the
constraints handed to clustering are always consistent: no cannot-link inside a must-link
group. ``undo`` is a replay without the undone decision. The model never overrides a
constraint; when new scores contradict one (a kept-apart pair now scores at least
:data:`CONFLICT_PROBABILITY`, or a merged pair at most 1 - that), the decision stands and
the conflict enters the queue.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> items = queue("fixtures/tiny/project.yaml")
>>> all(i.reason in REASONS for i in items)
True
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import polars as pl
from rapidfuzz.distance import JaroWinkler, Levenshtein

from idweave.linkage._db import fetch_one, query_pl
from idweave.linkage.cluster import cluster
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store, assign_ids, utc_now
from idweave.linkage.project import resolve_project
from idweave.linkage.project import Project

__all__ = [
    "queue", "QueueItem", "REASONS", "show", "EntityView", "diff_spans",
    "merge", "split", "keep_apart", "confirm", "undo", "DecisionResult", "decisions",
    "constraints", "export_labels", "entity_digest", "default_author", "CONFLICT_PROBABILITY", "apply_decision",
]

Rec = tuple[str, str]
ProjectLike = Project | str | Path | Mapping[str, Any]

#: A kept-apart pair scoring at least this (or a merged pair at most 1 - this) is a conflict.
CONFLICT_PROBABILITY = 0.999

#: Queue reasons, most serious first, with the sentence the CLI shows for each.
REASONS = {
    "decision_conflict": "new scores contradict a human decision",
    "exclusive_twice": "more than one record from an exclusive source",
    "conflicting_id": "two different national ids",
    "household": "records that look like different members of one household",
    "dates_apart": "dates far apart",
    "large": "unusually large entity",
    "weak_bridge": "one link is all that joins two groups of records that hardly match",
    "loose_groups": "two groups of records that hardly match each other",
    "uncertain": "held together by links in the uncertain band",
    "near_miss": "two entities linked just below the threshold",
}
# How likely each fixed-evidence reason is to mean a real error (a rough prior, checked with
# bench/bench_review.py); the link-based reasons score their own error estimate. An item's
# score combines its reasons' scores as independent evidence (noisy-or); a conflict with a
# human decision scores above 1, so it always comes first.
_PRIOR = {"exclusive_twice": 0.9, "conflicting_id": 0.9, "household": 0.8, "dates_apart": 0.3, "date_outlier": 0.1,
          "large": 0.5}
# Two groups of records whose pairs across match ``rel`` as well as pairs inside them do, seen
# through m scored pairs across, are one person with probability 1 - (1 - rel)^m: one pair is
# its own match probability; more pairs make the average telling, up to this many (set on
# historical_50k with bench/bench_review.py, where it ranks splits and near misses alike).
_LOOKS_CAP = 9


def _same_probability(rel: float, looks: int) -> float:
    return 1.0 - (1.0 - min(max(rel, 0.0), 1.0)) ** min(_LOOKS_CAP, max(1, looks))


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def default_author() -> str:
    """The author of a decision when none is given: ``IDWEAVE_AUTHOR``, else the OS user.

    >>> import os; os.environ["IDWEAVE_AUTHOR"] = "ada"; default_author()
    'ada'
    >>> del os.environ["IDWEAVE_AUTHOR"]
    """
    env = os.environ.get("IDWEAVE_AUTHOR")
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user database in some containers
        return "unknown"


def entity_digest(rows: Iterable[tuple[str, str, str | None]]) -> str:
    """A digest of an entity's membership and content: (source, record_id, content_hash) rows.

    It changes when a record joins or leaves, or when a record's cleaned values change, which
    is what sends a confirmed entity back to the queue.

    >>> entity_digest([("tax", "T1", "h1"), ("census", "7", "h2")]) == entity_digest([("census", "7", "h2"), ("tax", "T1", "h1")])
    True
    """
    h = hashlib.sha256()
    for s, r, c in sorted((str(s), str(r), str(c)) for s, r, c in rows):
        h.update(f"{s}\x1f{r}\x1f{c}\x1e".encode())
    return h.hexdigest()[:16]


def _weight(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def _prob(w: float) -> float:
    return 1.0 / (1.0 + 2.0 ** (-w))


def diff_spans(reference: str | None, value: str | None) -> list[tuple[int, int]]:
    """Character spans of ``value`` that differ from ``reference`` (rapidfuzz opcodes).

    >>> diff_spans("jonathan", "jonathon")
    [(6, 7)]
    >>> diff_spans("smith", "smith")
    []
    >>> diff_spans(None, "x")
    [(0, 1)]
    """
    if value is None:
        return []
    value = str(value)
    if reference is None:
        return [(0, len(value))] if value else []
    spans = []
    for op in Levenshtein.opcodes(str(reference), value):
        if op.tag in ("replace", "insert") and op.dest_end > op.dest_start:
            spans.append((op.dest_start, op.dest_end))
    return spans


def _rec(x: Any) -> Rec:
    if isinstance(x, str):
        if ":" not in x:
            raise IdweaveError(f"record reference {x!r} must be SOURCE:ID")
        s, r = x.split(":", 1)
        return s, r
    s, r = x
    return str(s), str(r)


def _fmt(rec: Rec) -> str:
    return f"{rec[0]}:{rec[1]}"


def _recs_json(recs: Iterable[Rec]) -> list[list[str]]:
    return [[s, r] for s, r in sorted(recs)]


def _from_json(recs: Iterable[Sequence[str]]) -> list[Rec]:
    return [(str(s), str(r)) for s, r in recs]


# --------------------------------------------------------------------------------------
# decisions -> constraints
# --------------------------------------------------------------------------------------
class _Constraints:
    """The record-level constraints of a sequence of decisions (see the module docstring)."""

    def __init__(self) -> None:
        self.group_of: dict[Rec, int] = {}
        self.groups: dict[int, set[Rec]] = {}
        self.group_decisions: dict[int, list[int]] = {}
        self.cannot: dict[Rec, dict[Rec, int]] = {}
        self._next = 0

    def pin(self, recs: Iterable[Rec], did: int) -> None:
        recs = set(recs)
        gids = {self.group_of[r] for r in recs if r in self.group_of}
        members = set(recs)
        dids = [did]
        for g in gids:
            members |= self.groups.pop(g)
            dids = self.group_decisions.pop(g, []) + dids
        if len(members) < 2:
            for r in members:
                self.group_of.pop(r, None)
            return
        self._next += 1
        g = self._next
        self.groups[g] = members
        self.group_decisions[g] = sorted(set(dids))
        for r in members:
            self.group_of[r] = g
            partners = self.cannot.get(r)
            if partners:
                for p in [p for p in partners if p in members]:
                    del partners[p]
                    self.cannot[p].pop(r, None)

    def unpin(self, recs: Iterable[Rec]) -> None:
        for r in recs:
            g = self.group_of.pop(r, None)
            if g is None:
                continue
            self.groups[g].discard(r)
            if len(self.groups[g]) < 2:
                for left in self.groups.pop(g):
                    self.group_of.pop(left, None)
                self.group_decisions.pop(g, None)

    def forbid(self, left: Iterable[Rec], right: Iterable[Rec], did: int) -> None:
        left, right = set(left), set(right) - set(left)
        # A group holding both sides loses the right side: the later decision wins.
        lgroups = {self.group_of[r] for r in left if r in self.group_of}
        self.unpin([r for r in right if self.group_of.get(r) in lgroups])
        for a in left:
            da = self.cannot.setdefault(a, {})
            for b in right:
                da[b] = did
                self.cannot.setdefault(b, {})[a] = did

    def must_pairs(self, present: set[Rec] | None = None) -> list[tuple[Rec, Rec]]:
        out = []
        for g in sorted(self.groups):
            members = sorted(m for m in self.groups[g] if present is None or m in present)
            out += [(members[0], m) for m in members[1:]]
        return out

    def cannot_pairs(self, present: set[Rec] | None = None, *, by_group: bool = False) -> list[tuple[Rec, Rec, int]]:
        """The forbidden pairs among ``present`` records. With ``by_group``, a record of a
        must-link group stands for its group (its first present member, the one
        :meth:`must_pairs` joins the others to), so a split of k records from n gives n - k
        pairs instead of k(n - k): clustering joins a group first and checks a cannot-link
        against the whole cluster, so the two say the same."""
        reps: dict[int, Rec] = {}

        def rep(x: Rec) -> Rec:
            if not by_group or x not in self.group_of:
                return x
            g = self.group_of[x]
            if g not in reps:
                reps[g] = min(m for m in self.groups[g] if present is None or m in present)
            return reps[g]

        out: dict[tuple[Rec, Rec], int] = {}
        for a, partners in self.cannot.items():
            if present is not None and a not in present:
                continue
            for b, did in partners.items():
                if a < b and (present is None or b in present):
                    ra, rb = rep(a), rep(b)
                    key = (ra, rb) if ra < rb else (rb, ra)
                    out[key] = max(out.get(key, 0), did)
        return sorted((a, b, d) for (a, b), d in out.items())


def _in_force(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["action"] != "undo" and r["undone_by"] is None),
                  key=lambda r: r["decision_id"])


def _replay(rows: list[dict[str, Any]]) -> _Constraints:
    c = _Constraints()
    for d in _in_force(rows):
        p = d["payload"]
        did = d["decision_id"]
        if d["action"] == "merge":
            c.pin(_from_json(p["records_a"]) + _from_json(p["records_b"]), did)
        elif d["action"] == "split":
            part = _from_json(p["records"])
            c.unpin(part)
            c.pin(part, did)
            c.forbid(part, _from_json(p["rest"]), did)
        elif d["action"] == "keep_apart":
            c.forbid(_from_json(p["left"]), _from_json(p["right"]), did)
    return c


def _decision_rows(st: Store) -> list[dict[str, Any]]:
    df = query_pl(st.con, "select decision_id, decided_at, author, action, reason, payload, undone_by, undoes "
                          "from decisions order by decision_id")
    rows = df.to_dicts() if df.height else []
    for r in rows:
        r["payload"] = json.loads(r["payload"]) if isinstance(r["payload"], str) else (r["payload"] or {})
    return rows


def constraints(store: Store, records: pl.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Must-link and cannot-link ``rid`` pairs from the decisions in force.

    ``records`` has ``rid``, ``source``, ``record_id`` (the records of the run); decisions
    about records that are gone are skipped. ``link`` calls this before clustering.

    >>> import polars as pl
    >>> st = Store.open("out/doctest-constraints.duckdb")
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["s", "s"], "record_id": ["1", "2"]})
    >>> constraints(st, recs)
    ([], [])
    >>> st.close()
    """
    rows = _decision_rows(store)
    if not rows:
        return [], []
    c = _replay(rows)
    rid_of = {(s, r): int(i) for i, s, r in records.select("rid", "source", "record_id").iter_rows()}
    present = set(rid_of)
    must = [(rid_of[a], rid_of[b]) for a, b in c.must_pairs(present)]
    cannot = [(rid_of[a], rid_of[b]) for a, b, _ in c.cannot_pairs(present, by_group=True)]
    return must, cannot


# --------------------------------------------------------------------------------------
# reading the store
# --------------------------------------------------------------------------------------
def _open(project: ProjectLike, *, read_only: bool) -> tuple[Project, Store]:
    proj = resolve_project(project)
    if read_only and not Path(proj.store).exists():
        raise IdweaveError("no store yet: run `idweave link` first", file=str(proj.store))
    st = Store.open(proj.store, read_only=read_only)
    if not st.has_table("records"):
        st.close()
        raise IdweaveError("the store holds no records yet: run `idweave link` first", file=str(proj.store))
    return proj, st


def _run_info(st: Store, proj: Project) -> tuple[float, str, float]:
    row = fetch_one(st.con, "select threshold, clustering from runs order by run_id desc limit 1")
    thr = float(row[0]) if row and row[0] is not None else float(proj.threshold or 0.9)
    method = str(row[1]) if row and row[1] else str(proj.clustering.get("method", "components"))
    return thr, method, float(proj.clustering.get("min_average", 0.5))


def _active_entity(st: Store, entity_id: str) -> str:
    """The active entity an id stands for (following merges), or a clear error."""
    eid = st.resolve(str(entity_id))
    if eid is None:
        raise IdweaveError(f"no entity {entity_id} in the store")
    row = fetch_one(st.con, "select status from entities where entity_id = ?", [eid])
    if row is None or row[0] != "active":
        raise IdweaveError(f"entity {entity_id} is {row[0] if row else 'unknown'}, not active")
    return eid


def _members(st: Store, entity_id: str) -> list[Rec]:
    rows = st.con.execute("select source, record_id from records where entity_id = ? order by source, record_id",
                          [entity_id]).fetchall()
    return [(s, r) for s, r in rows]


def _entity_of_records(st: Store, recs: Iterable[Rec]) -> dict[Rec, str]:
    recs = list(recs)
    if not recs:
        return {}
    df = pl.DataFrame({"source": [r[0] for r in recs], "record_id": [r[1] for r in recs]})
    st.con.register("_q_recs", df.to_arrow())
    try:
        out = query_pl(st.con, "select r.source, r.record_id, r.entity_id from records r join _q_recs q "
                               "on r.source = q.source and r.record_id = q.record_id")
    finally:
        st.con.unregister("_q_recs")
    return {(s, r): e for s, r, e in out.iter_rows()}


def _links_among(st: Store, recs: Iterable[Rec], *, min_p: float | None = None) -> pl.DataFrame:
    recs = list(recs)
    df = pl.DataFrame({"source": [r[0] for r in recs], "record_id": [r[1] for r in recs]},
                      schema={"source": pl.Utf8, "record_id": pl.Utf8})
    st.con.register("_q_among", df.to_arrow())
    try:
        cond = "" if min_p is None else f" where l.match_probability >= {float(min_p)!r}"
        return query_pl(st.con, "select l.* from links l "
                                "semi join _q_among a on l.source_l = a.source and l.record_id_l = a.record_id "
                                "semi join _q_among b on l.source_r = b.source and l.record_id_r = b.record_id" + cond)
    finally:
        st.con.unregister("_q_among")


def _strong_neighbours(st: Store, recs: Iterable[Rec], thr: float) -> set[Rec]:
    recs = list(recs)
    df = pl.DataFrame({"source": [r[0] for r in recs], "record_id": [r[1] for r in recs]},
                      schema={"source": pl.Utf8, "record_id": pl.Utf8})
    st.con.register("_q_front", df.to_arrow())
    try:
        out = query_pl(st.con,
                       "select l.source_r as s, l.record_id_r as r from links l join _q_front f "
                       "on l.source_l = f.source and l.record_id_l = f.record_id where l.match_probability >= ? "
                       "union select l.source_l, l.record_id_l from links l join _q_front f "
                       "on l.source_r = f.source and l.record_id_r = f.record_id where l.match_probability >= ?",
                       [thr, thr])
    finally:
        st.con.unregister("_q_front")
    return {(s, r) for s, r in out.iter_rows()} if out.height else set()


# --------------------------------------------------------------------------------------
# applying a decision
# --------------------------------------------------------------------------------------
@dataclass
class DecisionResult:
    """What a decision did: its id, the entities it left, the events it wrote."""

    decision_id: int
    action: str
    entities: list[str]
    events: int
    moved: int
    notes: list[str] = field(default_factory=list)


def _apply(st: Store, proj: Project, action: str, *, payload: dict[str, Any], author: str, reason: str,
           seeds: set[Rec], fresh: set[Rec] = frozenset(), split_parent: str | None = None,
           undoes: int | None = None, basis_override: dict[Rec, str] | None = None,
           main: tuple[str | None, str | None] = (None, None)) -> DecisionResult:
    """Record a decision and re-cluster the part of the graph it touches, in one transaction.

    The part re-clustered (the region) is closed under strong links, must-link groups and
    old entities, so the result is what the next full run computes from the same links.
    """
    rows = _decision_rows(st)
    did = (max((r["decision_id"] for r in rows), default=0)) + 1
    for r in rows:
        if undoes is not None and r["decision_id"] == undoes:
            r["undone_by"] = did
    rows.append({"decision_id": did, "action": action, "payload": payload, "undone_by": None, "undoes": undoes})
    cons = _replay(rows)
    thr, method, min_average = _run_info(st, proj)

    recs = query_pl(st.con, "select source, record_id, entity_id, content_hash from records").sort("source", "record_id")
    current: dict[Rec, str] = {(s, r): e for s, r, e, _ in recs.iter_rows()}
    chash: dict[Rec, str] = {(s, r): h for s, r, _, h in recs.iter_rows()}
    rid_of = {k: i for i, k in enumerate(current)}
    members_of: dict[str, list[Rec]] = defaultdict(list)
    for k, e in current.items():
        members_of[e].append(k)

    # The region: closed under strong links, must-link groups and old entities.
    seeds = {s for s in seeds if s in current}
    region: set[Rec] = set()
    frontier = set(seeds)
    while frontier:
        region |= frontier
        nxt: set[Rec] = set()
        for r in frontier:
            nxt.update(members_of[current[r]])
            g = cons.group_of.get(r)
            if g is not None:
                nxt.update(m for m in cons.groups[g] if m in current)
        nxt |= _strong_neighbours(st, frontier, thr)
        frontier = nxt - region

    region_links = _links_among(st, region)
    if region_links.height:
        lk = pl.DataFrame({
            "rid_l": [rid_of[(s, r)] for s, r in region_links.select("source_l", "record_id_l").iter_rows()],
            "rid_r": [rid_of[(s, r)] for s, r in region_links.select("source_r", "record_id_r").iter_rows()],
            "match_probability": region_links["match_probability"]},
            schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64})
    else:
        lk = pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64})
    exclusive = {s.name for s in proj.sources.values() if s.exclusive}
    excl = {rid_of[k]: k[0] for k in region if k[0] in exclusive}
    must = [(rid_of[a], rid_of[b]) for a, b in cons.must_pairs(region)]
    cannot = [(rid_of[a], rid_of[b]) for a, b, _ in cons.cannot_pairs(region, by_group=True)]
    ordered = sorted(region, key=lambda k: rid_of[k])
    cl = cluster(lk, [rid_of[k] for k in ordered], threshold=thr, exclusive=excl, must_link=must,
                 cannot_link=cannot, method=method, min_average=min_average)
    label = dict(zip(cl["rid"].to_list(), cl["cluster"].to_list()))
    clusters = {k: label[rid_of[k]] for k in ordered}

    # Persistent ids: graph.assign_ids on a basis (who each record belongs to for inheritance).
    ent_rows = {r["entity_id"]: r for r in query_pl(st.con, "select * from entities").iter_rows(named=True)}
    basis = {k: current[k] for k in region}
    for k, e in (basis_override or {}).items():
        if k in basis and e in ent_rows:
            basis[k] = e
    for k in fresh:
        basis.pop(k, None)
    a = assign_ids(clusters, basis, st.entity_ages())
    new_of = a.entity_of

    events: list[dict[str, Any]] = [{"type": "decision", "entity_id": main[0], "other_entity_id": main[1],
                                     "detail": action}]
    created = {}
    for eid, _sf in a.created:
        mem = [k for k, e in new_of.items() if e == eid]
        if split_parent is not None and any(k in fresh for k in mem):
            parent = split_parent
        else:
            counts = Counter(current[k] for k in mem)
            parent = min(counts, key=lambda e: (-counts[e], e)) if counts else None
        created[eid] = parent
        events.append({"type": "entity_created", "entity_id": eid, "other_entity_id": parent,
                       "detail": "split" if parent else None})
        if parent:
            events.append({"type": "entity_split", "entity_id": parent, "other_entity_id": eid})
    survivors = set(new_of.values())
    revived = sorted(e for e in survivors if e not in created and ent_rows.get(e, {}).get("status") != "active")
    for e in revived:
        events.append({"type": "entity_restored", "entity_id": e, "other_entity_id": ent_rows[e].get("merged_into")})
    moved = []
    for k in ordered:
        if current[k] != new_of[k]:
            moved.append([k[0], k[1], current[k], new_of[k]])
            events.append({"type": "record_moved", "entity_id": new_of[k], "other_entity_id": current[k],
                           "source": k[0], "record_id": k[1]})
    vanished = {}
    for e in sorted({current[k] for k in region} - survivors):
        counts = Counter(new_of[k] for k in members_of[e])
        heir = min(counts, key=lambda x: (-counts[x], x))
        vanished[e] = heir
        events.append({"type": "entities_merged", "entity_id": heir, "other_entity_id": e})

    # What the person saw after this decision: those entities leave the queue until they change.
    after_members: dict[str, list[Rec]] = defaultdict(list)
    for k, e in new_of.items():
        after_members[e].append(k)
    seen_entities = sorted({new_of[k] for k in seeds})
    payload = dict(payload)
    payload["moved"] = moved
    payload["reviewed"] = {e: entity_digest((s, r, chash[(s, r)]) for s, r in after_members[e]) for e in seen_entities}
    # Scores at decision time of the pairs a conflict check could flag later.
    among = _links_among(st, seeds)
    payload["extremes"] = [[sl, rl, sr, rr, p] for sl, rl, sr, rr, p in among.select(
        "source_l", "record_id_l", "source_r", "record_id_r", "match_probability").iter_rows()
        if p >= CONFLICT_PROBABILITY or p <= 1 - CONFLICT_PROBABILITY]

    sizes = Counter(new_of.values())
    last_run = st.last_run()
    try:
        st.begin()
        st.con.execute("insert into decisions values (?, ?, ?, ?, ?, ?, NULL, ?)",
                       [did, utc_now(), author, action, reason, json.dumps(payload), undoes])
        if undoes is not None:
            st.con.execute("update decisions set undone_by = ? where decision_id = ?", [did, undoes])
        if moved:
            mv = pl.DataFrame({"source": [m[0] for m in moved], "record_id": [m[1] for m in moved],
                               "entity_id": [m[3] for m in moved]})
            st.con.register("_moves", mv.to_arrow())
            st.con.execute("update records set entity_id = m.entity_id from _moves m "
                           "where records.source = m.source and records.record_id = m.record_id")
            st.con.unregister("_moves")
        for eid, parent in created.items():
            st.con.execute("insert into entities values (?, 'active', NULL, ?, ?, ?, ?)",
                           [eid, parent, last_run, last_run, sizes[eid]])
        for e in revived:
            st.con.execute("update entities set status = 'active', merged_into = NULL, size = ? where entity_id = ?",
                           [sizes[e], e])
        for e, heir in vanished.items():
            st.con.execute("update entities set status = 'merged', merged_into = ?, size = 0 where entity_id = ?",
                           [heir, e])
        for e in survivors - set(created) - set(revived):
            st.con.execute("update entities set size = ? where entity_id = ?", [sizes[e], e])
        n_events = st.append_events(events, decision_id=did)
        st.commit()
    except BaseException:
        st.rollback()
        raise
    notes = []
    for e in seen_entities:
        srcs = Counter(k[0] for k in after_members[e] if k[0] in exclusive)
        for s, n in sorted(srcs.items()):
            if n > 1:
                notes.append(f"entity {e} now holds {n} records from the exclusive source '{s}'")
    return DecisionResult(did, action, seen_entities, n_events, len(moved), notes)


# --------------------------------------------------------------------------------------
# the decisions
# --------------------------------------------------------------------------------------
def apply_decision(st: Store, proj: Project, action: str, *, payload: dict[str, Any], author: str, reason: str,
                   seeds: set[Rec], main: tuple[str | None, str | None] = (None, None)) -> DecisionResult:
    """The decision write path for another verb (``forget``): record ``action`` and
    re-cluster the part of the graph around ``seeds`` from the stored links, exactly as a
    decision does (see :func:`merge`). ``st`` may hold an outer transaction (a store whose
    ``begin``/``commit`` do nothing): the caller's changes and this one then commit together."""
    return _apply(st, proj, action, payload=payload, author=author, reason=reason, seeds=seeds, main=main)


def _author(author: str | None) -> str:
    return author if author else default_author()


def _decide(project: ProjectLike, action: str, plan, *, author: str | None, reason: str) -> DecisionResult:
    """Check the decision on a read-only store first, so bad input never touches the store
    (opening it for writing alone changes the file); then plan and apply it for real."""
    proj, st = _open(project, read_only=True)
    with st:
        plan(st)
    proj, st = _open(proj, read_only=False)
    with st:
        kw = plan(st)
        return _apply(st, proj, action, author=_author(author), reason=reason or "", **kw)


def merge(project: ProjectLike, a: str, b: str, *, author: str | None = None, reason: str = "") -> DecisionResult:
    """Two entities are one: the older id survives and the other becomes ``merged`` into it.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-review.duckdb")
    >>> e = link(p).entities["entity_id"].unique().sort().to_list()
    >>> res = merge(p, e[0], e[1], author="ada", reason="same person")
    >>> res.action, len(res.entities)
    ('merge', 1)
    >>> undo(p, res.decision_id, author="ada", reason="doctest").action
    'undo'
    """
    def plan(st: Store) -> dict[str, Any]:
        ea, eb = _active_entity(st, a), _active_entity(st, b)
        if ea == eb:
            raise IdweaveError(f"entities {a} and {b} are already one entity ({ea})")
        ra, rb = _members(st, ea), _members(st, eb)
        payload = {"a": ea, "b": eb, "records_a": _recs_json(ra), "records_b": _recs_json(rb)}
        return {"payload": payload, "seeds": set(ra) | set(rb), "main": (ea, eb)}

    return _decide(project, "merge", plan, author=author, reason=reason)


def split(project: ProjectLike, entity_id: str, records: Sequence[Rec | str], *, author: str | None = None,
          reason: str = "") -> DecisionResult:
    """The named records leave the entity and are pinned together, never again joined with
    the records that stay. They become a new entity (``split_from`` the entity), unless links
    above the threshold join them to another entity: then they are part of that one, as the
    next run would put them (the result names the entities they are in now).

    ``records`` are (source, record_id) pairs or ``"source:id"`` strings.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-split.duckdb")
    >>> ents = link(p).entities
    >>> big = ents.group_by("entity_id").len().sort("len", "entity_id", descending=True)["entity_id"][0]
    >>> first = ents.filter(ents["entity_id"] == big).sort("source", "record_id").row(0)[:2]
    >>> res = split(p, big, [first], author="ada", reason="another person")
    >>> len(res.entities), res.entities[0] != big or res.entities[1] != big
    (2, True)
    """
    def plan(st: Store) -> dict[str, Any]:
        eid = _active_entity(st, entity_id)
        mem = _members(st, eid)
        part = [_rec(r) for r in records]
        if not part:
            raise IdweaveError("name at least one record to split off")
        missing = [r for r in part if r not in set(mem)]
        if missing:
            raise IdweaveError(f"records {', '.join(_fmt(r) for r in missing)} are not in entity {eid}")
        rest = sorted(set(mem) - set(part))
        if not rest:
            raise IdweaveError(f"splitting off every record of entity {eid} would leave nothing: name fewer records")
        payload = {"entity": eid, "records": _recs_json(set(part)), "rest": _recs_json(rest)}
        return {"payload": payload, "seeds": set(mem), "fresh": set(part), "split_parent": eid, "main": (eid, None)}

    return _decide(project, "split", plan, author=author, reason=reason)


def _side(st: Store, x: str | Rec) -> tuple[list[Rec], str]:
    """An entity id or a record reference -> (its records, its entity)."""
    if isinstance(x, tuple) or (isinstance(x, str) and ":" in x):
        rec = _rec(x)
        e = _entity_of_records(st, [rec]).get(rec)
        if e is None:
            raise IdweaveError(f"no record {_fmt(rec)} in the store")
        return [rec], e
    eid = _active_entity(st, x)
    return _members(st, eid), eid


def keep_apart(project: ProjectLike, a: str | Rec, b: str | Rec, *, author: str | None = None,
               reason: str = "") -> DecisionResult:
    """Two records or entities (ids, or ``"source:id"`` records) must never be joined.

    They must be apart now: to separate records of one entity, use :func:`split`.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-apart.duckdb")
    >>> e = link(p).entities["entity_id"].unique().sort().to_list()
    >>> keep_apart(p, e[0], e[1], author="ada", reason="different people").action
    'keep_apart'
    """
    def plan(st: Store) -> dict[str, Any]:
        left, ea = _side(st, a)
        right, eb = _side(st, b)
        if ea == eb:
            raise IdweaveError(f"{_name(a)} and {_name(b)} are in one entity ({ea}): split it first")
        sides = {frozenset(left), frozenset(right)}
        same = _repeats(st, "keep_apart", set(left) | set(right),
                        lambda p: {frozenset(_from_json(p["left"])), frozenset(_from_json(p["right"]))} == sides)
        if same is not None:
            raise IdweaveError(f"already in force: decision #{same} keeps these records apart, and their links "
                               "score as they did then; nothing recorded")
        payload = {"left": _recs_json(left), "right": _recs_json(right), "entities": [ea, eb]}
        return {"payload": payload, "seeds": set(left) | set(right), "main": (ea, eb)}

    return _decide(project, "keep_apart", plan, author=author, reason=reason)


def _repeats(st: Store, action: str, seeds: set[Rec], same_subject) -> int | None:
    """The decision in force that the ``action`` about to be recorded would only repeat (same
    subject, per ``same_subject(payload)``, and the links among ``seeds`` scoring at the
    extremes as they did then), or None. A decision taken again after the evidence changed
    (a conflict in the queue) is not a repeat: it settles the conflict."""
    found = [d for d in _in_force(_decision_rows(st)) if d["action"] == action and same_subject(d["payload"])]
    if not found:
        return None
    among = _links_among(st, seeds)
    now = sorted((sl, rl, sr, rr, round(p, 6)) for sl, rl, sr, rr, p in among.select(
        "source_l", "record_id_l", "source_r", "record_id_r", "match_probability").iter_rows()
        if p >= CONFLICT_PROBABILITY or p <= 1 - CONFLICT_PROBABILITY)
    for d in reversed(found):
        then = sorted((sl, rl, sr, rr, round(p, 6)) for sl, rl, sr, rr, p in d["payload"].get("extremes", []))
        if then == now:
            return int(d["decision_id"])
    return None


def _digest_now(st: Store, eid: str, mem: list[Rec]) -> str:
    """:func:`entity_digest` of an entity's records as the store holds them now."""
    with st.registered("_dig", pl.DataFrame({"source": [s for s, _ in mem], "record_id": [r for _, r in mem]},
                                            schema={"source": pl.Utf8, "record_id": pl.Utf8})):
        rows = st.con.execute("select r.source, r.record_id, r.content_hash from records r join _dig d "
                              "on r.source = d.source and r.record_id = d.record_id").fetchall()
    return entity_digest(rows)


def _name(x: str | Rec) -> str:
    return _fmt(x) if isinstance(x, tuple) else str(x)


def confirm(project: ProjectLike, entity_id: str, *, author: str | None = None, reason: str = "") -> DecisionResult:
    """The entity is right as it is: it leaves the queue until its records change.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-confirm.duckdb")
    >>> e = link(p).entities["entity_id"][0]
    >>> confirm(p, e, author="ada").entities == [e]
    True
    """
    def plan(st: Store) -> dict[str, Any]:
        eid = _active_entity(st, entity_id)
        mem = _members(st, eid)
        digest = _digest_now(st, eid, mem)
        same = _repeats(st, "confirm", set(mem), lambda p: set(_from_json(p["records"])) == set(mem)
                        and (p.get("reviewed") or {}).get(eid) == digest)
        if same is not None:
            raise IdweaveError(f"already in force: decision #{same} confirmed entity {eid} with these same "
                               "records and values; nothing recorded")
        return {"payload": {"entity": eid, "records": _recs_json(mem)}, "seeds": set(mem), "main": (eid, None)}

    return _decide(project, "confirm", plan, author=author, reason=reason)


def undo(project: ProjectLike, decision_id: int, *, author: str | None = None, reason: str = "") -> DecisionResult:
    """Withdraw a decision: its constraints go, and the records it moved go back where they
    were (to their old entity ids, reviving an entity it merged away) unless they have moved
    again since. See :func:`merge` for an example."""
    def plan(st: Store) -> dict[str, Any]:
        rows = {r["decision_id"]: r for r in _decision_rows(st)}
        d = rows.get(int(decision_id))
        if d is None:
            raise IdweaveError(f"no decision #{decision_id} in the store")
        if d["action"] == "undo":
            raise IdweaveError(f"decision #{decision_id} is an undo; make the original decision again instead")
        if d["action"] == "erase":
            raise IdweaveError(f"decision #{decision_id} is an erasure (idweave forget); it cannot be undone")
        if d["undone_by"] is not None:
            raise IdweaveError(f"decision #{decision_id} was already undone by #{d['undone_by']}")
        p = d["payload"]
        involved: set[Rec] = set()
        for key in ("records_a", "records_b", "records", "rest", "left", "right"):
            involved |= set(_from_json(p.get(key, [])))
        involved |= {(m[0], m[1]) for m in p.get("moved", [])}
        current = _entity_of_records(st, involved)
        basis = {(s, r): before for s, r, before, after in p.get("moved", []) if current.get((s, r)) == after}
        main = (p.get("a") or p.get("entity") or (p.get("entities") or [None])[0],
                p.get("b") or (p.get("entities") or [None, None])[1])
        return {"payload": {"undoes": int(decision_id), "action": d["action"]}, "seeds": set(current),
                "undoes": int(decision_id), "basis_override": basis, "main": main}

    return _decide(project, "undo", plan, author=author, reason=reason)


def decisions(project: ProjectLike, *, include_undone: bool = True) -> pl.DataFrame:
    """The decisions table: id, time, author, action, reason, the entities it named, whether
    it is in force.

    >>> decisions("fixtures/tiny/project.yaml").columns[:4]
    ['decision_id', 'decided_at', 'author', 'action']
    """
    proj, st = _open(project, read_only=True)
    with st:
        rows = _decision_rows(st)
    out = []
    for r in rows:
        p = r["payload"]
        ents = [e for e in (p.get("a"), p.get("b"), p.get("entity")) if e] + list(p.get("entities") or [])
        if r["action"] == "undo":
            ents = [f"#{p.get('undoes')}"]
        in_force = r["action"] != "undo" and r["undone_by"] is None
        if include_undone or in_force:
            out.append({"decision_id": r["decision_id"], "decided_at": r["decided_at"], "author": r["author"],
                        "action": r["action"], "reason": r["reason"], "subject": " ".join(ents),
                        "in_force": in_force, "undone_by": r["undone_by"], "undoes": r["undoes"]})
    schema = {"decision_id": pl.Int64, "decided_at": pl.Datetime, "author": pl.Utf8, "action": pl.Utf8,
              "reason": pl.Utf8, "subject": pl.Utf8, "in_force": pl.Boolean, "undone_by": pl.Int64,
              "undoes": pl.Int64}
    return pl.DataFrame(out, schema=schema)


# --------------------------------------------------------------------------------------
# the queue
# --------------------------------------------------------------------------------------
@dataclass
class QueueItem:
    """One thing to review: an entity, or a pair of entities (``other_entity_id``).

    ``reason`` is the most serious of ``reasons`` (codes of :data:`REASONS`); ``detail``
    says why in words and record ids (never values); ``link`` is the weakest link holding
    the entity, or the best link between the pair; ``score`` orders the queue (hard reasons
    score above 1, the others an error probability).
    """

    rank: int
    entity_id: str
    other_entity_id: str | None
    reason: str
    reasons: list[str]
    detail: str
    size: int
    other_size: int | None
    link: float | None
    score: float
    suggested_split: list[str] | None = None

    @property
    def kind(self) -> str:
        return "pair" if self.other_entity_id else "entity"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind}


def _max_spanning_tree(nodes: list[Rec], edges: list[tuple[float, Rec, Rec, int]]) -> list[tuple[float, Rec, Rec, int]]:
    parent = {n: n for n in nodes}

    def find(x: Rec) -> Rec:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tree = []
    for e in sorted(edges, key=lambda e: (-e[0], e[1], e[2])):
        ra, rb = find(e[1]), find(e[2])
        if ra != rb:
            parent[ra] = rb
            tree.append(e)
    return tree


class _Suggester:
    """The suggested split of an entity: the fewest records whose removal leaves the rest
    consistent, where two records are inconsistent when their national ids differ by more
    than one character, their dates of one attribute fall in two groups (of two or more
    records each, in an entity of more than three) more than ``date_gap_days`` apart whose
    commonest dates differ by more than one character, or both come from an exclusive
    source (what the hard queue reasons look at). That is a
    minimum vertex cover of the graph of inconsistent pairs: exact for up to
    :attr:`EXACT` records in such pairs, greedy beyond. Among covers of that size the one
    without an inconsistency inside (it becomes one entity) and least linked to the rest
    wins. An entity with no inconsistent pair gets the weaker side of its worst link-tree
    cut (``fallback``, from :func:`_worst_split`).

    >>> import polars as pl

    A father (born 1947: records a:1, b:4, b:5) and his son (a:2, b:3) in one entity:

    >>> recs = pl.DataFrame({"entity_id": ["E"] * 5, "source": ["a", "a", "b", "b", "b"],
    ...                      "record_id": ["1", "2", "3", "4", "5"],
    ...                      "birth_date": ["1947-09-10", "1977-03-19", "1977-03-19", "1947-09-10", "1947-09-10"],
    ...                      "ssn": ["895843485", "274715758", None, "895843485", None]})
    >>> s = _Suggester(recs, {"birth_date": "date", "ssn": "national_id"}, set(), 730)
    >>> mem = [("a", "1"), ("a", "2"), ("b", "3"), ("b", "4"), ("b", "5")]
    >>> s.suggest("E", mem, [("b", "4")], [])
    [('a', '2'), ('b', '3')]
    """

    EXACT = 16

    def __init__(self, recs: pl.DataFrame, kinds: Mapping[str, str], exclusive: set[str], date_gap_days: int):
        self.ids = [a for a, k in kinds.items() if k == "national_id" and a in recs.columns]
        self.dates = [a for a, k in kinds.items() if k == "date" and a in recs.columns]
        self.exclusive = set(exclusive)
        self.gap = int(date_gap_days)
        cols = ["entity_id", "source", "record_id", *self.ids, *self.dates]
        self.rows: dict[str, dict[Rec, tuple]] = defaultdict(dict)
        for row in recs.select(cols).iter_rows():
            e, s, r, *vals = row
            ids = tuple(vals[:len(self.ids)])
            dates = tuple(self._date(v) for v in vals[len(self.ids):])
            self.rows[e][(s, r)] = (ids, dates)

    @staticmethod
    def _date(v: Any):
        from datetime import date

        if v is None:
            return None
        try:
            return date.fromisoformat(str(v)[:10])
        except ValueError:
            return None

    def _date_groups(self, mem: Sequence[Rec], vals: Mapping[Rec, tuple]) -> list[dict[Rec, str]]:
        """Per date attribute: record -> the commonest date of its group of dates (gaps of at
        most ``gap`` days),
        for groups of two or more records only (in an entity of more than three records): a
        lone far date there is taken for a typo, as the ``dates_apart`` reason takes it."""
        out = []
        solid = 1 if len(mem) <= 3 else 2  # in two or three records, one far date is all there is
        for j in range(len(self.dates)):
            dated = sorted((vals[m][1][j], m) for m in mem if vals[m][1][j] is not None)
            groups: list[list[Rec]] = []
            last = None
            for d, m in dated:
                if last is None or (d - last).days > self.gap:
                    groups.append([])
                groups[-1].append(m)
                last = d
            # Each group stands for its commonest date (a group is one person's date and its typos).
            rep = {}
            for g, ms in enumerate(groups):
                c = Counter(vals[m][1][j] for m in ms)
                rep[g] = min(c, key=lambda d: (-c[d], d)).isoformat()
            out.append({m: rep[g] for g, ms in enumerate(groups) if len(ms) >= solid for m in ms})
        return out

    def _clash(self, a: Rec, b: Rec, va: tuple, vb: tuple, groups: list[dict[Rec, str]]) -> bool:
        if a[0] == b[0] and a[0] in self.exclusive:
            return True
        for x, y in zip(va[0], vb[0]):
            if x is not None and y is not None and Levenshtein.distance(str(x), str(y)) > 1:
                return True
        for g in groups:
            # Groups whose dates are one character apart (1860-12-07, 1868-12-07) are a typo,
            # not two people.
            if a in g and b in g and g[a] != g[b] and Levenshtein.distance(g[a], g[b]) > 1:
                return True
        return False

    def suggest(self, e: str, mem: Sequence[Rec], fallback: Sequence[Rec],
                edges: Iterable[tuple[float, Rec, Rec]]) -> list[Rec]:
        vals = self.rows.get(e, {})
        mem = sorted(m for m in mem if m in vals)
        clash: dict[Rec, set[Rec]] = defaultdict(set)
        groups = self._date_groups(mem, vals)
        for i, a in enumerate(mem):
            for b in mem[i + 1:]:
                if self._clash(a, b, vals[a], vals[b], groups):
                    clash[a].add(b)
                    clash[b].add(a)
        if not clash:
            return sorted(fallback)
        pairs = [(a, b) for a in clash for b in clash[a] if a < b]
        strength: dict[frozenset, float] = {}
        for p, a, b in edges:
            strength[frozenset((a, b))] = max(p, strength.get(frozenset((a, b)), 0.0))

        def cost(cover: set[Rec]) -> tuple:
            inside = sum(1 for a, b in pairs if a in cover and b in cover)
            tie = sum(p for k, p in strength.items() if len(k & cover) == 1)
            return (len(cover), inside, tie, sorted(cover))

        nodes = sorted(clash)
        if len(nodes) <= self.EXACT:
            from itertools import combinations

            best = None
            for k in range(1, len(nodes)):
                for combo in combinations(nodes, k):
                    c = set(combo)
                    if all(a in c or b in c for a, b in pairs):
                        key = cost(c)
                        if best is None or key < best[0]:
                            best = (key, c)
                if best is not None:
                    break
            cover = best[1] if best else {nodes[0]}
        else:  # greedy: the record in the most inconsistent pairs first
            cover, left = set(), set(pairs)
            while left:
                deg = Counter(x for pr in left for x in pr)
                pick = min(deg, key=lambda x: (-deg[x], x))
                cover.add(pick)
                left = {pr for pr in left if pick not in pr}
        if len(cover) >= len(mem):
            return sorted(fallback)
        return sorted(cover)


@dataclass
class _Split:
    cohesion: float
    side: list[Rec]
    rest: int
    crossing: int
    edge_p: float
    weakest: float
    looks: int


def _worst_split(nodes: list[Rec], edges: list[tuple[float, Rec, Rec]], thr: float,
                 unscored_weight: float) -> _Split | None:
    """The split of an entity whose two sides match least.

    The candidate splits are the edges of the maximum spanning tree of the links at or
    above ``thr`` (cutting one tree edge splits the entity in two). For each, the cohesion
    is the mean match probability of the pairs across the cut (an unscored pair counts 0
    with weight ``unscored_weight``: 1 when blocking pairs nearly every true match, less
    when it does not), and ``crossing`` counts the links at or above ``thr`` across it (1:
    the tree edge is a bridge). Sums across every cut come from subtree sums and lowest
    common ancestors, so an entity costs O(links x depth), not O(records x links).
    """
    strong = [e for e in edges if e[0] >= thr]
    tree = _max_spanning_tree(nodes, [(p, a, b, i) for i, (p, a, b) in enumerate(strong)])
    if len(tree) != len(nodes) - 1:
        return None
    adj: dict[Rec, list[tuple[Rec, float]]] = defaultdict(list)
    for p, a, b, _i in tree:
        adj[a].append((b, p))
        adj[b].append((a, p))
    root = nodes[0]
    parent: dict[Rec, Rec | None] = {root: None}
    up_p: dict[Rec, float] = {}
    depth = {root: 0}
    order = [root]
    for u in order:
        for v, p in sorted(adj[u]):
            if v not in parent:
                parent[v] = u
                up_p[v] = p
                depth[v] = depth[u] + 1
                order.append(v)

    def lca(a: Rec, b: Rec) -> Rec:
        while depth[a] > depth[b]:
            a = parent[a]  # type: ignore[assignment]
        while depth[b] > depth[a]:
            b = parent[b]  # type: ignore[assignment]
        while a != b:
            a, b = parent[a], parent[b]  # type: ignore[assignment]
        return a

    # per node: incident sums (p, scored count, strong count) and sums of edges whose lca it is
    inc = {n: [0.0, 0, 0] for n in nodes}
    low = {n: [0.0, 0, 0] for n in nodes}
    for p, a, b in edges:
        s = 1 if p >= thr else 0
        for x in (a, b):
            inc[x][0] += p
            inc[x][1] += 1
            inc[x][2] += s
        c = low[lca(a, b)]
        c[0] += p
        c[1] += 1
        c[2] += s
    size = {n: 1 for n in nodes}
    acc = {n: [inc[n][0] - 2 * low[n][0], inc[n][1] - 2 * low[n][1], inc[n][2] - 2 * low[n][2]] for n in nodes}
    inner = {n: [low[n][0], low[n][1]] for n in nodes}
    total_p = sum(e[0] for e in edges)
    total_n = len(edges)
    best: tuple | None = None
    n_all = len(nodes)

    def mean(p: float, n: int, pairs: int) -> float | None:
        denom = n + unscored_weight * (pairs - n)
        return p / denom if denom > 0 else None

    for v in reversed(order):
        u = parent[v]
        if u is None:
            continue
        cross_p, cross_n, cross_s = acc[v]
        sub, rest = size[v], n_all - size[v]
        coh = mean(cross_p, cross_n, sub * rest)
        coh = 1.0 if coh is None else coh
        # Relative to how well each side matches itself, so that sparse blocking (many
        # unscored pairs inside a true entity too) does not look like two people.
        w_p = inner[v][0] + (total_p - inner[v][0] - cross_p)
        w_n = inner[v][1] + (total_n - inner[v][1] - cross_n)
        within = mean(w_p, w_n, sub * (sub - 1) // 2 + rest * (rest - 1) // 2)
        rel = coh if not within else min(1.0, coh / within)
        key = (rel, -min(sub, rest), v)
        if best is None or key < best[0]:
            best = (key, v, int(round(cross_s)), up_p[v], sub, rest, rel, int(cross_n))
        size[u] += size[v]
        for i in range(3):
            acc[u][i] += acc[v][i]
        inner[u][0] += inner[v][0]
        inner[u][1] += inner[v][1]
    assert best is not None
    (_, _, _), v, crossing, edge_p, sub, rest, rel, looks = best
    below: list[Rec] = []
    children: dict[Rec, list[Rec]] = defaultdict(list)
    for x in order[1:]:
        children[parent[x]].append(x)  # type: ignore[index]
    stack = [v]
    while stack:
        x = stack.pop()
        below.append(x)
        stack.extend(children[x])
    side = sorted(below) if sub <= rest else sorted(set(nodes) - set(below))
    return _Split(cohesion=float(rel), side=side, rest=n_all - len(side), crossing=crossing, edge_p=float(edge_p),
                  weakest=float(min(p for p, *_ in tree)), looks=looks)



def queue(project: ProjectLike, *, limit: int | None = None, margin_bits: float = 3.0,
          large_size: int | None = None, date_gap_days: int = 730, unscored_weight: float = 1.0,
          include_reviewed: bool = False) -> list[QueueItem]:
    """The review queue: doubtful entities and entity pairs, most likely wrong first.

    Reasons (see :data:`REASONS`): a human decision contradicted by new scores; two records
    of an exclusive source; national ids that differ by more than one character; dates of one
    kind more than ``date_gap_days`` apart; more than ``large_size`` records (default: twice
    the 95th percentile of multi-record entity sizes, at least 5); held by links in the
    uncertain band (match weight within ``margin_bits`` above the threshold's), or by one
    such link joining two groups (a weak bridge); two entities joined by links within
    ``margin_bits`` below the threshold (a near miss). Entities a decision has reviewed
    (confirmed, or the result of a merge or split) stay out until their records change.

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/demo/project.yaml")
    >>> items = queue("fixtures/demo/project.yaml", limit=3)
    >>> [i.rank for i in items]
    [1, 2, 3]
    """
    proj, st = _open(project, read_only=True)
    with st:
        thr, _method, _ = _run_info(st, proj)
        recs = query_pl(st.con, "select * from records")
        links = query_pl(st.con, "select source_l, record_id_l, source_r, record_id_r, match_probability from links")
        rows = _decision_rows(st)
    return _queue(proj, recs, links, rows, thr, limit=limit, margin_bits=margin_bits, large_size=large_size,
                  date_gap_days=date_gap_days, unscored_weight=unscored_weight, include_reviewed=include_reviewed)


def _household_members(recs: pl.DataFrame, kinds: Mapping[str, str], date_gap_days: int) -> list[tuple[str, str]]:
    """Entities holding two records that share a family name and an address (or phone) but
    whose given names clearly differ (Jaro-Winkler below 0.8, no nickname in common) or whose
    birth dates are more than ``date_gap_days`` apart: what different members of one
    household look like. One (entity_id, detail) per entity; the detail names record ids only.

    >>> recs = pl.DataFrame({"entity_id": ["E1", "E1", "E2", "E2"], "source": ["a"] * 4,
    ...     "record_id": ["1", "2", "3", "4"], "first_name": ["anne", "bruce", "ann", "anne"],
    ...     "last_name": ["lee"] * 4, "address": ["1 high st"] * 4})
    >>> _household_members(recs, {"first_name": "given_name", "last_name": "family_name",
    ...                           "address": "address"}, 730)
    [('E1', 'a:1 and a:2 share last_name and address, but their first_name differs')]
    """
    from idweave.blocking.keys import canonical_names

    present = [a for a in kinds if a in recs.columns]
    family = next((a for a in present if kinds[a] == "family_name"), None)
    shared = [a for a in present if kinds[a] in ("address", "phone")]
    given = next((a for a in present if kinds[a] == "given_name"), None)
    dates = [a for a in present if kinds[a] == "date"]
    if family is None or not shared or (given is None and not dates):
        return []
    cols = ["entity_id", "source", "record_id", family, *shared, *([given] if given else []), *dates]
    sub = recs.select(cols).filter(pl.col(family).is_not_null()).sort("entity_id", "source", "record_id")
    out = []
    for (e,), grp in sub.group_by("entity_id", maintain_order=True):
        rows = grp.rows(named=True)
        if len(rows) < 2:
            continue
        hit = None
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                if a[family] != b[family]:
                    continue
                same = next((x for x in shared if a[x] is not None and a[x] == b[x]), None)
                if same is None:
                    continue
                why = None
                if given and a[given] and b[given] and JaroWinkler.similarity(a[given], b[given]) < 0.8 \
                        and not set(canonical_names(a[given])) & set(canonical_names(b[given])):
                    why = f"their {given} differs"
                for d in dates:
                    if why is None and a[d] and b[d]:
                        try:
                            gap = abs((datetime.date.fromisoformat(a[d]) - datetime.date.fromisoformat(b[d])).days)
                        except ValueError:
                            continue
                        if gap > date_gap_days:
                            why = f"their {d} values are {gap / 365.25:.0f} years apart"
                if why:
                    hit = f"{_fmt((a['source'], a['record_id']))} and {_fmt((b['source'], b['record_id']))} share " \
                          f"{family} and {same}, but {why}"
                    break
            if hit:
                break
        if hit:
            out.append((e, hit))
    return out


def _queue(proj: Project, recs: pl.DataFrame, links: pl.DataFrame, rows: list[dict[str, Any]], thr: float, *,
           limit: int | None, margin_bits: float, large_size: int | None, date_gap_days: int,
           unscored_weight: float, include_reviewed: bool) -> list[QueueItem]:
    kinds = {a.name: a.kind for a in proj.attributes.values()}
    exclusive = {s.name for s in proj.sources.values() if s.exclusive}
    w_thr = _weight(thr)
    band_top = _prob(w_thr + margin_bits)
    near_low = _prob(w_thr - margin_bits)
    cons = _replay(rows)

    entity_of: dict[Rec, str] = {(s, r): e for s, r, e in recs.select("source", "record_id", "entity_id").iter_rows()}
    sizes = dict(recs.group_by("entity_id").len().iter_rows())
    multi = sorted(v for v in sizes.values() if v >= 2)
    if large_size is None:
        q95 = multi[int(0.95 * (len(multi) - 1))] if multi else 1
        large_size = max(5, 2 * q95)

    found: dict[tuple[str, str | None], dict[str, tuple[float, str]]] = defaultdict(dict)
    link_of: dict[tuple[str, str | None], float | None] = {}
    suggest: dict[str, list[str]] = {}

    def add(key: tuple[str, str | None], reason: str, score: float, detail: str) -> None:
        if reason not in found[key] or found[key][reason][0] < score:
            found[key][reason] = (score, detail)

    ek = links.join(recs.select(pl.col("source").alias("source_l"), pl.col("record_id").alias("record_id_l"),
                                pl.col("entity_id").alias("e_l")), on=["source_l", "record_id_l"]) \
        .join(recs.select(pl.col("source").alias("source_r"), pl.col("record_id").alias("record_id_r"),
                          pl.col("entity_id").alias("e_r")), on=["source_r", "record_id_r"])

    # -- decision conflicts
    ack_hi = set()
    ack_lo = set()
    for d in _in_force(rows):
        for sl, rl, sr, rr, p in d["payload"].get("extremes", []):
            key = tuple(sorted([(sl, rl), (sr, rr)]))
            (ack_hi if p >= CONFLICT_PROBABILITY else ack_lo).add(key)
    p_of = {}
    if cons.cannot or cons.groups:
        for sl, rl, sr, rr, p in links.filter((pl.col("match_probability") >= CONFLICT_PROBABILITY)
                                              | (pl.col("match_probability") <= 1 - CONFLICT_PROBABILITY)).iter_rows():
            p_of[tuple(sorted([(sl, rl), (sr, rr)]))] = p
    for a, b, did in cons.cannot_pairs(set(entity_of)):
        p = p_of.get((a, b))
        if p is not None and p >= CONFLICT_PROBABILITY and (a, b) not in ack_hi:
            ea, eb = sorted([entity_of[a], entity_of[b]])
            add((ea, eb), "decision_conflict", 2.0 + p,
                f"kept apart by decision #{did}, but {_fmt(a)} and {_fmt(b)} now score {p:.4f}")
    for g, members in cons.groups.items():
        present = sorted(m for m in members if m in entity_of)
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                p = p_of.get((a, b))
                if p is not None and p <= 1 - CONFLICT_PROBABILITY and (a, b) not in ack_lo:
                    did = cons.group_decisions[g][-1]
                    add((entity_of[a], None), "decision_conflict", 2.0 + (1 - p),
                        f"joined by decision #{did}, but {_fmt(a)} and {_fmt(b)} now score {p:.4f}")

    # -- exclusive sources
    if exclusive:
        ex = (recs.filter(pl.col("source").is_in(sorted(exclusive))).group_by("entity_id", "source").len()
              .filter(pl.col("len") > 1))
        for e, s, n in ex.iter_rows():
            add((e, None), "exclusive_twice", _PRIOR["exclusive_twice"],
                f"{n} records from the exclusive source '{s}'")

    # -- strong identifiers
    multi_ids = recs.filter(pl.col("entity_id").is_in([e for e, n in sizes.items() if n >= 2]))
    for attr, kind in kinds.items():
        if attr not in recs.columns:
            continue
        if kind == "national_id":
            vals = (multi_ids.filter(pl.col(attr).is_not_null()).group_by("entity_id")
                    .agg(pl.col(attr).unique().sort()).filter(pl.col(attr).list.len() > 1))
            for e, values in vals.iter_rows():
                far = any(Levenshtein.distance(x, y) > 1 for i, x in enumerate(values) for y in values[i + 1:])
                if far:
                    add((e, None), "conflicting_id", _PRIOR["conflicting_id"],
                        f"{len(values)} different values of {attr}")
        elif kind == "date":
            dates = (multi_ids.select("entity_id", pl.col(attr).str.to_date(strict=False).alias("d"))
                     .drop_nulls().group_by("entity_id").agg(pl.col("d").sort())
                     .filter((pl.col("d").list.max() - pl.col("d").list.min()).dt.total_days() > date_gap_days))
            for e, ds in dates.iter_rows():
                # Group the dates (gaps of at most date_gap_days): two groups of two or more
                # records look like two people; a lone far date is more often a typo.
                groups = [[ds[0]]]
                for d in ds[1:]:
                    if (d - groups[-1][-1]).days <= date_gap_days:
                        groups[-1].append(d)
                    else:
                        groups.append([d])
                years = (ds[-1] - ds[0]).days / 365.25
                if sum(len(g) >= 2 for g in groups) >= 2:
                    add((e, None), "dates_apart", _PRIOR["dates_apart"],
                        f"{attr} values fall in {len(groups)} groups up to {years:.0f} years apart")
                elif len(ds) <= 3:  # in a larger entity a lone far date is mostly a typo
                    add((e, None), "dates_apart", _PRIOR["date_outlier"],
                        f"{attr} of {sum(len(g) == 1 for g in groups)} record(s) is far (up to {years:.0f} years) "
                        f"from the others")

    # -- one household taken for one person
    for e, detail in _household_members(multi_ids, kinds, date_gap_days):
        add((e, None), "household", _PRIOR["household"], detail)

    # -- size
    for e, n in sizes.items():
        if n > large_size:
            add((e, None), "large", min(_PRIOR["large"] + (n / large_size - 1) / 10, 0.95),
                f"{n} records (more than {large_size})")

    # -- links holding entities: the split of the entity whose two sides match least
    within_all = ek.filter(pl.col("e_l") == pl.col("e_r"))
    edges_of: dict[str, list[tuple[float, Rec, Rec]]] = defaultdict(list)
    for sl, rl, sr, rr, p, e, _e2 in within_all.iter_rows():
        edges_of[e].append((p, (sl, rl), (sr, rr)))
    members: dict[str, list[Rec]] = defaultdict(list)
    for k, e in entity_of.items():
        if sizes.get(e, 0) >= 2:
            members[e].append(k)
    for g, mem in cons.groups.items():  # decision pins are certain links
        by_e: dict[str, list[Rec]] = defaultdict(list)
        for m in mem:
            if m in entity_of:
                by_e[entity_of[m]].append(m)
        for e, ms in by_e.items():
            ms = sorted(ms)
            edges_of[e] += [(1.0, x, y) for i, x in enumerate(ms) for y in ms[i + 1:]]
    self_coh: dict[str, float] = {}
    for e in members:
        es = edges_of.get(e, [])
        n_pairs = sizes[e] * (sizes[e] - 1) // 2
        denom = len(es) + unscored_weight * (n_pairs - len(es))
        self_coh[e] = sum(x[0] for x in es) / denom if denom > 0 else 1.0
    suggester = _Suggester(multi_ids, kinds, exclusive, date_gap_days)
    for e in sorted(members):
        res = _worst_split(sorted(members[e]), edges_of.get(e, []), thr, unscored_weight)
        if res is None:
            continue
        link_of[(e, None)] = res.weakest
        suggest[e] = [_fmt(r) for r in suggester.suggest(e, members[e], res.side, edges_of.get(e, []))]
        if len(res.side) == 1:
            # One record's pairs are not independent looks (a noisy record is noisy against
            # everyone): it belongs as surely as its best link says.
            err = 1.0 - res.edge_p
        else:
            err = 1.0 - _same_probability(res.cohesion, res.looks)
        if err < 0.05 and res.weakest >= band_top:
            continue
        across = f"pairs across match at {res.cohesion:.0%} of the rate of pairs inside"
        names = ", ".join(_fmt(r) for r in res.side[:3]) + (", ..." if len(res.side) > 3 else "")
        if len(res.side) >= 2 and res.crossing == 1:
            add((e, None), "weak_bridge", err, f"only one link (p={res.edge_p:.3f}) joins {len(res.side)} records "
                                               f"({names}) to {res.rest} others; {across}")
        elif len(res.side) >= 2:
            add((e, None), "loose_groups", err, f"{res.crossing} links join {len(res.side)} records ({names}) to "
                                                f"{res.rest} others; {across}")
        else:
            add((e, None), "uncertain", err, f"{names} hangs by {res.crossing} link(s), the best p={res.edge_p:.3f}; "
                                             f"weakest holding link p={res.weakest:.3f}")

    # -- near misses between entities: scored like a split, by how well the pairs across match
    cross = (ek.filter(pl.col("e_l") != pl.col("e_r"))
             .with_columns(pl.min_horizontal("e_l", "e_r").alias("ea"), pl.max_horizontal("e_l", "e_r").alias("eb")))
    near = cross.filter(pl.col("match_probability") >= near_low).select("ea", "eb").unique()
    if near.height:
        pairs = (cross.join(near, on=["ea", "eb"], how="semi").group_by("ea", "eb")
                 .agg(pl.len().alias("n"), pl.col("match_probability").max().alias("best"),
                      pl.col("match_probability").sum().alias("sum_p"),
                      (pl.col("match_probability") >= near_low).sum().alias("n_near"))
                 .sort("ea", "eb"))
        apart = set()
        for a, b, _ in cons.cannot_pairs(set(entity_of)):
            apart.add(tuple(sorted([entity_of[a], entity_of[b]])))
        ex_of: dict[str, set[str]] = defaultdict(set)
        if exclusive:
            for e, s in recs.filter(pl.col("source").is_in(sorted(exclusive))).select("entity_id", "source").iter_rows():
                ex_of[e].add(s)
        for ea, eb, n, best, sum_p, n_near in pairs.iter_rows():
            if (ea, eb) in apart:
                continue
            what = "links" if n_near > 1 else "link"
            all_pairs = sizes[ea] * sizes[eb]
            cohesion = sum_p / (n + unscored_weight * (all_pairs - n))
            selfs = [self_coh[x] for x in (ea, eb) if self_coh.get(x)]
            rel = min(1.0, cohesion / (sum(selfs) / len(selfs))) if selfs else cohesion
            score = _same_probability(rel, n)
            both = sorted(ex_of.get(ea, set()) & ex_of.get(eb, set()))
            if both:
                # Two records of an exclusive source: most likely two people (twins, namesakes).
                score *= 0.25
                note = f" (both hold a record of the exclusive source '{both[0]}')"
            elif best >= thr:
                note = " (at or above the threshold, but clustering kept them apart)"
            else:
                note = ""
            add((ea, eb), "near_miss", score, f"{n_near} {what} near the threshold, best p={best:.3f}; pairs "
                                              f"across match at {rel:.0%} of the rate of pairs inside{note}")
            link_of[(ea, eb)] = best

    # -- reviewed entities leave the queue until their records change
    reviewed: set[str] = set()
    for d in _in_force(rows):
        reviewed.update(d["payload"].get("reviewed", {}).values())
    digest_of: dict[str, str] = {}
    if not include_reviewed and reviewed:
        wanted = {e for key in found for e in key if e}
        sub = recs.filter(pl.col("entity_id").is_in(sorted(wanted))).select("entity_id", "source", "record_id",
                                                                             "content_hash")
        grouped: dict[str, list] = defaultdict(list)
        for e, s, r, h in sub.iter_rows():
            grouped[e].append((s, r, h))
        digest_of = {e: entity_digest(v) for e, v in grouped.items()}

    items = []
    for key, reasons in found.items():
        e, other = key
        hard_conflict = "decision_conflict" in reasons
        if not include_reviewed and not hard_conflict and reviewed:
            seen = [digest_of.get(x) in reviewed for x in key if x]
            if (other is None and seen[0]) or (other is not None and all(seen)):
                continue
        ordered = sorted(reasons, key=lambda r: -reasons[r][0])
        top = ordered[0]
        scores = [reasons[r][0] for r in ordered]
        score = scores[0] if scores[0] >= 1 else 1.0 - math.prod(1.0 - min(x, 0.999999) for x in scores)
        items.append(QueueItem(rank=0, entity_id=e, other_entity_id=other, reason=top, reasons=ordered,
                               detail=reasons[top][1], size=sizes.get(e, 0),
                               other_size=sizes.get(other) if other else None,
                               link=link_of.get(key), score=round(score, 6),
                               suggested_split=suggest.get(e) if other is None else None))
    items.sort(key=lambda i: (-i.score, i.entity_id, i.other_entity_id or ""))
    if limit is not None:
        items = items[:limit]
    for n, it in enumerate(items, 1):
        it.rank = n
    return items


# --------------------------------------------------------------------------------------
# the side-by-side view
# --------------------------------------------------------------------------------------
@dataclass
class EntityView:
    """An entity's records side by side, what differs, and the evidence of its links.

    ``records``: source, record_id and the attributes any of them has. ``reference``: per
    attribute the commonest value, which ``diffs`` compares against: (record index,
    attribute) -> spans of differing characters. ``links``: the scored pairs among its
    records with probability, weight and per-attribute ``level``/``weight``.
    ``nearby``: the best links to records of other entities.
    """

    entity_id: str
    asked: str
    status: str
    records: pl.DataFrame
    attributes: list[str]
    reference: dict[str, str | None]
    diffs: dict[tuple[int, str], list[tuple[int, int]]]
    links: list[dict[str, Any]]
    nearby: pl.DataFrame
    threshold: float
    decisions: list[int]


def show(project: ProjectLike, entity_id: str, *, nearby: int = 5) -> EntityView:
    """An entity's records side by side with differing characters marked, and its links.

    >>> from idweave.linkage import link
    >>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> v = show("fixtures/tiny/project.yaml", eid)
    >>> v.records.height >= 1 and set(v.records.columns) >= {"source", "record_id"}
    True
    """
    from idweave.linkage.explain import _evidence, _level_labels

    proj, st = _open(project, read_only=True)
    with st:
        eid = st.resolve(str(entity_id))
        if eid is None:
            raise IdweaveError(f"no entity {entity_id} in the store")
        status = fetch_one(st.con, "select status from entities where entity_id = ?", [eid])
        thr, _, _ = _run_info(st, proj)
        recs = query_pl(st.con, "select * from records where entity_id = ? order by source, record_id", [eid])
        mem = [(s, r) for s, r in recs.select("source", "record_id").iter_rows()]
        lk = _links_among(st, mem).sort("match_probability", descending=True) if mem else pl.DataFrame()
        stored = st.latest_model()
        near = pl.DataFrame()
        if mem:
            df = pl.DataFrame({"source": [m[0] for m in mem], "record_id": [m[1] for m in mem]})
            st.con.register("_q_near", df.to_arrow())
            try:
                near = query_pl(st.con, f"""
                    select * from (
                      select l.source_l as source, l.record_id_l as record_id, l.source_r as other_source,
                             l.record_id_r as other_record_id, r.entity_id as other_entity_id, l.match_probability
                      from links l semi join _q_near q on l.source_l = q.source and l.record_id_l = q.record_id
                      join records r on r.source = l.source_r and r.record_id = l.record_id_r
                      where r.entity_id <> ?
                      union all
                      select l.source_r, l.record_id_r, l.source_l, l.record_id_l, r.entity_id, l.match_probability
                      from links l semi join _q_near q on l.source_r = q.source and l.record_id_r = q.record_id
                      join records r on r.source = l.source_l and r.record_id = l.record_id_l
                      where r.entity_id <> ?)
                    order by match_probability desc, other_entity_id limit {int(nearby)}""", [eid, eid])
            finally:
                st.con.unregister("_q_near")
        rows = _decision_rows(st)
    attrs = [a for a in proj.attributes if a in recs.columns and recs[a].null_count() < recs.height]
    reference: dict[str, str | None] = {}
    diffs: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for a in attrs:
        vals = [v for v in recs[a].to_list()]
        counts = Counter(v for v in vals if v is not None)
        ref = min(counts, key=lambda v: (-counts[v], vals.index(v))) if counts else None
        reference[a] = ref
        for i, v in enumerate(vals):
            spans = diff_spans(ref, v)
            if spans:
                diffs[(i, a)] = spans
    labels = _level_labels(stored[0]) if stored else {}
    link_rows = [_evidence(r, labels) for r in lk.iter_rows(named=True)] if lk.height else []
    mine = set(mem)
    involved = [d["decision_id"] for d in rows
                if any((s, r) in mine for key in ("records_a", "records_b", "records", "rest", "left", "right")
                       for s, r in d["payload"].get(key, []))]
    return EntityView(entity_id=eid, asked=str(entity_id), status=status[0] if status else "unknown",
                      records=recs.select("source", "record_id", *attrs), attributes=attrs, reference=reference,
                      diffs=diffs, links=link_rows, nearby=near, threshold=thr, decisions=involved)


# --------------------------------------------------------------------------------------
# feedback: decisions as labelled pairs
# --------------------------------------------------------------------------------------
def export_labels(project: ProjectLike, out: str | Path | None = None) -> pl.DataFrame:
    """Decisions in force as labelled record pairs in Splink's clerical format
    (``unique_id_l, source_dataset_l, unique_id_r, source_dataset_r, clerical_match_score``).

    A merge labels 1 every pair of the records it joined, a confirm every pair of its
    entity, a split 1 inside the part and 0 across, a keep-apart 0 across; a later decision
    overrides an earlier label of the same pair. Written to ``out`` (.csv) if given.

    >>> export_labels("fixtures/tiny/project.yaml").columns
    ['unique_id_l', 'source_dataset_l', 'unique_id_r', 'source_dataset_r', 'clerical_match_score']
    """
    proj, st = _open(project, read_only=True)
    with st:
        rows = _decision_rows(st)
    label: dict[tuple[Rec, Rec], float] = {}

    def same(recs: list[Rec], score: float) -> None:
        recs = sorted(set(recs))
        for i, a in enumerate(recs):
            for b in recs[i + 1:]:
                label[(a, b)] = score

    def across(left: list[Rec], right: list[Rec], score: float) -> None:
        for a in set(left):
            for b in set(right):
                if a != b:
                    label[tuple(sorted([a, b]))] = score  # type: ignore[index]

    for d in _in_force(rows):
        p = d["payload"]
        if d["action"] == "merge":
            same(_from_json(p["records_a"]) + _from_json(p["records_b"]), 1.0)
        elif d["action"] == "confirm":
            same(_from_json(p["records"]), 1.0)
        elif d["action"] == "split":
            same(_from_json(p["records"]), 1.0)
            across(_from_json(p["records"]), _from_json(p["rest"]), 0.0)
        elif d["action"] == "keep_apart":
            across(_from_json(p["left"]), _from_json(p["right"]), 0.0)
    keys = sorted(label)
    df = pl.DataFrame({"unique_id_l": [k[0][1] for k in keys], "source_dataset_l": [k[0][0] for k in keys],
                       "unique_id_r": [k[1][1] for k in keys], "source_dataset_r": [k[1][0] for k in keys],
                       "clerical_match_score": [label[k] for k in keys]},
                      schema={"unique_id_l": pl.Utf8, "source_dataset_l": pl.Utf8, "unique_id_r": pl.Utf8,
                              "source_dataset_r": pl.Utf8, "clerical_match_score": pl.Float64})
    if out is not None:
        out = Path(out)
        if out.suffix.lower() != ".csv":
            raise IdweaveError("the labels file must end in .csv", file=str(out))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            from idweave.linkage.csvsafe import write_csv  # formulas neutralised, as every CSV

            write_csv(df, tmp)
            tmp.replace(out)
        except OSError as exc:
            raise IdweaveError(f"cannot write the labels: {exc.strerror}", file=str(out)) from None
    return df
