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

import gc
import math
from bisect import bisect_left
from contextlib import contextmanager
from itertools import compress
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import polars as pl

__all__ = ["cluster", "Clustering", "components", "closure", "choose_threshold", "completion_pairs",
           "MAX_COMPLETION_SIZE", "DEFAULT_CLUSTERING"]


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


class _Dense:
    """Dense indices of records: ``uniq`` holds the rids sorted, ``self(values)`` the
    position of each value in it (-1 where it is absent)."""

    def __init__(self, rids: np.ndarray):
        # Sorted, then deduplicated: np.unique (hash-based in this numpy) took 0.6 s on a million
        # rids, the sort 0.01 s.
        s = np.sort(rids)
        self.uniq = uniq = s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) else s
        self.lut = None
        if len(uniq) and int(uniq[-1]) - int(uniq[0]) < 4 * len(uniq) + (1 << 20):
            # A lookup table beats a binary search.
            self.lut = np.full(int(uniq[-1]) - int(uniq[0]) + 1, -1, np.int32 if len(uniq) < 1 << 31 else np.int64)
            self.lut[uniq - uniq[0]] = np.arange(len(uniq))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        uniq, n = self.uniq, len(self.uniq)
        if n == 0:
            return np.full(len(values), -1, np.int64)
        if self.lut is not None and (not len(values) or (values.min() >= uniq[0] and values.max() <= uniq[-1])):
            return self.lut[values - uniq[0]].astype(np.int64)
        inside = (values >= uniq[0]) & (values <= uniq[-1])
        if self.lut is None:
            at = np.minimum(np.searchsorted(uniq, values), n - 1)
            return np.where(inside & (uniq[at] == values), at, -1)
        out = np.full(len(values), -1, np.int64)
        out[inside] = self.lut[values[inside] - uniq[0]]
        return out


def _ints(values: Iterable[Any] | pl.Series) -> np.ndarray:
    if isinstance(values, pl.Series):
        return values.cast(pl.Int64).to_numpy()
    return np.fromiter((int(v) for v in values), np.int64)


def _pairs(frame: pl.DataFrame | Iterable[tuple[int, int]], dense: _Dense, *extra: str) -> tuple[np.ndarray, ...]:
    """Dense ends ``a <= b`` of the pairs whose two rids are records, the ``extra`` columns
    (as Float64) of those rows, and the mask of those rows."""
    if not isinstance(frame, pl.DataFrame):
        frame = pl.DataFrame([(int(x), int(y)) for x, y in frame], schema=list(_PAIR_SCHEMA.items()), orient="row")
    absent = int(dense.uniq[0]) - 1 if len(dense.uniq) else 0
    ia, ib = (dense(_ints(frame[c].fill_null(absent) if frame[c].null_count() else frame[c])) for c in _PAIR_SCHEMA)
    # (All there, as in the pipeline's links: no copies then.)
    every = not len(ia) or (ia.min() >= 0 and ib.min() >= 0)
    ok = np.ones(len(ia), bool) if every else (ia >= 0) & (ib >= 0)
    if not every:
        ia, ib = ia[ok], ib[ok]
    if not (ia <= ib).all():
        ia, ib = np.minimum(ia, ib), np.maximum(ia, ib)
    cols = (frame[c].cast(pl.Float64).to_numpy() for c in extra)
    return (ia, ib, *(cols if every else (col[ok] for col in cols)), ok)


