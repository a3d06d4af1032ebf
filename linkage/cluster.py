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

from typing import Iterable, Mapping, Sequence

import polars as pl

__all__ = ["cluster", "components", "choose_threshold", "completion_pairs", "MAX_COMPLETION_SIZE",
           "DEFAULT_CLUSTERING"]


# Average linkage (with cluster completion) is the default: plain connected components
# chain unrelated people through one weak link (measured in BENCHMARKS.md).
DEFAULT_CLUSTERING = "average"


class _UF:
    def __init__(self, items: Iterable[int]):
        self.parent = {i: i for i in items}
        self.members: dict[int, list[int]] = {i: [i] for i in self.parent}

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> int:
        # Keep the larger set's root to bound the work; the label is recomputed at the end.
        if len(self.members[a]) < len(self.members[b]):
            a, b = b, a
        self.parent[b] = a
        self.members[a].extend(self.members.pop(b))
        return a


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
) -> pl.DataFrame:
    """Cluster records; returns ``rid`` and ``cluster`` (the smallest rid in the cluster).

    ``links`` holds ``rid_l``, ``rid_r``, ``match_probability`` (all scored pairs may be
    given: only those at or above ``threshold`` can join clusters; with
    ``method="average"`` the others still count in the averages). ``exclusive`` maps the
    rids of records from exclusive sources to their source name.
    """
    if method not in ("components", "average"):
        raise ValueError(f"unknown clustering method {method!r}; expected components or average")
    rid_list = [int(r) for r in (rids.to_list() if isinstance(rids, pl.Series) else rids)]
    uf = _UF(rid_list)
    excl = dict(exclusive or {})
    # Per root: exclusive sources present, and the rids it must never join.
    ex_sources: dict[int, set[str]] = {r: {excl[r]} for r in rid_list if r in excl}
    cannot: dict[int, set[int]] = {}
    for a, b in cannot_link:
        a, b = int(a), int(b)
        if a in uf.parent and b in uf.parent:
            cannot.setdefault(a, set()).add(b)
            cannot.setdefault(b, set()).add(a)
    # Keep the constraint sets keyed by root.
    cannot_root = {r: set(s) for r, s in cannot.items()}

    def allowed(ra: int, rb: int) -> bool:
        if ex_sources.get(ra) and ex_sources.get(rb) and ex_sources[ra] & ex_sources[rb]:
            return False
        ca, cb = cannot_root.get(ra), cannot_root.get(rb)
        if ca and any(uf.find(x) == rb for x in ca):
            return False
        if cb and any(uf.find(x) == ra for x in cb):
            return False
        return True

    # Average linkage bookkeeping: per root, the sum of probabilities to each neighbour root.
    nbr: dict[int, dict[int, float]] = {}

    def join(ra: int, rb: int) -> None:
        root = uf.union(ra, rb)
        other = rb if root == ra else ra
        if other in ex_sources:
            ex_sources.setdefault(root, set()).update(ex_sources.pop(other))
        if other in cannot_root:
            cannot_root.setdefault(root, set()).update(cannot_root.pop(other))
        if method == "average":
            a_n, b_n = nbr.pop(root, {}), nbr.pop(other, {})
            merged = dict(a_n)
            for k, v in b_n.items():
                merged[k] = merged.get(k, 0.0) + v
            merged.pop(root, None)
            merged.pop(other, None)
            nbr[root] = merged
            for k in merged:
                d = nbr[k]
                s = d.pop(root, 0.0) + d.pop(other, 0.0)
                d[root] = s

    for a, b in must_link:
        a, b = int(a), int(b)
        if a in uf.parent and b in uf.parent:
            ra, rb = uf.find(a), uf.find(b)
            if ra != rb:
                if method == "average":
                    nbr.setdefault(ra, {})
                    nbr.setdefault(rb, {})
                join(ra, rb)

    if links.height:
        # Orient every edge (smaller rid first) so the tie order, and so the result, does
        # not depend on how the caller wrote its pairs.
        edges = links.select(
            pl.min_horizontal(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64)).alias("rid_l"),
            pl.max_horizontal(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64)).alias("rid_r"),
            pl.col("match_probability").cast(pl.Float64),
        ).filter(pl.col("rid_l").is_in(rid_list) & pl.col("rid_r").is_in(rid_list))
        if method == "average":
            for a, b, p in edges.filter(pl.col("match_probability") > 0).iter_rows():
                ra, rb = uf.find(a), uf.find(b)
                if ra == rb:
                    continue
                da, db = nbr.setdefault(ra, {}), nbr.setdefault(rb, {})
                da[rb] = da.get(rb, 0.0) + p
                db[ra] = db.get(ra, 0.0) + p
        strong = edges.filter(pl.col("match_probability") >= threshold).sort(
            ["match_probability", "rid_l", "rid_r"], descending=[True, False, False])
        for a, b, _p in strong.iter_rows():
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb or not allowed(ra, rb):
                continue
            if method == "average":
                total = nbr.get(ra, {}).get(rb, 0.0)
                if total / (len(uf.members[ra]) * len(uf.members[rb])) < min_average:
                    continue
            join(ra, rb)

    label = {}
    for root, members in uf.members.items():
        m = min(members)
        for r in members:
            label[r] = m
    return pl.DataFrame({"rid": rid_list, "cluster": [label[r] for r in rid_list]},
                        schema={"rid": pl.Int64, "cluster": pl.Int64})


def components(links: pl.DataFrame, rids: Sequence[int], threshold: float = 0.0) -> pl.DataFrame:
    """Plain connected components of links at or above ``threshold`` (no constraints)."""
    return cluster(links, rids, threshold=threshold)


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
