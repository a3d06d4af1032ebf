"""Human decisions that persist: the verbs, and the constraints every run replays.

A data steward decides: :func:`merge`, :func:`split`, :func:`keep_apart`, :func:`confirm`,
or :func:`undo` of an earlier decision. A decision is written to the ``decisions`` table
with its author, time and reason, applied to the store at once (in one transaction, with
events naming the decision, through the store's one write path for identity changes,
:meth:`Store.write_identity`, which runs use too), and from then on is a constraint of
every run (:func:`constraints`, which ``link`` calls): full or incremental, with or without
retraining.

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
>>> decisions("fixtures/tiny/project.yaml").columns[:2]
['decision_id', 'decided_at']
"""

from __future__ import annotations

import getpass
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import polars as pl

from idweave.linkage.cluster import closure, cluster
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store, assign_ids
from idweave.linkage.model import exclusive_sources
from idweave.linkage.project import Project, resolve_project

__all__ = [
    "merge", "split", "keep_apart", "confirm", "pin", "undo", "DecisionResult", "decisions", "apply_decision",
    "constraints", "Constraints", "replay", "in_force", "decision_rows", "entity_digest", "default_author",
    "CONFLICT_PROBABILITY", "open_store", "run_info", "active_entity", "record_ref", "fmt_record",
    "records_from_json", "Rec", "ProjectLike",
]

Rec = tuple[str, str]
ProjectLike = Project | str | Path | Mapping[str, Any]
#: What a verb's ``after=`` gets: the store (open for writing, the decision committed) and the project.
AfterWrite = Callable[[Store, Project], None]

#: A kept-apart pair scoring at least this (or a merged pair at most 1 - this) is a conflict.
CONFLICT_PROBABILITY = 0.999


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


def record_ref(x: Any) -> Rec:
    """A record reference (``"source:id"`` or a pair) -> (source, record_id).

    >>> record_ref("tax:T1"), record_ref(("tax", 7))
    (('tax', 'T1'), ('tax', '7'))
    """
    if isinstance(x, str):
        if ":" not in x:
            raise IdweaveError(f"record reference {x!r} must be SOURCE:ID")
        s, r = x.split(":", 1)
        return s, r
    s, r = x
    return str(s), str(r)


def fmt_record(rec: Rec) -> str:
    """``"source:id"`` of a record (ids only, never values).

    >>> fmt_record(("tax", "T1"))
    'tax:T1'
    """
    return f"{rec[0]}:{rec[1]}"


def _recs_json(recs: Iterable[Rec]) -> list[list[str]]:
    return [[s, r] for s, r in sorted(recs)]


def records_from_json(recs: Iterable[Sequence[str]]) -> list[Rec]:
    """A payload's record list -> (source, record_id) tuples.

    >>> records_from_json([["tax", "T1"]])
    [('tax', 'T1')]
    """
    return [(str(s), str(r)) for s, r in recs]


# --------------------------------------------------------------------------------------
# decisions -> constraints
# --------------------------------------------------------------------------------------
class Constraints:
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


