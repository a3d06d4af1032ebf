"""The review queue: what is doubtful, most likely wrong first, and why.

A data steward works through :func:`queue`: entities and entity pairs ranked by how likely
they are to be wrong, each with its reasons (:data:`REASONS`, the table in the README).
Each reason is found by its own detector (:data:`DETECTORS`, run in that order over one
:class:`QueueEvidence`); :func:`build_queue` combines what they found into ranked items.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> items = queue("fixtures/tiny/project.yaml")
>>> all(i.reason in REASONS for i in items)
True
"""

from __future__ import annotations

import datetime
import json
import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import polars as pl
from rapidfuzz.distance import JaroWinkler, Levenshtein

from idweave.linkage.decisions import (CONFLICT_PROBABILITY, Constraints, ProjectLike, Rec, entity_digest,
                                       fmt_record as _fmt, in_force, open_store, replay, run_info)
from idweave.linkage.graph import QUEUE_SCHEMA, Store
from idweave.linkage.project import Project

__all__ = ["queue", "build_queue", "QueueItem", "QueueEvidence", "REASONS", "DETECTORS", "weight", "probability",
           "worst_split", "default_large_size", "StoredQueue", "stored_queue", "store_queue", "full_queue_frame",
           "current_queue", "as_item", "refresh_stored_queue",
           "QUEUE_FORMAT"]

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


def weight(p: float) -> float:
    """Match weight (bits) of a probability.

    >>> weight(0.5)
    0.0
    """
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def probability(w: float) -> float:
    """Probability of a match weight (bits).

    >>> probability(0.0)
    0.5
    """
    return 1.0 / (1.0 + 2.0 ** (-w))


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
    cut (``fallback``, from :func:`worst_split`).

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


