"""Links + constraints -> clusters (one run's grouping; persistent ids come from graph.py).

Edges are taken strongest first and joined by union-find unless a constraint forbids it:

* an ``exclusive`` source never has two records in one cluster;
* a cannot-link (a human "keep apart") is never crossed;
* must-links (a human "merge") are joined first and unconditionally;
* with ``method="average"`` two clusters join only if the mean match probability over all
  their cross pairs (unscored pairs count as 0) reaches ``min_average``, so one strong link
  cannot chain two otherwise unrelated groups together.

The result depends only on the edges inside each connected component and on a fixed edge
order (probability, then record ids), which is what lets an incremental run recluster only
the affected components and still equal a full run.

>>> import polars as pl
>>> links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.99, 0.97]})
>>> cluster(links, [0, 1, 2, 3], threshold=0.9)["cluster"].to_list()
[0, 0, 0, 3]
>>> cluster(links, [0, 1, 2, 3], threshold=0.9, cannot_link=[(0, 2)])["cluster"].to_list()
[0, 0, 2, 3]
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import polars as pl

__all__ = ["cluster", "Clustering", "components", "choose_threshold", "completion_pairs", "MAX_COMPLETION_SIZE",
           "DEFAULT_CLUSTERING"]


# Average linkage (with cluster completion) is the default: plain connected components
# chain unrelated people through one weak link (measured in BENCHMARKS.md).
DEFAULT_CLUSTERING = "average"


class Clustering(NamedTuple):
    """What :func:`cluster` returns with ``with_trace=True``: the ``clusters`` frame and the
    trace ``joined`` (``rid_l``, ``rid_r``, ``rid_l < rid_r``, ``match_probability``: the
    strong links whose processing joined two clusters, in processing order; must-link joins
    are not in it)."""

    clusters: pl.DataFrame
    joined: pl.DataFrame


_PAIR_SCHEMA = {"rid_l": pl.Int64, "rid_r": pl.Int64}


def _oriented(frame: pl.DataFrame, *extra: pl.Expr) -> pl.DataFrame:
    """``rid_l``, ``rid_r`` as Int64 with the smaller rid first (the caller's order of a pair
    must not change the edge order, and so the result), plus ``extra`` columns."""
    l, r = pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64)
    return frame.select(pl.min_horizontal(l, r).alias("rid_l"), pl.max_horizontal(l, r).alias("rid_r"), *extra)


def cluster(
    links: pl.DataFrame,
    rids: Sequence[int] | pl.Series,
    *,
    threshold: float,
    exclusive: Mapping[int, str] | None = None,
    must_link: Iterable[tuple[int, int]] = (),
    cannot_link: Iterable[tuple[int, int]] = (),
    method: str = "components",
    min_average: float = 0.5,
    with_trace: bool = False,
    previous_joined: pl.DataFrame | None = None,
    dirty: Iterable[int] | pl.Series | None = None,
) -> Any:
    """Cluster records; returns ``rid`` and ``cluster`` (the smallest rid in the cluster).

    ``links`` holds ``rid_l``, ``rid_r``, ``match_probability`` (all scored pairs may be
    given: only those at or above ``threshold`` can join clusters; with
    ``method="average"`` the others still count in the averages). ``exclusive`` maps the
    rids of records from exclusive sources to their source name.

    The average of two clusters is ``math.fsum`` of the probabilities of the links between
    them (those above 0), divided by the number of cross pairs: an exactly rounded sum, so a
    decision depends only on the two clusters' members, never on the order they were built in.

    ``with_trace=True`` returns a :class:`Clustering` (``clusters``, ``joined``): the trace
    is the strong links that joined two clusters, which is what a later replay needs.

    **Replay** (``previous_joined``, ``dirty``): gives exactly the clusters and the trace a
    run from scratch gives, walking the strong links once with a union-find and computing
    averages only where a *dirty* cluster is involved. THE CALLER IS RESPONSIBLE FOR THE DIRTY
    SET: nothing here can tell a wrong one, and a wrong one gives wrong clusters. With ``K``
    the given rids that are not dirty, the result is exact if:

    * ``previous_joined`` is the whole trace (``joined``) of the previous run, made with the
      same ``threshold``, ``method`` and ``min_average`` (it may name records that are dirty
      or gone now);
    * every rid in ``K`` was a record of the previous run, with the same exclusive source
      (or none): new records are dirty;
    * the links among records of ``K`` are the same as in the previous run (same pairs, same
      probabilities): a record with a link added, dropped or re-scored *to another record of
      K* is dirty. Links between ``K`` and dirty or removed records may change freely;
    * the must-links and cannot-links touching ``K`` are the same as in the previous run:
      records under added or withdrawn human decisions (also a decision on a removed record) are dirty.

    A previous join that is not a strong link of this run (with the same probability, when
    ``previous_joined`` has ``match_probability``) makes its ends dirty here; without that
    column a strong link between ``K`` and a dirty record must also keep its probability.

    Why it is exact. Walk the strong links of both runs in one order (probability desc,
    then rids). A cluster is *clean* while no dirty record is in it and nothing below made
    it dirty. Invariant: the partition is the from-scratch one, and every clean cluster is
    also a cluster of the previous run at the same point of its walk. It holds after the
    must-links (those touching ``K`` are the same). At a strong link between the clusters
    ``A`` and ``B`` of its ends:

    * ``A`` is ``B``: skipped, as from scratch. If it is clean it was one cluster in the
      previous run too, which skipped as well; if it is dirty, whatever the previous run
      merged here holds an end of the link, which no clean cluster holds.
    * both clean: they are previous-run clusters of records of ``K``, so the link is the
      previous run's at the same place, and both runs judge the same members with the same
      exclusive sources, cannot-links and links, and the exact sum makes the average the
      same float. So the previous decision stands: join iff the link is in
      ``previous_joined`` (no average is computed); the union is clean.
    * ``A`` or ``B`` dirty: decided from scratch (exclusivity, cannot-links, average); a
      union is dirty. With no union, if the previous run joined this link, its clusters
      ``A'``, ``B'`` merged here: a clean ``A`` (or ``B``), which equalled ``A'``, no longer
      equals a previous-run cluster, so it becomes dirty. Other clean clusters hold neither
      end of the link, in either run.
    * a link of only one run, or moved (re-scored): it has an end outside ``K``. Where this
      run has it, it is judged from scratch as above and the previous run did nothing there
      (had it joined there, the link would be in the trace with that probability). Where
      only the previous run had it, the previous run did not join there (else its ends start
      dirty), so no previous-run cluster changed.

    So every decision equals the from-scratch one, and so do the clusters and the trace.
    Must-link joins are not in the trace; a cluster is no less exact for being marked dirty,
    which only costs averages.

    >>> links = pl.DataFrame({"rid_l": [0, 1, 2], "rid_r": [1, 2, 3],
    ...                       "match_probability": [0.99, 0.95, 0.97]})
    >>> full = cluster(links, [0, 1, 2, 3, 4], threshold=0.9, method="average", with_trace=True)
    >>> full.clusters["cluster"].to_list(), full.joined.rows()
    ([0, 0, 2, 2, 4], [(0, 1, 0.99), (2, 3, 0.97)])
    >>> # A new record 4 links to 3: 4 is dirty, the rest replays the previous trace, except
    >>> # that {3, 4} now refuses 2, which the last run joined to 3.
    >>> more = pl.concat([links, pl.DataFrame({"rid_l": [3], "rid_r": [4], "match_probability": [0.98]})])
    >>> again = cluster(more, [0, 1, 2, 3, 4], threshold=0.9, method="average", with_trace=True,
    ...                 previous_joined=full.joined, dirty=[4])
    >>> again.clusters["cluster"].to_list(), again.joined.rows()
    ([0, 0, 2, 3, 3], [(0, 1, 0.99), (3, 4, 0.98)])
    >>> scratch = cluster(more, [0, 1, 2, 3, 4], threshold=0.9, method="average", with_trace=True)
    >>> scratch.clusters.equals(again.clusters) and scratch.joined.equals(again.joined)
    True
    """
    if method not in ("components", "average"):
        raise ValueError(f"unknown clustering method {method!r}; expected components or average")
    if dirty is not None and previous_joined is None:
        raise ValueError("dirty is only meaningful with previous_joined (a replay)")
    rid_list = [int(r) for r in (rids.to_list() if isinstance(rids, pl.Series) else rids)]
    # Dense indices: record i is uniq[i].
    pos: dict[int, int] = {}
    for r in rid_list:
        pos.setdefault(r, len(pos))
    uniq = list(pos)
    n = len(uniq)
    index = pl.DataFrame({"rid": uniq, "i": range(n)}, schema={"rid": pl.Int64, "i": pl.Int64})
    edges = (_oriented(links, pl.col("match_probability").cast(pl.Float64).alias("p"))
             .join(index.rename({"rid": "rid_l", "i": "a"}), on="rid_l")
             .join(index.rename({"rid": "rid_r", "i": "b"}), on="rid_r"))
    strong = edges.filter(pl.col("p") >= threshold)
    replay = previous_joined is not None
    seeds: list[int] = []
    if replay:
        # A previous join that is not a strong link of this run (its record is gone, or the
        # link was re-scored) happened somewhere in the previous walk: its ends start dirty.
        key = ["rid_l", "rid_r", "p"] if "match_probability" in previous_joined.columns else ["rid_l", "rid_r"]
        prev = _oriented(previous_joined, *([pl.col("match_probability").cast(pl.Float64).alias("p")]
                                            if len(key) == 3 else [])).unique()
        gone = prev.join(strong, on=key, how="anti")
        seeds = gone["rid_l"].to_list() + gone["rid_r"].to_list()
        strong = strong.join(prev.with_columns(pl.lit(True).alias("was")), on=key, how="left", nulls_equal=False)
        strong = strong.with_columns(pl.col("was").fill_null(False))
    else:
        strong = strong.with_columns(pl.lit(False).alias("was"))
    strong = strong.sort(["p", "rid_l", "rid_r"], descending=[True, False, False])
    walk = _Walk(n, method == "average", min_average)
    walk.constraints(exclusive or {}, cannot_link, pos)
    if walk.average:
        walk.adjacency(edges.filter((pl.col("p") > 0) & (pl.col("a") != pl.col("b"))))
    for a, b in must_link:
        ia, ib = pos.get(int(a)), pos.get(int(b))
        if ia is not None and ib is not None and walk.root[ia] != walk.root[ib]:
            walk.union(walk.root[ia], walk.root[ib])
    if replay:
        for r in [*(dirty.to_list() if isinstance(dirty, pl.Series) else (dirty or ())), *seeds]:
            i = pos.get(int(r))
            if i is not None:
                walk.dirty[walk.root[i]] = 1
    else:
        walk.dirty = bytearray(b"\x01") * n
    joined = walk.run(strong["a"].to_list(), strong["b"].to_list(), strong["was"].to_list())

    label = [0] * n
    for members in walk.members:
        if members:
            m = min(uniq[i] for i in members)
            for i in members:
                label[i] = m
    out = pl.DataFrame({"rid": rid_list, "cluster": [label[pos[r]] for r in rid_list]},
                       schema={"rid": pl.Int64, "cluster": pl.Int64})
    if not with_trace:
        return out
    trace = (strong.select("rid_l", "rid_r", pl.col("p").alias("match_probability"))[joined]
             if joined else pl.DataFrame(schema={**_PAIR_SCHEMA, "match_probability": pl.Float64}))
    return Clustering(out, trace)


class _Walk:
    """Union-find over dense indices 0..n-1 with the bookkeeping of :func:`cluster`.

    ``root[i]`` is kept exact (the smaller side is relabelled on a union), ``members[r]``
    lists a root's records, ``dirty[r]`` flags a root whose membership may differ from the
    previous run's at the same point of the walk.
    """

    def __init__(self, n: int, average: bool, min_average: float):
        self.root = list(range(n))
        self.members: list[list[int] | None] = [[i] for i in range(n)]
        self.dirty = bytearray(n)
        self.average = average
        self.min_average = min_average
        self.ex: dict[int, set[str]] = {}
        self.cannot: dict[int, set[int]] = {}
        self.adj_off: list[int] = [0] * (n + 1)
        self.adj_to: list[int] = []
        self.adj_p: list[float] = []
        # Rejections by (root, root) -> the two sizes then: a root's size changes whenever its
        # membership does, so an unchanged pair of (root, size) is the same decision.
        self.rejected: dict[tuple[int, int], tuple[int, int]] = {}

    def constraints(self, exclusive: Mapping[int, str], cannot_link: Iterable[tuple[int, int]],
                    pos: Mapping[int, int]) -> None:
        for rid, source in exclusive.items():
            i = pos.get(int(rid))
            if i is not None:
                self.ex[i] = {source}
        for a, b in cannot_link:
            ia, ib = pos.get(int(a)), pos.get(int(b))
            if ia is not None and ib is not None:
                self.cannot.setdefault(ia, set()).add(ib)
                self.cannot.setdefault(ib, set()).add(ia)

    def adjacency(self, edges: pl.DataFrame) -> None:
        """Both directions of every positive link, grouped by record (CSR)."""
        import numpy as np

        a, b, p = (edges[c].to_numpy() for c in ("a", "b", "p"))
        s, t = np.concatenate([a, b]), np.concatenate([b, a])
        order = np.argsort(s, kind="stable")
        off = np.zeros(len(self.root) + 1, dtype=np.int64)
        np.cumsum(np.bincount(s, minlength=len(self.root)), out=off[1:])
        self.adj_off = off.tolist()
        self.adj_to = t[order].tolist()
        self.adj_p = np.concatenate([p, p])[order].tolist()

    def cross_sum(self, ra: int, rb: int) -> float:
        """The exact sum of the link probabilities between two clusters (from the smaller one)."""
        members = self.members
        if len(members[ra]) > len(members[rb]):  # type: ignore[arg-type]
            ra, rb = rb, ra
        root, off, to, p = self.root, self.adj_off, self.adj_to, self.adj_p
        vals: list[float] = []
        for m in members[ra]:  # type: ignore[union-attr]
            s, e = off[m], off[m + 1]
            vals += [w for t, w in zip(to[s:e], p[s:e]) if root[t] == rb]
        return math.fsum(vals)

    def allowed(self, ra: int, rb: int) -> bool:
        ea, eb = self.ex.get(ra), self.ex.get(rb)
        if ea and eb and not ea.isdisjoint(eb):
            return False
        root = self.root
        ca, cb = self.cannot.get(ra), self.cannot.get(rb)
        if ca and any(root[x] == rb for x in ca):
            return False
        if cb and any(root[x] == ra for x in cb):
            return False
        return True

    def joins(self, ra: int, rb: int) -> bool:
        """The from-scratch decision for two clusters (a function of their members only)."""
        key = (ra, rb) if ra < rb else (rb, ra)
        sizes = (len(self.members[key[0]]), len(self.members[key[1]]))  # type: ignore[arg-type]
        if self.rejected.get(key) == sizes:
            return False
        ok = self.allowed(ra, rb) and (
            not self.average or self.cross_sum(ra, rb) / (sizes[0] * sizes[1]) >= self.min_average)
        if not ok:
            self.rejected[key] = sizes
        return ok

    def union(self, ra: int, rb: int) -> int:
        """Join two roots (the larger keeps its root); the result is dirty if either was."""
        members, root = self.members, self.root
        if len(members[ra]) < len(members[rb]):  # type: ignore[arg-type]
            ra, rb = rb, ra
        small = members[rb]
        for m in small:  # type: ignore[union-attr]
            root[m] = ra
        members[ra].extend(small)  # type: ignore[union-attr, arg-type]
        members[rb] = None
        for bag in (self.ex, self.cannot):
            if rb in bag:
                mine = bag.get(ra)
                if mine is None:
                    bag[ra] = bag.pop(rb)
                else:
                    mine |= bag.pop(rb)  # type: ignore[operator]
        self.dirty[ra] |= self.dirty[rb]
        return ra

    def run(self, a_list: list[int], b_list: list[int], was_list: list[bool]) -> list[int]:
        """Walk the strong links in order; returns the positions of those that joined."""
        root, dirty, joins, union = self.root, self.dirty, self.joins, self.union
        joined = []
        for k, (a, b, was) in enumerate(zip(a_list, b_list, was_list)):
            ra, rb = root[a], root[b]
            if ra == rb:
                continue
            if not (dirty[ra] or dirty[rb]):
                # Two clean clusters: the previous run's decision stands.
                if was:
                    union(ra, rb)
                    joined.append(k)
            elif joins(ra, rb):
                dirty[union(ra, rb)] = 1
                joined.append(k)
            elif was:
                # The previous run merged these clusters here; this one does not.
                dirty[ra] = dirty[rb] = 1
        return joined


def components(links: pl.DataFrame, rids: Sequence[int] | pl.Series, threshold: float = 0.0) -> pl.DataFrame:
    """Plain connected components of links at or above ``threshold`` (no constraints):
    ``rid`` (in the order given) and ``cluster`` (the smallest rid of its component), as
    ``cluster(links, rids, threshold=threshold)`` gives them, in vectorised numpy (links
    without a probability column all count).

    >>> links = pl.DataFrame({"rid_l": [5, 7], "rid_r": [7, 9], "match_probability": [0.99, 0.2]})
    >>> components(links, [9, 7, 5, 3], threshold=0.5)["cluster"].to_list()
    [9, 5, 5, 3]
    """
    import numpy as np

    rid = (rids if isinstance(rids, pl.Series) else pl.Series(list(rids), dtype=pl.Int64)).cast(pl.Int64)
    order = np.sort(rid.to_numpy())
    edges = links if "match_probability" not in links.columns else \
        links.filter(pl.col("match_probability") >= threshold)
    l = edges["rid_l"].cast(pl.Int64).to_numpy()
    r = edges["rid_r"].cast(pl.Int64).to_numpy()
    # Dense indices in rid order, so the smallest index of a component is its smallest rid.
    il, ir = np.searchsorted(order, l), np.searchsorted(order, r)
    n = len(order)
    ok = (il < n) & (ir < n)
    ok[ok] &= (order[il[ok]] == l[ok]) & (order[ir[ok]] == r[ok])
    u, v = il[ok], ir[ok]
    parent = np.arange(n)
    while True:  # hook each root onto the smallest root it links to, then flatten
        pu, pv = parent[u], parent[v]
        cross = pu != pv
        if not cross.any():
            break
        np.minimum.at(parent, np.maximum(pu, pv)[cross], np.minimum(pu, pv)[cross])
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    label = order[parent[np.searchsorted(order, rid.to_numpy())]]
    return pl.DataFrame({"rid": rid, "cluster": label}, schema={"rid": pl.Int64, "cluster": pl.Int64})


def choose_threshold(probabilities: pl.Series, *, grid: Sequence[float] | None = None) -> float:
    """The match-probability threshold that maximises the F1 the model itself expects.

    With no labels, each scored pair counts as p of a true match: above a threshold t the
    expected true links are sum(p) and false links sum(1 - p); below it sum(p) are missed.

    >>> choose_threshold(pl.Series([0.999, 0.998, 0.6, 0.01]))
    0.5
    """
    p = probabilities.drop_nulls().cast(pl.Float64)
    if p.len() == 0:
        return 0.9
    grid = list(grid) if grid is not None else [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    total = float(p.sum())
    best_t, best_f = grid[0], -1.0
    for t in grid:
        above = p.filter(p >= t)
        tp = float(above.sum())
        fp = float(above.len()) - tp
        fn = total - tp
        f = 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0
        if f > best_f + 1e-12:
            best_t, best_f = t, f
    return best_t


# Candidate clusters larger than this are not completed: their pairs would cost more than
# they tell (such clusters are review-queue material anyway).
MAX_COMPLETION_SIZE = 150


def completion_pairs(links: pl.DataFrame, rids: Sequence[int] | pl.Series, *, threshold: float,
                     max_size: int = MAX_COMPLETION_SIZE) -> pl.DataFrame:
    """The pairs inside candidate clusters that blocking never proposed.

    Average linkage judges a join by every cross pair; a pair blocking missed would count
    as 0 and wrongly hold apart records that truly match. Scoring the few pairs inside each
    candidate cluster (connected components of links at ``threshold``) fixes that at a
    bounded cost. Returns ``rid_l``, ``rid_r`` (``rid_l < rid_r``) not already in ``links``.

    >>> links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.99, 0.97]})
    >>> completion_pairs(links, [0, 1, 2, 3], threshold=0.9).rows()
    [(0, 2)]
    """
    cc = components(links, rids, threshold)
    sizes = cc.group_by("cluster").len()
    keep = sizes.filter((pl.col("len") > 2) & (pl.col("len") <= max_size)).select("cluster")
    members = cc.join(keep, on="cluster")
    pairs = (members.join(members, on="cluster", suffix="_r")
             .filter(pl.col("rid") < pl.col("rid_r"))
             .select(pl.col("rid").alias("rid_l"), pl.col("rid_r")))
    have = links.select(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64))
    return pairs.join(have, on=["rid_l", "rid_r"], how="anti").sort("rid_l", "rid_r")