def in_force(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions in force (not undone, not undos), oldest first.

    >>> [d["decision_id"] for d in in_force([{"decision_id": 2, "action": "merge", "undone_by": None},
    ...                                      {"decision_id": 1, "action": "split", "undone_by": 3}])]
    [2]
    """
    return sorted((r for r in rows if r["action"] != "undo" and r["undone_by"] is None),
                  key=lambda r: r["decision_id"])


def replay(rows: list[dict[str, Any]]) -> Constraints:
    """The record-level constraints of the decisions in force, replayed oldest first.

    >>> c = replay([{"decision_id": 1, "action": "merge", "undone_by": None,
    ...              "payload": {"records_a": [["s", "1"]], "records_b": [["s", "2"]]}}])
    >>> c.must_pairs()
    [(('s', '1'), ('s', '2'))]
    """
    c = Constraints()
    for d in in_force(rows):
        p = d["payload"]
        did = d["decision_id"]
        if d["action"] == "merge":
            c.pin(records_from_json(p["records_a"]) + records_from_json(p["records_b"]), did)
        elif d["action"] == "split":
            part = records_from_json(p["records"])
            c.unpin(part)
            c.pin(part, did)
            c.forbid(part, records_from_json(p["rest"]), did)
        elif d["action"] == "keep_apart":
            c.forbid(records_from_json(p["left"]), records_from_json(p["right"]), did)
    return c


def decision_rows(st: Store) -> list[dict[str, Any]]:
    """Every decision of the store, oldest first, its ``payload`` parsed."""
    return st.decision_rows()


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
    rows = decision_rows(store)
    if not rows:
        return [], []
    c = replay(rows)
    rid_of = {(s, r): int(i) for i, s, r in records.select("rid", "source", "record_id").iter_rows()}
    present = set(rid_of)
    must = [(rid_of[a], rid_of[b]) for a, b in c.must_pairs(present)]
    cannot = [(rid_of[a], rid_of[b]) for a, b, _ in c.cannot_pairs(present, by_group=True)]
    return must, cannot



# --------------------------------------------------------------------------------------
# reading the store
# --------------------------------------------------------------------------------------
def open_store(project: ProjectLike, *, read_only: bool) -> tuple[Project, Store]:
    """The project and its store, which must hold records (else: run `idweave link` first).

    >>> proj, st = open_store("fixtures/tiny/project.yaml", read_only=True); st.close()
    """
    proj = resolve_project(project)
    if read_only:
        Store.require_file(proj.store)
    return proj, Store.open(proj.store, read_only=read_only).require(records=True)


def run_info(st: Store, proj: Project) -> tuple[float, str, float]:
    """The last run's threshold and clustering method, and the project's ``min_average``.

    >>> proj, st = open_store("fixtures/tiny/project.yaml", read_only=True)
    >>> thr, method, _ = run_info(st, proj); st.close(); 0 < thr < 1
    True
    """
    row = st.last_run_info() or {}
    thr = float(row["threshold"]) if row.get("threshold") is not None else float(proj.threshold or 0.9)
    method = str(row["clustering"]) if row.get("clustering") else str(proj.clustering.get("method", "components"))
    return thr, method, float(proj.clustering.get("min_average", 0.5))


def active_entity(st: Store, entity_id: str) -> str:
    """The active entity an id stands for (following merges), or a clear error.

    >>> proj, st = open_store("fixtures/tiny/project.yaml", read_only=True)
    >>> try:
    ...     active_entity(st, "E-none")
    ... except IdweaveError as exc:
    ...     print(exc.args[0])
    no entity E-none in the store
    >>> st.close()
    """
    eid = st.resolve(str(entity_id))
    if eid is None:
        raise IdweaveError(f"no entity {entity_id} in the store")
    status = st.entity_status(eid)
    if status != "active":
        raise IdweaveError(f"entity {entity_id} is {status or 'unknown'}, not active")
    return eid




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



def _constrained_differently(a: Constraints, b: Constraints) -> set[Rec]:
    """The records whose must-link group or cannot-link partners differ between ``a`` and ``b``.

    >>> a, b = Constraints(), Constraints()
    >>> b.forbid([("s", "1")], [("s", "2")], 1)
    >>> sorted(_constrained_differently(a, b))
    [('s', '1'), ('s', '2')]
    """
    out: set[Rec] = set()
    for r in set(a.group_of) | set(b.group_of):
        ga = a.groups.get(a.group_of.get(r, -1), set())
        gb = b.groups.get(b.group_of.get(r, -1), set())
        if ga != gb:
            out.add(r)
    for r in set(a.cannot) | set(b.cannot):
        if set(a.cannot.get(r, {})) != set(b.cannot.get(r, {})):
            out.add(r)
    return out


def _region(st: Store, cons: Constraints, rid_of: Mapping[Rec, int], entity_rids: pl.DataFrame,
            seeds: Iterable[Rec], thr: float) -> list[Rec]:
    """The records to re-cluster around ``seeds``: their connected part of the graph of
    strong links (at least ``thr``), must-link groups and old entities (``cluster.closure``),
    so the result is what the next full run computes from the same links."""
    strong = st.link_pairs(min_p=thr)
    keys = pl.DataFrame({"source": [k[0] for k in rid_of], "record_id": [k[1] for k in rid_of],
                         "rid": list(rid_of.values())}, schema={"source": pl.Utf8, "record_id": pl.Utf8, "rid": pl.Int64})
    edges = [strong.join(keys.rename({"source": "source_l", "record_id": "record_id_l", "rid": "rid_l"}),
                         on=["source_l", "record_id_l"])
             .join(keys.rename({"source": "source_r", "record_id": "record_id_r", "rid": "rid_r"}),
                   on=["source_r", "record_id_r"]).select("rid_l", "rid_r"),
             # each record joined to the first record of its entity
             entity_rids.with_columns(pl.col("rid").min().over("entity_id").alias("rid_r"))
             .select(pl.col("rid").alias("rid_l"), "rid_r")]
    pins = [(rid_of[a], rid_of[b]) for a, b in cons.must_pairs(set(rid_of))]
    if pins:
        edges.append(pl.DataFrame(pins, schema={"rid_l": pl.Int64, "rid_r": pl.Int64}, orient="row"))
    links = pl.concat([e.cast(pl.Int64) for e in edges])
    rec_of = {i: k for k, i in rid_of.items()}
    reached = closure([rid_of[s] for s in seeds if s in rid_of], links, range(len(rid_of)))
    return [rec_of[i] for i in reached.to_list()]


#: Decisions that put no constraint on clustering (they move no record unless the constraints moved).
_NO_CONSTRAINT = ("confirm", "pin")


def _region_by_rk(st: Store, cons: Constraints, rk_of: Mapping[Rec, int], entity_rks: pl.DataFrame,
                  seeds: Iterable[Rec], thr: float) -> list[Rec]:
    """:func:`_region` on the records' keys (``rk``): the strong links as the store keys them,
    with no join on source and record id."""
    strong = st.strong_rk_pairs(thr)
    edges = [strong.select(pl.col("rk_l").cast(pl.Int64).alias("rid_l"), pl.col("rk_r").cast(pl.Int64).alias("rid_r")),
             entity_rks.select(pl.col("rk").cast(pl.Int64).alias("rid_l"),
                               pl.col("rk").min().over("entity_id").cast(pl.Int64).alias("rid_r"))]
    pins = [(rk_of[a], rk_of[b]) for a, b in cons.must_pairs(set(rk_of))]
    if pins:
        edges.append(pl.DataFrame(pins, schema={"rid_l": pl.Int64, "rid_r": pl.Int64}, orient="row"))
    rec_of = {k: r for r, k in rk_of.items()}
    reached = closure([rk_of[s] for s in seeds if s in rk_of], pl.concat(edges), entity_rks["rk"].cast(pl.Int64))
    return [rec_of[k] for k in reached.to_list()]


def _apply(st: Store, proj: Project, action: str, *, payload: dict[str, Any], author: str, reason: str,
           seeds: set[Rec], fresh: set[Rec] = frozenset(), undoes: int | None = None,
           basis_override: dict[Rec, str] | None = None,
           main: tuple[str | None, str | None] = (None, None)) -> DecisionResult:
    """Record a decision and re-cluster the part of the graph it touches, in one transaction.

    The region (:func:`_region`) is clustered as a run clusters it; :func:`graph.assign_ids`
    gives the persistent ids, on a basis where the ``fresh`` records (a split's) claim no
    entity and ``basis_override`` (an undo's) gives records back to their old entities; its
    events and entity changes are written by :meth:`Store.write_identity`, as a run's are.
    """
    rows = decision_rows(st)
    cons_before = replay(rows)
    did = (max((r["decision_id"] for r in rows), default=0)) + 1
    for r in rows:
        if undoes is not None and r["decision_id"] == undoes:
            r["undone_by"] = did
    rows.append({"decision_id": did, "action": action, "payload": payload, "undone_by": None, "undoes": undoes})
    cons = replay(rows)
    thr, method, min_average = run_info(st, proj)

    recs = st.record_entities().with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    keys = list(zip(recs["source"].to_list(), recs["record_id"].to_list()))
    current: dict[Rec, str] = dict(zip(keys, recs["entity_id"].to_list()))
    chash: dict[Rec, str] = dict(zip(keys, recs["content_hash"].to_list()))
    rk_of: dict[Rec, int] = dict(zip(keys, recs["rk"].to_list()))
    rid_of = {k: i for i, k in enumerate(current)}

    seeds = {s for s in seeds if s in current}
    exclusive = exclusive_sources(proj, st)
    if action in _NO_CONSTRAINT and not fresh and not basis_override \
            and not _constrained_differently(cons_before, cons):
        # The links and the constraints are those the store's entities were clustered from:
        # clustering would give them back as they are, so the region is the seeds' entities.
        seed_entities = {current[x] for x in seeds}  # once: not again for each of the store's records
        region = sorted({k for k in current if current[k] in seed_entities}, key=rid_of.get)
        ids_of = {e: i for i, e in enumerate(sorted({current[k] for k in region}))}
        clusters = {k: ids_of[current[k]] for k in region}
    else:
        if recs["rk"].null_count() == 0 and {"rk_l", "rk_r"} <= set(st.columns("links")):
            region = sorted(_region_by_rk(st, cons, rk_of, recs.select("rk", "entity_id"), seeds, thr), key=rid_of.get)
            # The region's links by record key, mapped to rids by a join: a component of the
            # strong links can hold a third of the store, so nothing here is per link in Python.
            by_rk = recs.select(pl.col("rk").cast(pl.Int64), "rid")
            lk = (st.rk_links_among(pl.Series([rk_of[k] for k in region], dtype=pl.Int64))
                  .with_columns(pl.col("rk_l").cast(pl.Int64), pl.col("rk_r").cast(pl.Int64))
                  .join(by_rk.rename({"rk": "rk_l", "rid": "rid_l"}), on="rk_l")
                  .join(by_rk.rename({"rk": "rk_r", "rid": "rid_r"}), on="rk_r")
                  .select("rid_l", "rid_r", pl.col("match_probability").cast(pl.Float64)))
        else:  # a store from before record keys
            region = _region(st, cons, rid_of, recs.select("rid", "entity_id"), seeds, thr)
            region_links = st.links_among(region)
            lk = pl.DataFrame({
                "rid_l": [rid_of[(s, r)] for s, r in region_links.select("source_l", "record_id_l").iter_rows()],
                "rid_r": [rid_of[(s, r)] for s, r in region_links.select("source_r", "record_id_r").iter_rows()],
                "match_probability": region_links["match_probability"]},
                schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64})
        inside = set(region)
        excl = {rid_of[k]: k[0] for k in region if k[0] in exclusive}
        must = [(rid_of[a], rid_of[b]) for a, b in cons.must_pairs(inside)]
        cannot = [(rid_of[a], rid_of[b]) for a, b, _ in cons.cannot_pairs(inside, by_group=True)]
        cl = cluster(lk, [rid_of[k] for k in region], threshold=thr, exclusive=excl, must_link=must,
                     cannot_link=cannot, method=method, min_average=min_average)
        label = dict(zip(cl["rid"].to_list(), cl["cluster"].to_list()))
        clusters = {k: label[rid_of[k]] for k in region}

    # Persistent ids: the records' entities now, and whose id each record's passes to.
    ent_rows = st.entity_rows()
    before = {k: current[k] for k in region}
    claims: dict[Rec, str | None] = {k: e for k, e in (basis_override or {}).items() if k in before and e in ent_rows}
    claims.update({k: None for k in fresh if k in before})
    dormant = {e: r["merged_into"] for e, r in ent_rows.items() if r["status"] != "active"}
    a = assign_ids(clusters, before, st.entity_ages(), claims=claims, dormant=dormant)
    new_of = {**current, **a.entity_of}
    moved = [[k[0], k[1], current[k], new_of[k]] for k in region if current[k] != new_of[k]]

    # What the person saw after this decision: those entities leave the queue until they change.
    after_members: dict[str, list[Rec]] = {}
    for k, e in new_of.items():
        after_members.setdefault(e, []).append(k)
    seen_entities = sorted({new_of[k] for k in seeds})
    payload = dict(payload)
    payload["moved"] = moved
    payload["reviewed"] = {e: entity_digest((s, r, chash[(s, r)]) for s, r in after_members[e]) for e in seen_entities}
    # Scores at decision time of the pairs a conflict check could flag later.
    among = st.links_among(seeds)
    payload["extremes"] = [[sl, rl, sr, rr, p] for sl, rl, sr, rr, p in among.select(
        "source_l", "record_id_l", "source_r", "record_id_r", "match_probability").iter_rows()
        if p >= CONFLICT_PROBABILITY or p <= 1 - CONFLICT_PROBABILITY]

    ids = set(a.entity_of.values()) | set(before.values()) | a.touched
    sizes = {e: len(after_members.get(e, ())) for e in ids}
    moves = pl.DataFrame({"rk": [rk_of[(m[0], m[1])] for m in moved], "entity_id": [m[3] for m in moved]},
                         schema={"rk": pl.Int64, "entity_id": pl.Utf8})
    try:
        st.begin()
        st.record_decision(did, author, action, reason, payload, undoes)
        n_events = st.write_identity(a, sizes=sizes, run_id=None, moves=moves, decision_id=did,
                                     events_before=[{"type": "decision", "entity_id": main[0],
                                                     "other_entity_id": main[1], "detail": action}])
        # The stored review queue (if any) loses the rows of what this decision changed:
        # the entities of the region before and after, and of records whose constraints moved.
        changed = {new_of[k] for k in _constrained_differently(cons_before, cons) if k in new_of}
        st.queue_touched({e for m in moved for e in m[2:]} | a.touched | {x for pair in a.merged for x in pair}
                         | set(seen_entities) | changed | {e for e in main if e})
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


def _decide(project: ProjectLike, action: str, plan, *, author: str | None, reason: str,
            after: AfterWrite | None = None) -> DecisionResult:
    """Check the decision on a read-only store first, so bad input never touches the store
    (opening it for writing alone changes the file); then plan and apply it for real.
    ``after`` (every verb takes it) is called with the store still open for writing once the
    decision is committed: the workbench keeps its stored queue current in the same opening."""
    proj, st = open_store(project, read_only=True)
    with st:
        plan(st)
    proj, st = open_store(proj, read_only=False)
    with st:
        kw = plan(st)
        res = _apply(st, proj, action, author=_author(author), reason=reason or "", **kw)
        if after is not None:
            after(st, proj)
        return res


def merge(project: ProjectLike, a: str, b: str, *, author: str | None = None, reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
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
        ea, eb = active_entity(st, a), active_entity(st, b)
        if ea == eb:
            raise IdweaveError(f"entities {a} and {b} are already one entity ({ea})")
        ra, rb = st.members(ea), st.members(eb)
        payload = {"a": ea, "b": eb, "records_a": _recs_json(ra), "records_b": _recs_json(rb)}
        return {"payload": payload, "seeds": set(ra) | set(rb), "main": (ea, eb)}

    return _decide(project, "merge", plan, author=author, reason=reason, after=after)


def split(project: ProjectLike, entity_id: str, records: Sequence[Rec | str], *, author: str | None = None,
          reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
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
        eid = active_entity(st, entity_id)
        mem = st.members(eid)
        part = [record_ref(r) for r in records]
        if not part:
            raise IdweaveError("name at least one record to split off")
        missing = [r for r in part if r not in set(mem)]
        if missing:
            raise IdweaveError(f"records {', '.join(fmt_record(r) for r in missing)} are not in entity {eid}")
        rest = sorted(set(mem) - set(part))
        if not rest:
            raise IdweaveError(f"splitting off every record of entity {eid} would leave nothing: name fewer records")
        payload = {"entity": eid, "records": _recs_json(set(part)), "rest": _recs_json(rest)}
        return {"payload": payload, "seeds": set(mem), "fresh": set(part), "main": (eid, None)}

    return _decide(project, "split", plan, author=author, reason=reason, after=after)


def _side(st: Store, x: str | Rec) -> tuple[list[Rec], str]:
    """An entity id or a record reference -> (its records, its entity)."""
    if isinstance(x, tuple) or (isinstance(x, str) and ":" in x):
        rec = record_ref(x)
        e = st.entity_of_records([rec]).get(rec)
        if e is None:
            raise IdweaveError(f"no record {fmt_record(rec)} in the store")
        return [rec], e
    eid = active_entity(st, x)
    return st.members(eid), eid


def keep_apart(project: ProjectLike, a: str | Rec, b: str | Rec, *, author: str | None = None,
               reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
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
                        lambda p: {frozenset(records_from_json(p["left"])), frozenset(records_from_json(p["right"]))} == sides)
        if same is not None:
            raise IdweaveError(f"already in force: decision #{same} keeps these records apart, and their links "
                               "score as they did then; nothing recorded")
        payload = {"left": _recs_json(left), "right": _recs_json(right), "entities": [ea, eb]}
        return {"payload": payload, "seeds": set(left) | set(right), "main": (ea, eb)}

    return _decide(project, "keep_apart", plan, author=author, reason=reason, after=after)


def _repeats(st: Store, action: str, seeds: set[Rec], same_subject) -> int | None:
    """The decision in force that the ``action`` about to be recorded would only repeat (same
    subject, per ``same_subject(payload)``, and the links among ``seeds`` scoring at the
    extremes as they did then), or None. A decision taken again after the evidence changed
    (a conflict in the queue) is not a repeat: it settles the conflict."""
    found = [d for d in in_force(decision_rows(st)) if d["action"] == action and same_subject(d["payload"])]
    if not found:
        return None
    among = st.links_among(seeds)
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
    rows = st.content_hashes(mem)
    return entity_digest(rows)


def _name(x: str | Rec) -> str:
    return fmt_record(x) if isinstance(x, tuple) else str(x)


def confirm(project: ProjectLike, entity_id: str, *, author: str | None = None, reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
    """The entity is right as it is: it leaves the queue until its records change.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-confirm.duckdb")
    >>> e = link(p).entities["entity_id"][0]
    >>> confirm(p, e, author="ada").entities == [e]
    True
    """
    def plan(st: Store) -> dict[str, Any]:
        eid = active_entity(st, entity_id)
        mem = st.members(eid)
        digest = _digest_now(st, eid, mem)
        same = _repeats(st, "confirm", set(mem), lambda p: set(records_from_json(p["records"])) == set(mem)
                        and (p.get("reviewed") or {}).get(eid) == digest)
        if same is not None:
            raise IdweaveError(f"already in force: decision #{same} confirmed entity {eid} with these same "
                               "records and values; nothing recorded")
        return {"payload": {"entity": eid, "records": _recs_json(mem)}, "seeds": set(mem), "main": (eid, None)}

    return _decide(project, "confirm", plan, author=author, reason=reason, after=after)


def pin(project: ProjectLike, entity_id: str, attribute: str, value: str, *, author: str | None = None,
        reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
    """Pin the golden value of ``attribute`` for an entity (see :mod:`idweave.linkage.golden`):
    recorded as a decision with its author and reason, shown in the entity's history,
    undone with :func:`undo`; it follows the entity through merges and later runs, and wins
    over every survivorship rule (``export --golden`` writes it). It moves no record.

    >>> from idweave.linkage import link, load_project
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-pin.duckdb")
    >>> e = link(p).entities["entity_id"][0]
    >>> pin(p, e, "last_name", "smith", author="ada", reason="the tax office's spelling").action
    'pin'
    """
    text = "" if value is None else str(value).strip()
    if not text:
        raise IdweaveError("a pinned value cannot be empty")
    if len(text) > 500 or not text.isprintable():
        raise IdweaveError("a pinned value must be one line of printable text, at most 500 characters")

    def plan(st: Store) -> dict[str, Any]:
        proj = resolve_project(project)
        if attribute not in proj.attributes:
            raise IdweaveError(f"no attribute {attribute!r} in the project; attributes: {', '.join(proj.attributes)}")
        eid = active_entity(st, entity_id)
        held = None
        for d in in_force(decision_rows(st)):  # the pin in force, as golden.pinned finds it
            p = d["payload"]
            if d["action"] == "pin" and p.get("attribute") == attribute and st.resolve(str(p["entity"])) == eid:
                held = (d["decision_id"], p["value"])
        if held is not None and held[1] == text:
            raise IdweaveError(f"already in force: decision #{held[0]} pins this value of {attribute} for entity "
                               f"{eid}; nothing recorded")
        mem = st.members(eid)
        payload = {"entity": eid, "attribute": attribute, "value": text, "records": _recs_json(mem)}
        return {"payload": payload, "seeds": set(mem), "main": (eid, None)}

    return _decide(project, "pin", plan, author=author, reason=reason, after=after)


def undo(project: ProjectLike, decision_id: int, *, author: str | None = None, reason: str = "", after: AfterWrite | None = None) -> DecisionResult:
    """Withdraw a decision: its constraints go, and the records it moved go back where they
    were (to their old entity ids, reviving an entity it merged away) unless they have moved
    again since. See :func:`merge` for an example."""
    def plan(st: Store) -> dict[str, Any]:
        rows = {r["decision_id"]: r for r in decision_rows(st)}
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
            involved |= set(records_from_json(p.get(key, [])))
        involved |= {(m[0], m[1]) for m in p.get("moved", [])}
        current = st.entity_of_records(involved)
        basis = {(s, r): before for s, r, before, after in p.get("moved", []) if current.get((s, r)) == after}
        main = (p.get("a") or p.get("entity") or (p.get("entities") or [None])[0],
                p.get("b") or (p.get("entities") or [None, None])[1])
        return {"payload": {"undoes": int(decision_id), "action": d["action"]}, "seeds": set(current),
                "undoes": int(decision_id), "basis_override": basis, "main": main}

    return _decide(project, "undo", plan, author=author, reason=reason, after=after)


def decisions(project: ProjectLike, *, include_undone: bool = True) -> pl.DataFrame:
    """The decisions table: id, time, author, action, reason, the entities it named, whether
    it is in force.

    >>> decisions("fixtures/tiny/project.yaml").columns[:4]
    ['decision_id', 'decided_at', 'author', 'action']
    """
    proj, st = open_store(project, read_only=True)
    with st:
        rows = decision_rows(st)
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