def worst_split(nodes: list[Rec], edges: list[tuple[float, Rec, Rec]], thr: float,
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
          include_reviewed: bool = False, stored: bool = True) -> list[QueueItem]:
    """The review queue: doubtful entities and entity pairs, most likely wrong first.

    Reasons (see :data:`REASONS`): a human decision contradicted by new scores; two records
    of an exclusive source; national ids that differ by more than one character; dates of one
    kind more than ``date_gap_days`` apart; more than ``large_size`` records (default: twice
    the 95th percentile of multi-record entity sizes, at least 5); held by links in the
    uncertain band (match weight within ``margin_bits`` above the threshold's), or by one
    such link joining two groups (a weak bridge); two entities joined by links within
    ``margin_bits`` below the threshold (a near miss). Entities a decision has reviewed
    (confirmed, or the result of a merge or split) stay out until their records change.

    With the default settings and a queue kept in the store (:func:`store_queue`), that one
    is read and made current (:func:`stored_queue`) unless ``stored`` is False: the same
    items, without running every detector over the whole store.

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/demo/project.yaml")
    >>> items = queue("fixtures/demo/project.yaml", limit=3)
    >>> [i.rank for i in items]
    [1, 2, 3]
    """
    proj, st = open_store(project, read_only=True)
    with st:
        defaults = (margin_bits, large_size, date_gap_days, unscored_weight) == (3.0, None, 730, 1.0)
        sq = stored_queue(st, proj) if stored and defaults else None
        if sq is not None:
            return sq.items(include_reviewed=include_reviewed, limit=limit)
        thr, _method, _ = run_info(st, proj)
        recs = st.all_records()
        links = st.link_pairs()
        rows = st.decision_rows()
    return build_queue(proj, recs, links, rows, thr, limit=limit, margin_bits=margin_bits, large_size=large_size,
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


@dataclass
class QueueEvidence:
    """What every detector looks at: the store's records, links and decisions, the project's
    attribute kinds and exclusive sources, and the queue's settings. Detectors report through
    :meth:`add` (and the link-based ones fill ``link_of``, ``suggest`` and ``self_coh``)."""

    proj: Project
    recs: pl.DataFrame
    links: pl.DataFrame
    rows: list[dict[str, Any]]
    thr: float
    margin_bits: float
    large_size: int | None
    date_gap_days: int
    unscored_weight: float
    kinds: dict[str, str] = field(init=False)
    exclusive: set[str] = field(init=False)
    band_top: float = field(init=False)
    near_low: float = field(init=False)
    cons: Constraints = field(init=False)
    entity_of: dict[Rec, str] = field(init=False)
    sizes: dict[str, int] = field(init=False)
    multi_ids: pl.DataFrame = field(init=False)
    ek: pl.DataFrame = field(init=False)
    found: dict[tuple[str, str | None], dict[str, tuple[float, str]]] = field(init=False)
    link_of: dict[tuple[str, str | None], float | None] = field(default_factory=dict)
    suggest: dict[str, list[str]] = field(default_factory=dict)
    self_coh: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        proj, recs, links = self.proj, self.recs, self.links
        self.kinds = {a.name: a.kind for a in proj.attributes.values()}
        self.exclusive = {s.name for s in proj.sources.values() if s.exclusive}
        w_thr = weight(self.thr)
        self.band_top = probability(w_thr + self.margin_bits)
        self.near_low = probability(w_thr - self.margin_bits)
        self.cons = replay(self.rows)
        self.entity_of = {(s, r): e for s, r, e in recs.select("source", "record_id", "entity_id").iter_rows()}
        self.sizes = dict(recs.group_by("entity_id").len().iter_rows())
        if self.large_size is None:
            self.large_size = default_large_size(self.sizes.values())
        self.found = defaultdict(dict)
        self.multi_ids = recs.filter(pl.col("entity_id").is_in([e for e, n in self.sizes.items() if n >= 2]))
        self.ek = links.join(recs.select(pl.col("source").alias("source_l"), pl.col("record_id").alias("record_id_l"),
                                         pl.col("entity_id").alias("e_l")), on=["source_l", "record_id_l"]) \
            .join(recs.select(pl.col("source").alias("source_r"), pl.col("record_id").alias("record_id_r"),
                              pl.col("entity_id").alias("e_r")), on=["source_r", "record_id_r"])

    def add(self, key: tuple[str, str | None], reason: str, score: float, detail: str) -> None:
        """Report ``reason`` for an entity (``(e, None)``) or a pair; the highest score of a
        reason stands (the first of equal ones)."""
        found = self.found
        if reason not in found[key] or found[key][reason][0] < score:
            found[key][reason] = (score, detail)


def _decision_conflicts(q: QueueEvidence) -> None:
    """``decision_conflict``: new scores contradict a decision in force (not one it acknowledged)."""
    rows, cons, links, entity_of, add = q.rows, q.cons, q.links, q.entity_of, q.add
    ack_hi = set()
    ack_lo = set()
    for d in in_force(rows):
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


def _exclusive_twice(q: QueueEvidence) -> None:
    """``exclusive_twice``: two records of an exclusive source in one entity."""
    recs, exclusive, add = q.recs, q.exclusive, q.add
    if exclusive:
        ex = (recs.filter(pl.col("source").is_in(sorted(exclusive))).group_by("entity_id", "source").len()
              .filter(pl.col("len") > 1))
        for e, s, n in ex.iter_rows():
            add((e, None), "exclusive_twice", _PRIOR["exclusive_twice"],
                f"{n} records from the exclusive source '{s}'")


def _conflicting_ids(q: QueueEvidence) -> None:
    """``conflicting_id``: national ids more than one character apart."""
    recs, kinds, multi_ids, add = q.recs, q.kinds, q.multi_ids, q.add
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


def _dates_apart(q: QueueEvidence) -> None:
    """``dates_apart``: dates of one kind far apart (two groups, or a lone far date in a small entity)."""
    recs, kinds, multi_ids, date_gap_days, add = q.recs, q.kinds, q.multi_ids, q.date_gap_days, q.add
    for attr, kind in kinds.items():
        if attr not in recs.columns:
            continue
        if kind == "date":
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


def _household(q: QueueEvidence) -> None:
    """``household``: one household taken for one person (see :func:`_household_members`)."""
    multi_ids, kinds, date_gap_days, add = q.multi_ids, q.kinds, q.date_gap_days, q.add
    for e, detail in _household_members(multi_ids, kinds, date_gap_days):
        add((e, None), "household", _PRIOR["household"], detail)


def _large(q: QueueEvidence) -> None:
    """``large``: more records than ``large_size``."""
    sizes, large_size, add = q.sizes, q.large_size, q.add
    for e, n in sizes.items():
        if n > large_size:
            add((e, None), "large", min(_PRIOR["large"] + (n / large_size - 1) / 10, 0.95),
                f"{n} records (more than {large_size})")


def _link_held(q: QueueEvidence) -> None:
    """``weak_bridge``, ``loose_groups``, ``uncertain``: the split of each entity whose two sides match
    least (:func:`worst_split`), with the suggested split and each entity's own cohesion."""
    ek, entity_of, sizes, cons = q.ek, q.entity_of, q.sizes, q.cons
    unscored_weight, multi_ids, kinds, exclusive = q.unscored_weight, q.multi_ids, q.kinds, q.exclusive
    date_gap_days, thr, band_top, link_of = q.date_gap_days, q.thr, q.band_top, q.link_of
    suggest, self_coh, add = q.suggest, q.self_coh, q.add
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
    for e in members:
        es = edges_of.get(e, [])
        n_pairs = sizes[e] * (sizes[e] - 1) // 2
        denom = len(es) + unscored_weight * (n_pairs - len(es))
        self_coh[e] = sum(x[0] for x in es) / denom if denom > 0 else 1.0
    suggester = _Suggester(multi_ids, kinds, exclusive, date_gap_days)
    for e in sorted(members):
        res = worst_split(sorted(members[e]), edges_of.get(e, []), thr, unscored_weight)
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


def _near_misses(q: QueueEvidence) -> None:
    """``near_miss``: two entities joined by links near the threshold, scored like a split."""
    ek, near_low, cons, entity_of, exclusive, recs = q.ek, q.near_low, q.cons, q.entity_of, q.exclusive, q.recs
    sizes, unscored_weight, self_coh = q.sizes, q.unscored_weight, q.self_coh
    thr, link_of, add = q.thr, q.link_of, q.add
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


#: The detectors, in the order they report (the order breaks ties between equal scores).
DETECTORS: tuple[Callable[[QueueEvidence], None], ...] = (
    _decision_conflicts, _exclusive_twice, _conflicting_ids, _dates_apart, _household, _large, _link_held,
    _near_misses)


def default_large_size(sizes: Iterable[int]) -> int:
    """The ``large`` reason's size when none is given: twice the 95th percentile of the
    sizes of entities of two or more records, at least 5.

    >>> default_large_size([1, 2, 2, 3, 40])
    6
    """
    multi = sorted(v for v in sizes if v >= 2)
    q95 = multi[int(0.95 * (len(multi) - 1))] if multi else 1
    return max(5, 2 * q95)


def _evidence(proj: Project, recs: pl.DataFrame, links: pl.DataFrame, rows: list[dict[str, Any]], thr: float, *,
              margin_bits: float = 3.0, large_size: int | None = None, date_gap_days: int = 730,
              unscored_weight: float = 1.0,
              detectors: Sequence[Callable[[QueueEvidence], None]] = ()) -> QueueEvidence:
    """The ``detectors`` (default: every one) run, in order, over one :class:`QueueEvidence`."""
    q = QueueEvidence(proj, recs, links, rows, thr, margin_bits, large_size, date_gap_days, unscored_weight)
    for detect in detectors or DETECTORS:
        detect(q)
    return q


def build_queue(proj: Project, recs: pl.DataFrame, links: pl.DataFrame, rows: list[dict[str, Any]], thr: float, *,
                limit: int | None, margin_bits: float, large_size: int | None, date_gap_days: int,
                unscored_weight: float, include_reviewed: bool) -> list[QueueItem]:
    """The queue of :func:`queue` from the store's ``recs``, ``links`` and decision ``rows``:
    every detector's findings, minus entities a decision reviewed, ranked."""
    q = _evidence(proj, recs, links, rows, thr, margin_bits=margin_bits, large_size=large_size,
                  date_gap_days=date_gap_days, unscored_weight=unscored_weight)
    return _ranked(q, limit=limit, include_reviewed=include_reviewed)


def _reviewed(rows: list[dict[str, Any]]) -> set[str]:
    """The entity digests the decisions in force reviewed (those entities stay out of the
    queue until their records change)."""
    out: set[str] = set()
    for d in in_force(rows):
        out.update(d["payload"].get("reviewed", {}).values())
    return out


def _item(key: tuple[str, str | None], reasons: Mapping[str, tuple[float, str]], sizes: Mapping[str, int],
          link_of: Mapping, suggest: Mapping[str, list[str]]) -> QueueItem:
    """One item (rank 0) of a key's reasons (reason -> (score, detail), in detector order)."""
    e, other = key
    ordered = sorted(reasons, key=lambda r: -reasons[r][0])
    top = ordered[0]
    scores = [reasons[r][0] for r in ordered]
    score = scores[0] if scores[0] >= 1 else 1.0 - math.prod(1.0 - min(x, 0.999999) for x in scores)
    return QueueItem(rank=0, entity_id=e, other_entity_id=other, reason=top, reasons=ordered,
                     detail=reasons[top][1], size=sizes.get(e, 0), other_size=sizes.get(other) if other else None,
                     link=link_of.get(key), score=round(score, 6),
                     suggested_split=suggest.get(e) if other is None else None)


def _ranked(q: QueueEvidence, *, limit: int | None, include_reviewed: bool) -> list[QueueItem]:
    """The found items, reviewed ones left out until their records change, most likely wrong first."""
    rows, found, recs, sizes, link_of, suggest = q.rows, q.found, q.recs, q.sizes, q.link_of, q.suggest
    reviewed = _reviewed(rows)
    digest_of: dict[str, str] = {}
    if not include_reviewed and reviewed:
        digest_of = _digests(recs, {e for key in found for e in key if e})
    items = []
    for key, reasons in found.items():
        if not include_reviewed and reviewed and "decision_conflict" not in reasons:
            seen = [digest_of.get(x) in reviewed for x in key if x]
            if (key[1] is None and seen[0]) or (key[1] is not None and all(seen)):
                continue
        items.append(_item(key, reasons, sizes, link_of, suggest))
    items.sort(key=lambda i: (-i.score, i.entity_id, i.other_entity_id or ""))
    if limit is not None:
        items = items[:limit]
    for n, it in enumerate(items, 1):
        it.rank = n
    return items


def _digests(recs: pl.DataFrame, wanted: Iterable[str]) -> dict[str, str]:
    """:func:`entity_digest` of each ``wanted`` entity's records in ``recs``."""
    sub = recs.filter(pl.col("entity_id").is_in(sorted(set(wanted)))).select("entity_id", "source", "record_id",
                                                                            "content_hash")
    grouped: dict[str, list] = defaultdict(list)
    for e, s, r, h in sub.iter_rows():
        grouped[e].append((s, r, h))
    return {e: entity_digest(v) for e, v in grouped.items()}


# --------------------------------------------------------------------------------------
# the stored queue: built once per run, kept current decision by decision
# --------------------------------------------------------------------------------------
#: Bump when what a stored queue row holds changes: a stored queue of another format is rebuilt.
QUEUE_FORMAT = 1
_DETECTOR_OF = {"decision_conflict": 0, "exclusive_twice": 1, "conflicting_id": 2, "dates_apart": 3, "household": 4,
                "large": 5, "weak_bridge": 6, "loose_groups": 6, "uncertain": 6, "near_miss": 7}


def _queue_frame(q: QueueEvidence, found: Mapping[tuple[str, str | None], Mapping[str, tuple[float, str]]]) -> pl.DataFrame:
    """The stored rows (:data:`~idweave.linkage.graph.QUEUE_SCHEMA`) of ``found`` (key ->
    reasons in detector order), with what a screen lists beside each item: the sources of
    its records, the probabilities of its links (inside the entity; across, for a pair),
    lowest first, and the digests of its entities."""
    keys = list(found)
    ents = {e for k in keys for e in k if e}
    digest_of = _digests(q.recs, ents)
    src = (q.recs.filter(pl.col("entity_id").is_in(sorted(ents))).group_by("entity_id")
           .agg(pl.col("source").unique().sort()))
    sources_of = {e: list(v) for e, v in src.iter_rows()}
    want = pl.DataFrame({"ka": [min(k[0], k[1] or k[0]) for k in keys], "kb": [max(k[0], k[1] or k[0]) for k in keys]},
                        schema={"ka": pl.Utf8, "kb": pl.Utf8})
    probs = (q.ek.select(pl.min_horizontal("e_l", "e_r").alias("ka"), pl.max_horizontal("e_l", "e_r").alias("kb"),
                         "match_probability")
             .join(want.unique(), on=["ka", "kb"], how="semi").group_by("ka", "kb")
             .agg(pl.col("match_probability").sort()))
    probs_of = {(a, b): list(v) for a, b, v in probs.iter_rows()}
    out = []
    for key in keys:
        it = _item(key, found[key], q.sizes, q.link_of, q.suggest)
        e, o = key
        out.append({"entity_id": e, "other_entity_id": o, "reason": it.reason, "reasons": it.reasons,
                    "detail": it.detail, "size": it.size, "other_size": it.other_size, "link": it.link,
                    "score": it.score, "suggested_split": it.suggested_split,
                    "found": json.dumps([[r, sc, d] for r, (sc, d) in found[key].items()]),
                    "sources": sorted({x for y in (e, o) if y for x in sources_of.get(y, [])}),
                    "probabilities": probs_of.get((min(e, o or e), max(e, o or e)), []),
                    "digest": digest_of.get(e), "other_digest": digest_of.get(o) if o else None,
                    "hard": "decision_conflict" in found[key]})
    return pl.DataFrame(out, schema=QUEUE_SCHEMA)


def _found_of(row: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    return {r: (float(sc), d) for r, sc, d in json.loads(row["found"])}


def _conflicts(st: Store, proj: Project, rows: list[dict[str, Any]], thr: float,
               large_size: int) -> dict[tuple[str, str | None], tuple[float, str]]:
    """Every ``decision_conflict`` finding of the store (key -> (score, detail)), from the
    records the decisions in force constrain and the links among them: what the detector
    finds over the whole store."""
    cons = replay(rows)
    if not cons.groups and not cons.cannot:
        return {}
    constrained = set(cons.group_of) | set(cons.cannot)
    ent = st.entity_of_records(constrained)
    recs = pl.DataFrame({"source": [k[0] for k in ent], "record_id": [k[1] for k in ent],
                         "entity_id": list(ent.values())}, schema={"source": pl.Utf8, "record_id": pl.Utf8,
                                                                   "entity_id": pl.Utf8})
    links = _pairs_of(st.links_among(list(ent), columns=_PAIR_COLUMNS))
    q = QueueEvidence(proj, recs, links, rows, thr, 3.0, large_size, 730, 1.0)
    _decision_conflicts(q)
    return {k: v["decision_conflict"] for k, v in q.found.items() if "decision_conflict" in v}


_PAIR_COLUMNS = ("source_l", "record_id_l", "source_r", "record_id_r", "match_probability")


def _pairs_of(links: pl.DataFrame) -> pl.DataFrame:
    if not links.height:
        return pl.DataFrame(schema={c: (pl.Float64 if c == "match_probability" else pl.Utf8) for c in _PAIR_COLUMNS})
    return links.select(_PAIR_COLUMNS)


def _found_again(st: Store, proj: Project, rows: list[dict[str, Any]], thr: float, large_size: int, dirty: set[str],
                 conflicts: Mapping[tuple[str, str | None], tuple[float, str]]) -> pl.DataFrame:
    """The queue rows of every key naming a ``dirty`` entity, as a full build finds them:
    the detectors over the dirty entities and every entity a near-miss link (or a
    conflict) joins to them, whole, with the store's ``large_size``; the
    ``decision_conflict`` findings are the store's (``conflicts``)."""
    near_low = probability(weight(thr) - 3.0)
    partners = st.entities_linked_to(dirty, near_low)
    extra = {e for k in conflicts if (k[0] in dirty or k[1] in dirty) for e in k if e}
    region = set(dirty) | partners | extra
    recs = st.records_of_entities(region)
    links = _pairs_of(st.links_among(list(zip(recs["source"], recs["record_id"])), columns=_PAIR_COLUMNS)
                      if recs.height else pl.DataFrame())
    # Decision conflicts are the store's (``conflicts``), not those of this part of it.
    q = _evidence(proj, recs, links, rows, thr, large_size=large_size,
                  detectors=[d for d in DETECTORS if d is not _decision_conflicts])
    found: dict[tuple[str, str | None], dict[str, tuple[float, str]]] = {}
    for key, reasons in q.found.items():
        if key[0] in dirty or (key[1] is not None and key[1] in dirty):
            rest = {r: v for r, v in reasons.items() if r != "decision_conflict"}
            found[key] = ({"decision_conflict": conflicts[key]} if key in conflicts else {}) | rest
    for key, v in conflicts.items():
        if (key[0] in dirty or (key[1] is not None and key[1] in dirty)) and key not in found:
            found[key] = {"decision_conflict": v}
    found = {k: v for k, v in found.items() if v}
    return _queue_frame(q, found)


@dataclass
class StoredQueue:
    """The review queue as the store holds it: ``frame`` has one row per item (reviewed ones
    too; ``open`` says which are in the queue, ``rank`` their place in it), with the columns
    of :data:`~idweave.linkage.graph.QUEUE_SCHEMA`; ``found`` is the part found again for
    entities decisions changed since it was stored (``dirty``), ``basis`` what to store."""

    frame: pl.DataFrame
    found: pl.DataFrame
    dirty: set[str]
    basis: dict[str, Any]
    threshold: float

    def items(self, *, include_reviewed: bool = False, limit: int | None = None) -> list[QueueItem]:
        """The queue (or every item, with ``include_reviewed``) as :class:`QueueItem`s, ranked."""
        f = self.frame if include_reviewed else self.frame.filter(pl.col("open"))
        f = f.sort(["score", "entity_id", "other_key"], descending=[True, False, False])
        if limit is not None:
            f = f.head(limit)
        return [as_item(n, r) for n, r in enumerate(f.iter_rows(named=True), 1)]


def as_item(rank: int, r: Mapping[str, Any]) -> QueueItem:
    """A stored queue row as a :class:`QueueItem` of ``rank``.

    >>> as_item(1, {"entity_id": "E1", "other_entity_id": None, "reason": "large", "reasons": ["large"],
    ...             "detail": "9 records", "size": 9, "other_size": None, "link": 0.95, "score": 0.6,
    ...             "suggested_split": None}).rank
    1
    """
    return QueueItem(rank=rank, entity_id=r["entity_id"], other_entity_id=r["other_entity_id"], reason=r["reason"],
                     reasons=list(r["reasons"]), detail=r["detail"], size=int(r["size"]),
                     other_size=None if r["other_size"] is None else int(r["other_size"]), link=r["link"],
                     score=float(r["score"]),
                     suggested_split=None if r["suggested_split"] is None else list(r["suggested_split"]))


def full_queue_frame(st: Store, proj: Project) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Every queue row of the store built from scratch (the default settings, reviewed items
    included), and the basis to store it with."""
    thr, _method, _ = run_info(st, proj)
    recs = st.all_records()
    links = st.link_pairs()
    rows = st.decision_rows()
    q = _evidence(proj, recs, links, rows, thr)
    return _queue_frame(q, q.found), {"format": QUEUE_FORMAT, "run": st.last_run(), "large_size": q.large_size,
                                      "decision": max((r["decision_id"] for r in rows), default=0)}


def stored_queue(st: Store, proj: Project) -> StoredQueue | None:
    """The queue the store holds, made current: the entities decisions changed since it was
    stored (and any whose ``large`` reason or decision conflict moved) are found again, so it
    is the queue a full build gives now. None when the store holds no queue of its last run
    (build one with :func:`store_queue`).

    >>> from idweave.linkage import link
    >>> from idweave.linkage.graph import Store
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> _ = store_queue("fixtures/tiny/project.yaml")
    >>> proj, st = open_store("fixtures/tiny/project.yaml", read_only=True)
    >>> with st:
    ...     sq = stored_queue(st, proj)
    >>> [i.to_dict() for i in sq.items()] == [i.to_dict() for i in queue(proj, stored=False)]
    True
    """
    basis = st.queue_basis()
    if not basis or basis.get("format") != QUEUE_FORMAT or basis.get("run") != st.last_run():
        return None
    thr, _method, _ = run_info(st, proj)
    frame = st.queue_rows().select(list(QUEUE_SCHEMA)).cast(QUEUE_SCHEMA)
    dirty = st.queue_dirty()
    rows = st.decision_rows()
    last = max((r["decision_id"] for r in rows), default=0)
    large = int(basis.get("large_size") or 0)
    found = frame.clear()
    if last != basis.get("decision") or dirty:
        # Decisions since it was stored: sizes, and so the ``large`` size, and the decision
        # conflicts may have moved anywhere; what moved is found again with the dirty entities.
        sizes = st.record_counts()
        large = default_large_size(sizes.values())
        if large != basis.get("large_size"):
            low = min(large, int(basis.get("large_size") or large))
            dirty |= {e for e, n in sizes.items() if n > low}
        conflicts = _conflicts(st, proj, rows, thr, large)
        held = {(r["entity_id"], r["other_entity_id"]): _found_of(r).get("decision_conflict")
                for r in frame.filter(pl.col("hard")).iter_rows(named=True)}
        for key in set(held) | set(conflicts):
            if held.get(key) != conflicts.get(key):
                dirty |= {e for e in key if e}
        if dirty:
            found = _found_again(st, proj, rows, thr, large, dirty, conflicts)
            gone = sorted(dirty)
            frame = pl.concat([frame.filter(~pl.col("entity_id").is_in(gone)
                                            & ~pl.col("other_entity_id").fill_null("").is_in(gone)), found])
    return _finished(frame, found, dirty, {**basis, "large_size": large, "decision": last}, thr, rows)


def _finished(frame: pl.DataFrame, found: pl.DataFrame, dirty: set[str], basis: dict[str, Any], thr: float,
              rows: list[dict[str, Any]]) -> StoredQueue:
    """The queue of ``frame``'s rows: which are open (not reviewed), ranked."""
    reviewed = sorted(_reviewed(rows))
    hidden = (pl.col("digest").is_in(reviewed) & (pl.col("other_entity_id").is_null()
                                                  | pl.col("other_digest").is_in(reviewed))) & ~pl.col("hard")
    frame = frame.with_columns(open=~hidden, other_key=pl.col("other_entity_id").fill_null(""))
    frame = frame.sort(["score", "entity_id", "other_key"], descending=[True, False, False])
    frame = frame.with_columns(rank=pl.when(pl.col("open")).then(pl.col("open").cast(pl.Int32).cum_sum()))
    return StoredQueue(frame, found, dirty, basis, thr)


def current_queue(st: Store, proj: Project) -> StoredQueue:
    """The queue now: the stored one made current (:func:`stored_queue`), else one built
    from scratch in memory (nothing is written)."""
    sq = stored_queue(st, proj)
    if sq is not None:
        return sq
    frame, basis = full_queue_frame(st, proj)
    thr, _method, _ = run_info(st, proj)
    return _finished(frame, frame.clear(), set(), basis, thr, st.decision_rows())


def refresh_stored_queue(st: Store, proj: Project) -> bool:
    """In a store open for writing (outside a transaction): write back what decisions changed
    in its stored queue (:func:`stored_queue`), if it holds one of its last run; the
    ``after=`` of a decision verb. Returns whether it wrote.

    >>> from idweave.linkage import link, load_project
    >>> from idweave.linkage.decisions import confirm
    >>> from pathlib import Path
    >>> p = load_project("fixtures/tiny/project.yaml"); p.store = Path("out/doctest-refresh.duckdb")
    >>> e = link(p).entities["entity_id"][0]
    >>> _ = store_queue(p)
    >>> _ = confirm(p, e, author="ada", after=refresh_stored_queue)
    >>> proj, st = open_store(p, read_only=True)
    >>> with st:
    ...     st.queue_dirty()
    set()
    """
    sq = stored_queue(st, proj)
    if sq is None or (not sq.dirty and sq.basis == st.queue_basis()):
        return False
    st.begin()
    try:
        st.write_queue(sq.found, sq.basis, entities=sq.dirty)
        st.commit()
    except BaseException:
        st.rollback()
        raise
    return True


def store_queue(project: ProjectLike, *, wait: float = 0.0) -> bool:
    """Keep the review queue in the store: built from scratch when the store holds none of
    its last run, else the entities decisions changed since are found again and written
    back (:func:`stored_queue`). Returns whether it wrote. The whole build reads with the
    store open read-only and writes only at the end (a run started meanwhile wins: nothing
    is written).

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> _ = store_queue("fixtures/tiny/project.yaml")
    >>> store_queue("fixtures/tiny/project.yaml")  # nothing changed since: nothing to write
    False
    """
    proj, st = open_store(project, read_only=True)
    with st:
        sq = stored_queue(st, proj)
        if sq is None:
            frame, basis = full_queue_frame(st, proj)
            entities = None
        elif sq.dirty or sq.basis != st.queue_basis():
            frame, basis, entities = sq.found, sq.basis, sq.dirty
        else:
            return False
        seen = (st.last_run(), st.max_decision_id())
    with Store.open(proj.store, wait=wait) as st:
        if (st.last_run(), st.max_decision_id()) != seen:
            return False  # the store changed while the queue was found: the next reader finds it again
        st.begin()
        try:
            st.write_queue(frame, basis, entities=entities)
            st.commit()
        except BaseException:
            st.rollback()
            raise
    return True