def _roots(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The smallest index of each index's connected component under the edges ``u``-``v``."""
    parent = np.arange(n)
    while True:  # hook each root onto the smallest root it links to, then flatten
        pu, pv = parent[u], parent[v]
        cross = pu != pv
        if not cross.any():
            return parent
        np.minimum.at(parent, np.maximum(pu, pv)[cross], np.minimum(pu, pv)[cross])
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


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
    (The sum is at least the probability of the link being walked and rounding is monotone,
    so when that probability alone reaches the mean the sum is not needed.) Clusters never
    span two connected components of the strong links and must-links, so each component is
    clustered on its own and links between components never count.

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
    which only costs averages. Two consequences keep the replay cheap:

    * a link between two clean clusters that the previous run did not join does nothing, so
      the walk visits only the previous joins and, from the moment a record's cluster turns
      dirty, that record's strong links (visiting a link twice or early is harmless: the
      walk takes the links in order and skips none it would act on);
    * dirtiness only spreads along strong links, so a component (see above) with no dirty
      record, counting the ends of gone previous joins, is clean throughout: its clusters are
      the components of its must-links and previous joins, and those joins are its trace
      (a trace is a forest: each of its joins merged two clusters). Only the first strong
      link of a pair is taken as its previous join (when clean, a later one finds it joined).

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
    rid_arr = _ints(rids)
    # Dense indices in rid order: record i is uniq[i], and a < b iff uniq[a] < uniq[b].
    dense = _Dense(rid_arr)
    uniq = dense.uniq
    n = len(uniq)
    a, b, p, _ = _pairs(links, dense, "match_probability")
    key = a * n + b
    if not (key[1:] >= key[:-1]).all():  # the pipeline gives the links sorted by rids
        order = np.argsort(key, kind="stable")
        a, b, p, key = a[order], b[order], p[order], key[order]
    # The strong links in processing order: probability desc, then rids (``s_key``: by rids,
    # the order of the links; ``by_p`` takes one to the other).
    s_key = np.flatnonzero((p >= threshold) & (a != b))
    by_p = _descending(p[s_key])
    s = s_key[by_p]
    sa, sb, sp = a[s], b[s], p[s]
    ma, mb, _ = _pairs(must_link, dense)
    # No cluster spans two components of the strong links and must-links.
    comp = _roots(n, np.concatenate([sa, ma]), np.concatenate([sb, mb]))
    was = np.zeros(len(s), bool)
    if previous_joined is None:
        walked = np.zeros(n, bool)  # records with a strong link or a must-link
        walked[np.concatenate([sa, sb, ma, mb])] = True
    else:
        # A previous join that is not a strong link of this run (its record is gone, or the
        # link was re-scored) happened somewhere in the previous walk: its ends start dirty.
        with_p = "match_probability" in previous_joined.columns
        pa, pb, *pp, ok = _pairs(previous_joined, dense, *(["match_probability"] if with_p else []))
        first = _first_strong(key[s_key], p[s_key], pa * n + pb, pp[0] if with_p else None)
        gone = (pa * n + pb)[first < 0]
        # (Only the first strong link of a pair can join it.)
        was_by_key = np.zeros(len(s), bool)
        was_by_key[first[first >= 0]] = True
        was = was_by_key[by_p]
        rest = previous_joined.filter(pl.Series(~ok))  # a previous join with a record gone
        seeds = np.concatenate([dense(_ints(dirty if dirty is not None else ())), gone // n, gone % n,
                                *(dense(_ints(rest[c])) for c in _PAIR_SCHEMA)])
        seeds = seeds[seeds >= 0]
        # A component without a dirty record is clean throughout (see the docstring).
        walked = np.zeros(n, bool)
        walked[comp[seeds]] = True
        walked = walked[comp]
    # The walk runs on the records of ``walked`` only (other records stay singletons in it).
    on_walk = np.flatnonzero(walked)
    in_walk = walked[sa]
    walk = _Walk(n, on_walk, method == "average", min_average)
    walk.constraints(dense, walked, exclusive or {}, cannot_link)
    if walk.average:
        walk.links(key, b, p)
    for x, y in zip(ma.tolist(), mb.tolist()):
        if walked[x] and walk.root[x] != walk.root[y]:
            walk.union(walk.root[x], walk.root[y])
    pos = np.flatnonzero(in_walk)
    wa, wb = sa[pos], sb[pos]
    if previous_joined is None:
        walk.dirty = bytearray(b"\x01") * n
        active = bytearray(b"\x01") * len(pos)
    else:
        for x in seeds.tolist():
            walk.dirty[walk.root[x]] = 1
        # The walk visits the previous joins and the links of records in dirty clusters.
        soiled = np.frombuffer(walk.dirty, np.uint8)[np.asarray(walk.root, np.int64)].astype(bool)
        active = bytearray((was[pos] | soiled[wa] | soiled[wb]).astype(np.uint8).tobytes())
        walk.strong_by_record(wa, wb, active)
    # (memoryviews: the walk reads only the links it visits, each as a Python number.)
    with _gc_paused():
        joined = pos[np.asarray(walk.run(memoryview(wa), memoryview(wb), memoryview(np.ascontiguousarray(sp[pos])),
                                         bytearray(was[pos].astype(np.uint8).tobytes()), active), np.int64)]
    # Elsewhere the clusters are those of the must-links and the previous joins.
    clean = np.flatnonzero(was & ~in_walk)
    outside = ~walked[ma]
    label = _roots(n, np.concatenate([sa[clean], ma[outside]]), np.concatenate([sb[clean], mb[outside]]))
    root = np.asarray(walk.root, np.int64)[on_walk]
    first = np.full(n, n, np.int64)  # a root's smallest member, hence smallest rid
    np.minimum.at(first, root, on_walk)
    label[on_walk] = first[root]
    if method == "average" and len(sa):
        label = _abstain(label, a, b, p, sa, sb, np.concatenate([ma, mb]), dense, exclusive or {}, cannot_link)
    out = pl.DataFrame({"rid": rid_arr, "cluster": uniq[label[dense(rid_arr)]]},
                       schema={"rid": pl.Int64, "cluster": pl.Int64})
    if not with_trace:
        return out
    joined = np.sort(np.concatenate([joined, clean]))
    trace = pl.DataFrame({"rid_l": uniq[sa[joined]], "rid_r": uniq[sb[joined]], "match_probability": sp[joined]},
                         schema={**_PAIR_SCHEMA, "match_probability": pl.Float64})
    return Clustering(out, trace)


# A record is placed in an entity only if its best link there is at least this many bits
# (odds 9 to 1) stronger than its best link to another entity that would take it too.
AMBIGUOUS_BITS = math.log2(9)


def _abstain(label: np.ndarray, a: np.ndarray, b: np.ndarray, p: np.ndarray, sa: np.ndarray, sb: np.ndarray,
             decided: np.ndarray, dense: _Dense, exclusive: Mapping[int, str],
             cannot_link: Iterable[tuple[int, int]]) -> np.ndarray:
    """The clusters (dense ``label``: a cluster's smallest member) with each ambiguous record
    taken out on its own. A record is ambiguous when its own cluster and another one are two
    people for sure (each holds a record of one exclusive source, or a cannot-link runs
    between them) and it fits the other one nearly as well: a strong link reaches it, nothing
    forbids it there (its own exclusive source, a cannot-link), and its best link there is less
    than :data:`AMBIGUOUS_BITS` weaker than its best link inside its own cluster. A payroll form
    with no birth date naming a father and son of one name at one address, each with his own
    census record, fits both: it is left on its own for a person to place rather than given to
    one of them. Records under a must-link stay. A function of each component's clusters and
    links, so a replay gives it as a run from scratch does.

    Two census records (0, 2: an exclusive source) and a form (1) that links to both, nearly
    as well; then one it links to far better:

    >>> import polars as pl
    >>> census = {0: "census", 2: "census"}
    >>> links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.999, 0.998]})
    >>> cluster(links, [0, 1, 2], threshold=0.9, method="average", exclusive=census)["cluster"].to_list()
    [0, 1, 2]
    >>> links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.99999, 0.95]})
    >>> cluster(links, [0, 1, 2], threshold=0.9, method="average", exclusive=census)["cluster"].to_list()
    [0, 0, 2]
    """
    n = len(label)
    cross = label[sa] != label[sb]
    if not cross.any():
        return label
    size = np.bincount(label, minlength=n)
    keep = np.zeros(n, bool)
    keep[decided] = True
    xs = np.concatenate([sa[cross], sb[cross]])
    ds = np.concatenate([label[sb[cross]], label[sa[cross]]])
    ok = (size[label[xs]] >= 2) & ~keep[xs]
    if not ok.any():
        return label
    cand = pl.DataFrame({"x": xs[ok], "d": ds[ok]}).unique()
    is_cand = np.zeros(n, bool)
    is_cand[cand["x"].to_numpy()] = True
    # Every link of a candidate, from its side: (x, y, p).
    both = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([p, p])
    at = is_cand[both[0]] & (both[0] != both[1])
    x, y, q = both[0][at], both[1][at], both[2][at]
    w = np.log2(np.clip(q, 1e-300, None)) - np.log2(np.clip(1 - q, 1e-300, None))
    lk = pl.DataFrame({"x": x, "d": label[y], "w": w, "own": label[y] == label[x]})
    own = lk.filter(pl.col("own")).group_by("x").agg(pl.col("w").max().alias("w_own"))
    other = (lk.filter(~pl.col("own")).join(cand, on=["x", "d"], how="semi")
             .group_by("x", "d").agg(pl.col("w").max()))
    # Clusters a record could never join: one holding a record of its exclusive source, or
    # a record it must not be with.
    at = dense(_ints(exclusive)) if exclusive else np.zeros(0, np.int64)
    have = at >= 0
    held = pl.DataFrame()
    if have.any():
        src = pl.Series(list(compress(exclusive.values(), have.tolist())))
        held = pl.DataFrame({"i": at[have], "src": src})
        of_x = held.select(pl.col("i").alias("x"), "src")
        in_d = held.select(pl.Series("d", label[at[have]]), "src")
        barred = other.join(of_x, on="x").join(in_d, on=["d", "src"], how="semi").select("x", "d")
        other = other.join(barred, on=["x", "d"], how="anti")
    ca, cb, _ = _pairs(cannot_link, dense)
    if len(ca):
        no = pl.DataFrame({"x": np.concatenate([ca, cb]), "d": label[np.concatenate([cb, ca])]})
        other = other.join(no, on=["x", "d"], how="anti")
    # Only between two clusters that are two people for sure (each holds a record of one
    # exclusive source, or a person kept them apart): where the average alone kept them apart
    # they may be one person, and the record is not in doubt (abstaining there cost fake_1000
    # and historical_50k 0.002 F1, BENCHMARKS.md).
    other = other.with_columns(pl.Series("c", label[other["x"].to_numpy()]))
    apart = []
    if have.any():
        in_c = held.select(pl.Series("c", label[at[have]]), "src").unique()
        apart.append(other.select("c", "d").unique().join(in_c, on="c")
                     .join(in_c.rename({"c": "d"}), on=["d", "src"], how="semi").select("c", "d"))
    if len(ca):
        apart.append(pl.DataFrame({"c": label[np.concatenate([ca, cb])], "d": label[np.concatenate([cb, ca])]}))
    if not apart:
        return label
    other = other.join(pl.concat(apart).unique(), on=["c", "d"], how="semi")
    hit = (other.join(own, on="x")
           .filter(pl.col("w") >= pl.col("w_own") - AMBIGUOUS_BITS)["x"].unique().to_numpy())
    if not len(hit):
        return label
    out = label.copy()
    out[hit] = hit
    # A cluster that lost its smallest member is named after the smallest it keeps.
    rest = np.flatnonzero(np.isin(label, hit) & (out != np.arange(n)) & np.isin(out, hit))
    if len(rest):
        first = np.full(n, n, np.int64)
        np.minimum.at(first, label[rest], rest)
        out[rest] = first[label[rest]]
    return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection for the block: the walk makes many small lists (no
    cycles) and collections triggered by them would rescan every object the process holds."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _descending(p: np.ndarray) -> np.ndarray:
    """``np.argsort(-p, kind="stable")`` (ties in index order), from two unstable sorts: a
    third of the time of numpy's stable sort of floats."""
    order = np.argsort(-p)
    v = p[order]
    tie = np.cumsum(np.concatenate(([0], v[1:] != v[:-1])))  # equal probabilities share a number
    return np.sort(tie * len(p) + order) % len(p) if len(p) else order


def _first_strong(key: np.ndarray, p: np.ndarray, want: np.ndarray, want_p: np.ndarray | None) -> np.ndarray:
    """For each wanted pair (``want``, a pair key, with the probability ``want_p`` when given),
    the position in ``key`` (the strong links' pair keys, sorted stably, with probabilities
    ``p``) of the pair's first strong link in processing order (probability desc, then
    position) among those with that probability; -1 where there is none."""
    if not len(key):
        return np.full(len(want), -1, np.int64)
    order = np.argsort(want)  # sorted needles: searched in a third of the time
    lo = np.empty_like(order)
    lo[order] = np.searchsorted(key, want[order])
    at = np.minimum(lo, len(key) - 1)
    there = key[at] == want
    found = np.where(there, lo, -1)
    several = there & (lo + 1 < len(key)) & (key[np.minimum(lo + 1, len(key) - 1)] == want)
    if want_p is not None:
        found[p[at] != want_p] = -1
        several &= found < 0  # (else the first with that probability is found)
    # A pair with several strong links (rare): the first of the most probable, or of those
    # with the wanted probability.
    for t in np.flatnonzero(several).tolist():
        of_pair = p[lo[t]:np.searchsorted(key, want[t], "right")]
        match = np.flatnonzero(of_pair == (of_pair.max() if want_p is None else want_p[t]))
        found[t] = lo[t] + match[0] if len(match) else -1
    return found


class _Walk:
    """Union-find over dense indices 0..n-1 with the bookkeeping of :func:`cluster`.

    ``root[i]`` is kept exact (the smaller side is relabelled on a union), ``members[r]``
    lists a root's records (None for a record the walk never reaches), ``dirty[r]`` flags a
    root whose membership may differ from the previous run's at the same point of the walk.
    """

    # Above this many cross pairs, an average is summed by scanning the links of both
    # clusters in numpy rather than by looking up each pair.
    PAIRS = 128

    def __init__(self, n: int, walked: np.ndarray, average: bool, min_average: float):
        """``walked`` lists the records the walk can reach: only they get a ``members`` list
        (fewer objects for the garbage collector to track)."""
        self.root = list(range(n))
        self.members: list[list[int] | None] = [None] * n
        for i in walked.tolist():
            self.members[i] = [i]
        self.dirty = bytearray(n)
        self.average = average
        self.min_average = min_average
        self.ex: dict[int, set[str]] = {}
        self.cannot: dict[int, set[int]] = {}
        # Rejections as (root, size, root, size): a root's membership only grows while it is a
        # root, so a (root, size) names one membership, and a pair of them one decision.
        self.rejected: set[tuple[int, int, int, int]] = set()

    def constraints(self, dense: _Dense, walked: np.ndarray, exclusive: Mapping[int, str],
                    cannot_link: Iterable[tuple[int, int]]) -> None:
        """The constraints on the records of ``walked`` (a mask of the dense indices)."""
        at = dense(_ints(exclusive))
        keep = at >= 0
        keep[keep] = walked[at[keep]]
        for i, source in zip(at[keep].tolist(), compress(exclusive.values(), keep.tolist())):
            self.ex[i] = {source}
        ca, cb, _ = _pairs(cannot_link, dense)
        # (Those with an unwalked end are kept: harmless, no cluster of the walk holds one.)
        for x, y in zip(ca.tolist(), cb.tolist()):
            self.cannot.setdefault(x, set()).add(y)
            self.cannot.setdefault(y, set()).add(x)

    def links(self, key: np.ndarray, b: np.ndarray, p: np.ndarray) -> None:
        """Index all the links (``a <= b``; ``key`` is ``a * n + b``, sorted) by their smaller
        end: those of ``a`` are ``to[off[a]:off[a + 1]]`` (sorted; a pair linked twice is
        there twice) with the probabilities ``p`` at the same positions.

        Only links between two clusters of the walk are ever read (hence only links inside a
        component of the walk), and only those with ``p > 0`` count: no need to filter them
        here."""
        n = len(self.root)
        self.off_np = np.searchsorted(key, np.arange(n + 1) * n)
        self.off = self.off_np.tolist()
        self.to, self.p = np.ascontiguousarray(b, np.int64), np.ascontiguousarray(p, np.float64)
        # Read element by element (as Python ints and floats) by the pair lookups: no copy.
        self.to_at, self.p_at = memoryview(self.to), memoryview(self.p)
        self.mark = np.zeros(n, np.int8)

    def cross_sum(self, ra: int, rb: int) -> float:
        """The exact sum of the link probabilities between two clusters."""
        A, B = self.members[ra], self.members[rb]
        if len(A) * len(B) > self.PAIRS:  # type: ignore[arg-type]
            return self._scan(A, B)  # type: ignore[arg-type]
        # Each cross pair is looked up by a binary search among the links of its smaller end.
        off, to, p = self.off, self.to_at, self.p_at
        found = []
        for x in A:  # type: ignore[union-attr]
            sx, ex = off[x], off[x + 1]
            for y in B:  # type: ignore[union-attr]
                if x < y:
                    s, e, t = sx, ex, y
                else:
                    s, e, t = off[y], off[y + 1], x
                i = bisect_left(to, t, s, e)
                while i < e and to[i] == t:  # a pair linked twice counts twice
                    v = p[i]
                    if v > 0:
                        found.append(v)
                    i += 1
        return math.fsum(found)

    def _scan(self, A: list[int], B: list[int]) -> float:
        """:meth:`cross_sum` by scanning the links under each member of either cluster."""
        a, b = np.asarray(A, np.int64), np.asarray(B, np.int64)
        mark = self.mark
        mark[a], mark[b] = 1, 2
        ends = np.concatenate([a, b])
        start, size = self.off_np[ends], self.off_np[ends + 1] - self.off_np[ends]
        at = np.repeat(start - np.cumsum(size) + size, size) + np.arange(int(size.sum()))
        hit = np.repeat(mark[ends], size) + mark[self.to[at]] == 3  # one end in each
        mark[a], mark[b] = 0, 0
        v = self.p[at[hit]]
        return math.fsum(v[v > 0].tolist())

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

    def joins(self, ra: int, rb: int, p: float) -> bool:
        """The from-scratch decision for two clusters (a function of their members only), at
        a strong link of probability ``p`` between them."""
        na, nb = len(self.members[ra]), len(self.members[rb])  # type: ignore[arg-type]
        seen = (ra, na, rb, nb) if ra < rb else (rb, nb, ra, na)
        if seen in self.rejected:
            return False
        pairs = na * nb
        # The sum is at least p (and rounding is monotone): when p alone reaches the mean,
        # so does the sum.
        ok = (not (self.ex or self.cannot) or self.allowed(ra, rb)) and (
            not self.average or p / pairs >= self.min_average or self.cross_sum(ra, rb) / pairs >= self.min_average)
        if not ok:
            self.rejected.add(seen)
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

    def strong_by_record(self, sa: np.ndarray, sb: np.ndarray, active: bytearray) -> None:
        """Index the strong links (positions in the walk) by record, for :meth:`soil`."""
        m = len(sa)
        # Sorted by record, then position: a sort of values, twice as fast as an argsort.
        by = np.sort(np.concatenate([sa, sb]) * m + np.tile(np.arange(m), 2))
        self.s_at = by % m if m else by
        self.s_off = np.searchsorted(by, np.arange(len(self.root) + 1) * m).tolist()
        self.active = np.frombuffer(active, np.uint8)

    def soil(self, r: int) -> None:
        """Mark a clean root dirty, and the strong links of its records to be visited."""
        self.dirty[r] = 1
        off, at, active = self.s_off, self.s_at, self.active
        for m in self.members[r]:  # type: ignore[union-attr]
            active[at[off[m]:off[m + 1]]] = 1

    def run(self, a_list: Sequence[int], b_list: Sequence[int], p_list: Sequence[float], was: bytearray,
            active: bytearray) -> list[int]:
        """Walk the ``active`` strong links in order (more become active as clusters turn
        dirty); returns the positions of those that joined."""
        root, dirty, joins, union, soil = self.root, self.dirty, self.joins, self.union, self.soil
        find = active.find
        joined = []
        k = find(1)
        while k >= 0:
            ra, rb = root[a_list[k]], root[b_list[k]]
            if ra != rb:
                if not (dirty[ra] or dirty[rb]):
                    # Two clean clusters: the previous run's decision stands.
                    if was[k]:
                        union(ra, rb)
                        joined.append(k)
                elif joins(ra, rb, p_list[k]):
                    if not (dirty[ra] and dirty[rb]):
                        soil(rb if dirty[ra] else ra)
                    union(ra, rb)
                    joined.append(k)
                elif was[k]:
                    # The previous run merged these clusters here; this one does not.
                    for r in (ra, rb):
                        if not dirty[r]:
                            soil(r)
            k = find(1, k + 1)
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
    rid = _ints(rids)
    dense = _Dense(rid)  # indices in rid order: a component's smallest index is its smallest rid
    edges = links if "match_probability" not in links.columns else \
        links.filter(pl.col("match_probability") >= threshold)
    a, b, _ = _pairs(edges.select("rid_l", "rid_r"), dense)
    label = dense.uniq[_roots(len(dense.uniq), a, b)[dense(rid)]]
    return pl.DataFrame({"rid": rid, "cluster": label}, schema={"rid": pl.Int64, "cluster": pl.Int64})


def closure(seeds: Sequence[int] | pl.Series, links: pl.DataFrame, rids: Sequence[int] | pl.Series) -> pl.Series:
    """Every rid (of ``rids``) in a connected component of ``links`` (``rid_l``, ``rid_r``:
    all of them count) that holds one of ``seeds``, sorted: the records the components of
    :func:`components` holding a seed would give, found without labelling every component.

    Grown from the seeds one step along every link at a time (an edge whose two ends are
    reached is dropped), so the cost follows the reached part; past a few dozen steps (a
    long chain) the rest is labelled by components.

    >>> links = pl.DataFrame({"rid_l": [0, 1, 5], "rid_r": [1, 2, 6]})
    >>> closure([2], links, range(8)).to_list()
    [0, 1, 2]
    """
    dense = _Dense(_ints(rids))
    u, v, _ = _pairs(links.select("rid_l", "rid_r"), dense)
    s = dense(_ints(seeds))
    reached = np.zeros(len(dense.uniq), dtype=bool)
    reached[s[s >= 0]] = True
    for _ in range(48):
        ru, rv = reached[u], reached[v]
        cross = ru != rv
        if not cross.any():
            return pl.Series("rid", dense.uniq[reached])
        reached[u[cross]] = reached[v[cross]] = True
        live = ~(ru | rv)  # neither end reached before this step: may be reached later
        u, v = u[live], v[live]
    # Edges between reached records are gone, which changes no component (both ends are in).
    root = _roots(len(reached), u, v)
    reached |= np.isin(root, root[reached])
    return pl.Series("rid", dense.uniq[reached])


def choose_threshold(probabilities: pl.Series, *, grid: Sequence[float] | None = None) -> float:
    """The match-probability threshold that maximises the F1 the model itself expects.

    With no labels, each scored pair counts as p of a true match: above a threshold t the
    expected true links are sum(p) and false links sum(1 - p); below it sum(p) are missed.

    The sums are taken in fixed point (units of 2**-32, integers): exact, so the choice does
    not depend on the order or batching of the probabilities (an incremental run holds the
    same pairs as a full run, in another order, and must choose the same threshold).

    >>> choose_threshold(pl.Series([0.999, 0.998, 0.6, 0.01]))
    0.5
    >>> choose_threshold(pl.Series([0.01, 0.6, 0.998, 0.999]))
    0.5
    """
    p = probabilities.drop_nulls().cast(pl.Float64)
    if p.len() == 0:
        return 0.9
    grid = list(grid) if grid is not None else [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    unit = 2.0 ** 32  # 2**31 pairs of p = 1 still sum below 2**63
    q = (p * unit).round().cast(pl.Int64)
    total = int(q.sum()) / unit
    best_t, best_f = grid[0], -1.0
    for t in grid:
        above = p >= t
        tp = int(q.filter(above).sum()) / unit
        fp = float(above.sum()) - tp
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
    # Only links from a member can be among the pairs: a far smaller frame to join with.
    have = links.select(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64)) \
        .filter(pl.col("rid_l").is_in(members["rid"].implode()))
    return pairs.join(have, on=["rid_l", "rid_r"], how="anti").sort("rid_l", "rid_r")
