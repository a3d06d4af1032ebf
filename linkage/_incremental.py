"""The incremental path of :func:`idweave.linkage.link`: what changed since the store's last
run, which pairs must be scored again, and which part of the graph must be re-clustered.

Why the result equals a full run on the same data:

* **Pairs.** A pair of two records that did not change is made by the same rules as before
  unless one of its blocks crossed a block-size cap (``max_block``): a block's size counts
  every record, so new or removed records can switch a block of unchanged records on or off.
  Records in such a *flipped* block, and new and changed ones, are the *dirty* records: every
  pair that touches one is made again with :func:`~idweave.blocking.generate_pairs`
  (``restrict_to``), with block sizes computed on all records. The keys of unchanged records
  are not recomputed: they are read from the store (``_blockkeys.py``), and only for the keys
  the run touches. Every other stored link is reused as it is: same records, same stored
  model (same term frequencies), same score.
* **Clusters.** Clustering (:func:`~idweave.linkage.cluster.cluster`) depends only on the links
  inside each connected component of strong links (at or above the threshold) and must-links.
  A component that holds no dirty record, no neighbour of a removed or re-scored record and no
  record under a human decision has the same records and links as in the last run, so its
  clusters (the stored entities) stand. The components that may not are found from the
  store's ``components`` table (see ``COMPONENTS``), not by following every strong link of
  the graph. Every other component is re-clustered, by replaying
  the last run's trace (the ``joins`` table): a decision between two clusters none of whose
  records has a changed link is the last run's decision, so only the decisions around new,
  changed and re-linked records are made again (the replay's exactness is argued and
  property-tested in cluster.py).
* **Ids.** Old entities lie inside old components, so the re-clustered part holds every record
  of every old entity it touches, and :func:`~idweave.linkage.graph.assign_ids` on that part
  gives the ids a full run would.

A run is incremental only when the store's last run used the same rules, exclusive sources,
block cap, model version, clustering method and code (the *signature*); otherwise it is full.

* **Nothing changed.** A run whose sources are files keeps, in the store's ``meta``, each
  file's size, modification time and sha256 as it read them (:func:`source_files`), with the
  project, the code and the store version it ran on. A later run on the same project whose
  files all have the same size and time (or, when the time moved or is too close to the read to
  be trusted, the same sha256), on a store no run, decision or erasure has changed since, would
  read the same records and decide the same: :func:`unchanged_run` tells, reading no row of the
  sources or the store, and ``link`` then returns the last run's result without running.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Sequence

import polars as pl

from idweave.blocking.rules import Rule
from idweave.linkage.fingerprint import code_fingerprint
from idweave.linkage.graph import Store
from idweave.linkage.project import Project
from idweave.linkage.readers import file_digest, file_stat

if TYPE_CHECKING:
    from idweave.linkage.sources import Reused

# This module is imported by a rerun that finds nothing to do (:func:`unchanged_summary`):
# what only a real run needs (scoring, Splink, clustering) is imported where it is used.

__all__: list[str] = []

def signature(project: Project, rules: Sequence[Rule], exclusive: Sequence[str], max_block: int,
              model_version: str, splink_version: str, method: str, min_average: float) -> str:
    """What must not change between two runs for the second to be incremental."""
    spec = {
        "attributes": {a.name: a.kind for a in project.attributes.values()},
        "rules": [r.to_dict() for r in rules],
        "exclusive": sorted(exclusive),
        "max_block": max_block,
        "model": model_version,
        "splink": splink_version,
        "clustering": [method, min_average],
        "code": code_fingerprint(),  # every module that decides stored state (fingerprint.py)
        "polars": pl.__version__,  # stored block keys are polars hashes
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Delta:
    """The records of this run compared with the store.

    ``records`` holds every record of the run (the sources' records plus the stored records
    that ``mode: append`` sources keep), ordered by (source, record_id) with ``rid`` = row
    number. ``seen`` is True for records read from the sources this run.
    """

    records: pl.DataFrame
    seen: pl.Series
    stored: pl.DataFrame   # record_index() of the store before this run
    new: pl.Series         # rids
    changed: pl.Series     # rids
    removed: pl.DataFrame  # source, record_id, entity_id, rk of stored records that are gone
    prior: pl.DataFrame    # per rid (in rid order): source, record_id and the stored entity_id,
                           # first_seen_run, last_seen_run (null for new records)
    # Loaded reusing stored cleaning: ``records`` then has no attribute columns; ``fresh``
    # holds ``rid`` and the attributes of the rows cleaned this run (new and changed ones
    # among them), and :func:`attributes` reads the others' from the store when needed.
    fresh: pl.DataFrame | None = None
    attribute_schema: dict[str, pl.DataType] | None = None

    @cached_property
    def dirty_rids(self) -> pl.Series:
        """New and changed records: cleaned this run, every pair touching one made again."""
        return pl.concat([self.new, self.changed])

    @cached_property
    def gone_rks(self) -> pl.Series:
        """The rks of stored records whose stored keys, links and joins are stale: changed and
        removed ones."""
        changed = self.records.filter(pl.col("rid").is_in(self.changed.implode()))["rk"]
        return pl.concat([changed.cast(pl.Int64), self.removed["rk"].cast(pl.Int64)]).drop_nulls()


class StaleReuse(Exception):
    """The store changed between reading what loading could reuse and taking the store: the
    run must load again."""


@dataclass
class StoredIndex:
    """Every stored record's key, ``raw_hash``, content hash, entity and first/last seen run
    (``Store.record_index``), read once per run, and the store version it was read at (the
    last run and the last event: every change to records writes one or the other)."""

    frame: pl.DataFrame
    version: tuple[int, int]

    @classmethod
    def read(cls, st: Store) -> "StoredIndex":
        return cls(st.record_index(), cls._version(st))

    @classmethod
    def empty(cls) -> "StoredIndex":
        """Nothing stored (nothing to reuse)."""
        return cls(Store.empty_record_index(), (-1, -1))

    @staticmethod
    def _version(st: Store) -> tuple[int, int]:
        from idweave.linkage._db import fetch_one

        events = fetch_one(st.con, "select coalesce(max(event_id), 0) from events")[0] if st.has_table("events") else 0
        return st.last_run(), int(events)

    def current(self, st: Store) -> bool:
        return self._version(st) == self.version

    def by_source(self, name: str) -> pl.DataFrame:
        """What loading needs to reuse a source's unchanged rows (see ``records_from_frame``)."""
        return self.frame.filter(pl.col("source") == name).select("record_id", "raw_hash", "rk", "content_hash")


def compare(st: Store, project: Project, loaded: "pl.DataFrame | Reused", index: StoredIndex | None = None) -> Delta:
    """Compare the sources' records with the store (by record id and content hash).

    ``loaded`` may be a :class:`~idweave.linkage.sources.Reused` from
    :func:`~idweave.linkage.sources.load_records` with ``stored`` from ``index`` (rows
    reusing stored cleaning have ``_stored_rk``): the records then carry no attributes and
    :func:`attributes` gives them. Raises :class:`StaleReuse` if the store changed since
    ``index`` was read.
    """
    import numpy as np

    from idweave.linkage.sources import Reused

    lazy = isinstance(loaded, Reused)
    if index is None or not index.current(st):
        if lazy and loaded.keys["_stored_rk"].is_not_null().any():
            raise StaleReuse()
        index = StoredIndex.read(st)
    stored = index.frame
    attrs = list(project.attributes)
    fresh_rows, attr_schema = None, None
    if lazy:
        fresh_rows = loaded.fresh.select("source", "record_id", *attrs)
        attr_schema = dict(fresh_rows.select(attrs).schema)
        loaded = loaded.keys
    records = loaded
    append = [s.name for s in project.sources.values() if s.mode == "append"]
    kept_keys = stored.filter(pl.col("source").is_in(append)).select("source", "record_id")
    if kept_keys.height:
        kept_keys = kept_keys.join(loaded.select("source", "record_id"), on=["source", "record_id"], how="anti")
    if lazy:
        # The rows cleaned now, numbered in the order of ``fresh_rows`` (the same order).
        loaded = loaded.with_columns(pl.when(pl.col("_stored_rk").is_null())
                                     .then(pl.col("_stored_rk").is_null().cum_sum().cast(pl.Int64) - 1).alias("_fresh"))
    if kept_keys.height:
        if lazy:  # their attributes stay in the store, like those of reused rows
            kept = stored.join(kept_keys, on=["source", "record_id"]).with_columns(
                pl.col("rk").alias("_stored_rk"), pl.lit(None, pl.Int64).alias("_fresh"))
        else:
            have_cols = set(st.columns("records"))
            cols = ["source", "record_id", *[a for a in attrs if a in have_cols], "content_hash",
                    *(["raw_hash"] if "raw_hash" in have_cols and "raw_hash" in loaded.columns else [])]
            kept = st.records_for(kept_keys, cols)
            for a in attrs:
                if a not in kept.columns:
                    kept = kept.with_columns(pl.lit(None, dtype=loaded.schema[a]).alias(a))
        kept = kept.select(loaded.columns).cast(dict(loaded.schema), strict=False)
        records = pl.concat([loaded.with_columns(pl.lit(True).alias("_seen")),
                             kept.with_columns(pl.lit(False).alias("_seen"))], how="vertical_relaxed")
    else:
        records = loaded.with_columns(pl.lit(True).alias("_seen"))
    # (source, record_id) order, sorted as two single-key sorts (the second stable): the same
    # order as one sort on both keys, in about half the time (a two-key sort of strings encodes
    # rows first: ~1.3 s against ~0.6 s at a million records on this machine).
    records = (records.sort("record_id").sort("source", maintain_order=True)
               .with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64)))
    seen = records["_seen"]
    records = records.drop("_seen")

    # Each record's row in the index: a reused row names its stored record (rk); the others
    # are looked up by (source, record_id). No join over every record.
    n = records.height
    pos = np.full(n, -1, dtype=np.int64)
    if stored.height:
        rks = stored["rk"].to_numpy()
        pos_of = np.full(int(rks.max()) + 1, -1, dtype=np.int64)
        pos_of[rks] = np.arange(stored.height)
        if lazy:
            srk = records["_stored_rk"].fill_null(-1).to_numpy()
            has = srk >= 0
            if has.any() and (srk.max() >= len(pos_of) or (pos_of[srk[has]] < 0).any()):
                raise StaleReuse()  # reused rows this index does not hold: loaded from another
            pos[has] = pos_of[srk[has]]
            same = stored["raw_hash"].gather(pl.Series(pos[has])) == records["raw_hash"].filter(pl.Series(has))
            if not same.fill_null(False).all():
                raise StaleReuse()
        rest = records.filter(pl.Series(pos < 0)).select("rid", "source", "record_id")
        if rest.height:
            found = rest.join(stored.select("source", "record_id").with_row_index("_pos"), on=["source", "record_id"])
            pos[found["rid"].to_numpy()] = found["_pos"].cast(pl.Int64).to_numpy()
    hit = pos >= 0
    cols = stored.select(pl.col("content_hash").alias("_old"), "rk", "entity_id", "first_seen_run", "last_seen_run")
    if stored.height:  # a null index gathers a null: new records have no stored values
        meta = cols.select(pl.all().gather(pl.Series(pos).set(pl.Series(~hit), None)))
    else:
        meta = pl.select(pl.repeat(None, n, dtype=t).alias(c) for c, t in cols.schema.items())
    j = pl.concat([records.select("rid", "source", "record_id", "content_hash"), meta], how="horizontal")
    fresh = None
    if lazy:
        at = records.filter(pl.col("_fresh").is_not_null()).select("rid", "_fresh")  # in rid order
        fresh = pl.concat([at.select("rid"), fresh_rows.select(attrs)[at["_fresh"]]], how="horizontal")
        records = records.drop("_stored_rk", "_fresh")
    # rk: the record's persistent integer key (block_keys refer to it); new records get the
    # next ones, in rid order.
    top = stored["rk"].max() if stored.height else None
    start = (int(top) + 1) if top is not None else 0
    j = j.with_columns(pl.when(pl.col("rk").is_null())
                       .then(pl.col("rk").is_null().cum_sum().cast(pl.Int64) - 1 + start)
                       .otherwise(pl.col("rk")).alias("rk"))
    records = records.with_columns(j["rk"])
    new = j.filter(pl.col("_old").is_null())["rid"]
    changed = j.filter(pl.col("_old").is_not_null() & (pl.col("_old") != pl.col("content_hash")))["rid"]
    matched = np.zeros(stored.height, dtype=bool)
    matched[pos[hit]] = True
    removed = stored.filter(pl.Series(~matched)).select("source", "record_id", "entity_id", "rk")
    prior = j.select("rid", "source", "record_id", "entity_id", "first_seen_run", "last_seen_run")
    return Delta(records=records, seen=seen, stored=stored, new=new, changed=changed, removed=removed, prior=prior,
                 fresh=fresh, attribute_schema=attr_schema)


def attributes(st: Store, delta: Delta, rids: pl.Series | None = None) -> pl.DataFrame:
    """The records ``rids`` (all of them if None) with their attributes, in rid order: the
    rows cleaned this run as they are, the others' stored cleaned values (read by ``rk``)."""
    recs = delta.records if rids is None else delta.records.filter(pl.col("rid").is_in(rids.implode()))
    if delta.fresh is None:
        return recs
    schema = delta.attribute_schema or {}
    attrs = list(schema)
    now = recs.join(delta.fresh, on="rid")
    need = recs.join(delta.fresh.select("rid"), on="rid", how="anti")
    if need.height == 0:
        return now.sort("rid")
    old = st.attributes_of(need["rk"], attrs)
    if old.height != need.height:
        raise RuntimeError(f"{need.height - old.height} record(s) lack stored attributes")  # a bug, not bad input
    old = need.join(old.cast({"rk": pl.Int64, **schema}), on="rk")
    return pl.concat([now, old.select(now.columns)]).sort("rid")


def present_attributes(st: Store, delta: Delta, names: Sequence[str]) -> set[str]:
    """The attributes at least one record of this run has a value for."""
    if delta.fresh is None:
        recs = delta.records
        return {a for a in names if recs[a].null_count() < recs.height}
    have = {a for a in names if delta.fresh[a].null_count() < delta.fresh.height}
    # Only attributes the stored records have a column for (none before the first run; a
    # newly declared attribute has none yet).
    stored_cols = set(st.columns("records"))
    rest = [a for a in names if a not in have and a in stored_cols]
    if rest:
        # Stored rows of records still here: all but the changed and removed ones.
        with st.registered("_gone_rk", pl.DataFrame({"rk": delta.gone_rks})):
            counts = _query(st, "select " + ", ".join(f'count("{a}") as "{a}"' for a in rest) +
                            " from records where rk not in (select rk from _gone_rk)")
        have |= {a for a in rest if counts[a][0]}
    return have


def stored_links(st: Store, records: pl.DataFrame, rule_index: dict[str, int], *, derived: int) -> pl.DataFrame:
    """The stored links between records of this run, light: ``rid_l``, ``rid_r`` (rid_l <
    rid_r), ``rule`` (index; ``derived`` for links no blocking rule made) and
    ``match_probability``. DuckDB maps each end to its ``rk``, numpy the rk to this run's rid."""
    import numpy as np

    schema = {"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32, "match_probability": pl.Float64}
    if not st.has_table("links"):
        return pl.DataFrame(schema=schema)
    # The rule's index by a CASE on its name: a join with a registered frame of the names
    # costs ~0.3 s more at 3.8M links (the strings of every link go through it).
    case = "case l.rule " + " ".join("when ? then ?" for _ in rule_index) + " else ? end" if rule_index else "?"
    params: list[Any] = [v for name, i in rule_index.items() for v in (name, int(i))] + [int(derived)]
    raw = _query(st, f"select cast({case} as integer) as rule, l.match_probability, l.rk_l, l.rk_r from links l",
                 params)
    if raw.height == 0:
        return pl.DataFrame(schema=schema)
    rk = records["rk"].to_numpy()
    rid_of = np.full(int(max(rk.max(), raw["rk_l"].max(), raw["rk_r"].max())) + 1, -1, dtype=np.int64)
    rid_of[rk] = records["rid"].to_numpy()
    a, b = rid_of[raw["rk_l"].to_numpy()], rid_of[raw["rk_r"].to_numpy()]
    if (a > b).any():  # rk_l is written for the record first in rid order; never trust it blindly
        a, b = np.minimum(a, b), np.maximum(a, b)
    out = pl.DataFrame({"rid_l": a, "rid_r": b, "rule": raw["rule"], "match_probability": raw["match_probability"]})
    keep = (a >= 0) & (b >= 0)  # links of records this run no longer holds go
    return (out if keep.all() else out.filter(pl.Series(keep))).cast(schema)


# --------------------------------------------------------------------------------------
# the components of the strong links, kept in the store
# --------------------------------------------------------------------------------------
# ``components`` (rk, component): every stored record's connected component of the last run's
# strong links (at or above its threshold) and must-links, named by the rk of one of its
# records. A run whose threshold is the last run's re-clusters the old components holding a
# record it must re-cluster (a *seed*), read from it, instead of growing the closure of the
# seeds over every strong link of the graph:
#
# * every link of this run's graph either is an old link (a stored link that stands, with its
#   probability: both its ends in one old component) or touches a seed (new and re-scored
#   pairs, links of flipped blocks, must-links of the decisions in force: their ends are
#   seeds), and links only go away around seeds; so the old components of the seeds, with
#   the seeds no old component holds (new records), are a union of this run's components:
#   clustering them gives what a full run gives, and the components they hold are recomputed
#   and written back;
# * that union holds the closure of the seeds over this run's strong links and more only where
#   a component split (links that went away): those records' stored clusters are replayed.
#
# The table is written whole by a run that re-clusters every record (full, or a new
# threshold), and only then: an incremental run on a store without it grows the closure.
COMPONENTS = "components"


def stored_components(st: Store, records: pl.DataFrame, seeds: pl.Series) -> pl.Series | None:
    """The rids (sorted) of the seeds and of every record in the stored component of one:
    the records to re-cluster (see ``COMPONENTS``); None when the store keeps no components.

    >>> import tempfile
    >>> from pathlib import Path
    >>> st = Store.open(Path(tempfile.mkdtemp()) / "s.duckdb")
    >>> recs = pl.DataFrame({"rid": [0, 1, 2, 3, 4], "rk": [10, 11, 12, 13, 20]})
    >>> st.begin(); write_components(st, recs.head(4), pl.DataFrame({"rid": [0, 1, 2, 3], "component": [10, 10, 12, 12]}), replace=True); st.commit()
    >>> stored_components(st, recs, pl.Series([1, 4])).to_list()  # 4 is new: no stored component
    [0, 1, 4]
    """
    import numpy as np

    if not st.has_table(COMPONENTS):
        return None
    rk = records["rk"].to_numpy()
    seed_rks = pl.Series("rk", rk[seeds.cast(pl.Int64).unique().to_numpy()], dtype=pl.Int64)
    got = st.component_rks(seed_rks)
    rid_of = np.full(int(max(rk.max(), got["rk"].max() if got.height else 0)) + 1, -1, dtype=np.int64)
    rid_of[rk] = records["rid"].to_numpy()
    found = rid_of[got["rk"].to_numpy()] if got.height else np.zeros(0, dtype=np.int64)
    out = np.union1d(found[found >= 0], seeds.cast(pl.Int64).to_numpy())
    return pl.Series("rid", out, dtype=pl.Int64)


def component_rows(records: pl.DataFrame, rids: pl.Series, strong: pl.DataFrame) -> pl.DataFrame:
    """``rid`` and ``component`` (the rk of its smallest rid) of the records ``rids`` over the
    links ``strong`` (``rid_l``, ``rid_r``: the strong links and must-links among them)."""
    from idweave.linkage.cluster import components

    comp = components(strong.select("rid_l", "rid_r"), rids)
    return comp.select("rid", records["rk"].gather(comp["cluster"]).cast(pl.Int64).alias("component"))


def write_components(st: Store, records: pl.DataFrame, rows: pl.DataFrame, *, replace: bool,
                     gone: pl.Series | None = None) -> None:
    """Write the components ``rows`` (``rid``, ``component``) of the re-clustered records, in
    the caller's transaction: the whole table (``replace``), or in place of those records'
    and the ``gone`` rks' stored rows (when the store keeps components)."""
    out = rows.select(records["rk"].gather(rows["rid"]).cast(pl.Int64).alias("rk"),
                      pl.col("component").cast(pl.Int64))
    if replace:
        st.replace_table(COMPONENTS, out)
        return
    if not st.has_table(COMPONENTS):
        return
    drop = out["rk"] if gone is None else pl.concat([out["rk"], gone.cast(pl.Int64)])
    st.delete_rks(COMPONENTS, drop)
    st.append(COMPONENTS, out)


def _query(st: Store, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    from idweave.linkage._db import query_pl

    return query_pl(st.con, sql, params)


def summary_counts(delta: Delta) -> dict[str, Any]:
    return {"new_records": int(delta.new.len()), "changed_records": int(delta.changed.len()),
            "removed_records": int(delta.removed.height)}


def removed_neighbours(st: Store, records: pl.DataFrame, removed: pl.DataFrame) -> pl.Series:
    """Rids of this run's records that had a stored link to a removed record (``removed``
    holds its ``rk``)."""
    rks = removed["rk"].drop_nulls()
    if rks.len() == 0 or not st.has_table("links"):
        return pl.Series("rid", [], dtype=pl.Int64)
    with st.registered("_removed", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
        other = _query(st, "select rk_r as rk from links where rk_l in (select rk from _removed) union "
                           "select rk_l from links where rk_r in (select rk from _removed)")
    return records.join(other, on="rk", how="semi")["rid"]


# --------------------------------------------------------------------------------------
# writing a run
# --------------------------------------------------------------------------------------
@dataclass
class RunWrite:
    """Everything :func:`write_run` needs to know about a computed run."""

    mode: str                      # "full" | "incremental"
    records: pl.DataFrame          # all records of the run, with rid
    seen: pl.Series                # read from the sources this run
    delta: Delta
    new_links: list[tuple[str, pl.DataFrame]]  # scored this run, light, with the spill name of their evidence: to insert
    rule_names: dict[int, str]     # rule index -> stored rule name
    rescored: pl.Series            # rids whose stored links are all replaced
    drop_pairs: pl.DataFrame       # rid_l, rid_r of other stored links that go (or are replaced)
    affected: pl.Series            # rids re-clustered
    clusters: pl.DataFrame         # rid, cluster for the affected rids
    n_links_total: int
    n_strong_total: int
    started: Any
    row: dict[str, Any]            # the runs row's other columns
    new_keys: pl.DataFrame | None = None  # block_keys rows: all of them (full) or the dirty records' ones
    components: pl.DataFrame | None = None  # rid, component of the re-clustered records (see COMPONENTS)
    joined: pl.DataFrame | None = None  # the clustering's trace for the affected rids (rid_l, rid_r, p)
    reclustered_all: bool = True
    source_state: dict[str, Any] | None = None  # what unchanged_run checks next time (see record_state)
    spill: Any = None              # the levels and weights of new_links (a _spill.Spill)


# How often an incremental run lets DuckDB compact row groups when it checkpoints (see write_run).
VACUUM_EVERY = 16


def _rks(records: pl.DataFrame, rids: pl.Series) -> pl.Series:
    return records.filter(pl.col("rid").is_in(rids.implode()))["rk"].cast(pl.Int64)


def _keys(records: pl.DataFrame, rids: pl.Series) -> pl.DataFrame:
    return records.filter(pl.col("rid").is_in(rids.implode())).select("source", "record_id")


def _link_table(links: pl.DataFrame, key: pl.DataFrame, names: pl.DataFrame) -> pl.DataFrame:
    """Rows of the store's ``links`` for scored pairs with their evidence: each end by
    ``source``, ``record_id`` and ``rk`` (``key``, one row per rid: gathered when row i is
    rid i, else joined), the rule by name."""
    ends = []
    for side in ("l", "r"):
        rid = links[f"rid_{side}"]
        if key.height and key["rid"][0] == 0 and key["rid"][-1] == key.height - 1:
            end = key.gather(rid)  # rid order: rid i is row i (checked against the rids below)
            if not end["rid"].equals(rid, check_names=False):
                raise RuntimeError("records are not in rid order")
        else:
            end = rid.to_frame("rid").join(key, on="rid", how="left", maintain_order="left")
        ends.append(end.drop("rid").rename({c: f"{c}_{side}" for c in ("source", "record_id", "rk")}))
    rule = (links.select(pl.col("rule").cast(pl.Int32)).join(names, on="rule", how="left", maintain_order="left")
            ["rule_name"].alias("rule"))
    ev = [c for c in links.columns if c.startswith(("level_", "w_"))]
    return pl.concat([ends[0].select("source_l", "record_id_l"), ends[1].select("source_r", "record_id_r"),
                      rule.to_frame(), links.select("match_weight", "match_probability", *ev),
                      ends[0].select("rk_l"), ends[1].select("rk_r")], how="horizontal")


def _write_links(st: Store, records: pl.DataFrame, w: RunWrite, *, replace: bool) -> None:
    """Write the links scored this run, a spilled piece at a time: its light columns (kept in
    memory) beside its levels and weights (read back from the spill), checked to be the same
    pairs in the same order. ``replace``: the links table is replaced (a full run)."""
    key = records.select("rid", "source", "record_id", "rk")
    names = pl.DataFrame({"rule": list(w.rule_names), "rule_name": list(w.rule_names.values())},
                         schema={"rule": pl.Int32, "rule_name": pl.Utf8})
    first = replace
    for name, light in w.new_links:
        done = 0
        for heavy in w.spill.pieces(name):
            part = light.slice(done, heavy.height)
            if part.height != heavy.height or not (part["rid_l"].equals(heavy["rid_l"])
                                                    and part["rid_r"].equals(heavy["rid_r"])):
                raise RuntimeError(f"the spilled pairs of {name} are out of step with the scored ones")
            rows = _link_table(pl.concat([part, heavy.drop("rid_l", "rid_r")], how="horizontal"), key, names)
            if first:
                st.replace_table("links", rows)
                first = False
            else:
                st.append("links", rows)
            done += heavy.height
        if done != light.height:
            raise RuntimeError(f"the spill holds {done} of the {light.height} pairs of {name}")


def write_run(st: Store, project: Project, w: RunWrite, trained: Any, splink_version: str,
              ) -> tuple[pl.DataFrame, dict[int, int], int, int]:
    """Assign persistent ids to the re-clustered records and write the run in one transaction.

    Returns the entities of every record of the run (``source``, ``record_id``,
    ``entity_id``), how many entities have each size (records per entity), the run id and
    the number of events written.
    """
    from idweave.linkage import _blockkeys as bk
    from idweave.linkage.graph import assign_ids, utc_now
    from idweave.linkage.scoring import save_compiled

    records, delta = w.records, w.delta
    full = w.mode == "full"
    run_id = st.last_run() + 1
    before = delta.prior

    # Persistent ids for the re-clustered part.
    aff = before.filter(pl.col("rid").is_in(w.affected.implode()))
    lab = w.clusters.join(aff.select("rid", "source", "record_id", "entity_id"), on="rid")
    # A cluster that is exactly an old entity's records (all of them re-clustered here, as an
    # old entity always is) keeps that id with no event: what assign_ids would decide, but
    # only the clusters that changed need its work.
    same = (lab.group_by("cluster").agg(pl.col("entity_id").n_unique().alias("n"),
                                        pl.col("entity_id").null_count().alias("nulls"),
                                        pl.col("entity_id").first().alias("entity_id"))
            .filter((pl.col("n") == 1) & (pl.col("nulls") == 0))
            .join(lab.group_by("entity_id").agg(pl.col("cluster").n_unique().alias("parts")), on="entity_id")
            .filter(pl.col("parts") == 1).select("cluster"))
    lab = lab.join(same, on="cluster", how="anti")
    clusters = {(s, r): c for s, r, c in lab.select("source", "record_id", "cluster").iter_rows()}
    old_entity_of = {(s, r): e for s, r, e in lab.select("source", "record_id", "entity_id").iter_rows()
                     if e is not None}
    assignment = assign_ids(clusters, old_entity_of, st.entity_ages(set(old_entity_of.values())))
    moved_to = pl.DataFrame({"source": [k[0] for k in assignment.entity_of],
                             "record_id": [k[1] for k in assignment.entity_of],
                             "_new": list(assignment.entity_of.values())},
                            schema={"source": pl.Utf8, "record_id": pl.Utf8, "_new": pl.Utf8}) \
        .join(lab.select("source", "record_id", "rid"), on=["source", "record_id"])
    # ``before`` is in rid order (row i is rid i): the new ids go to their rows by position.
    final = before.with_columns(before["entity_id"].scatter(moved_to["rid"], moved_to["_new"]))
    entities = final.select("source", "record_id", "entity_id")  # rid order: (source, record_id)

    events = []  # after assignment.events (the store writes those, see Store.write_identity)
    for s, r, e in delta.removed.sort("source", "record_id").select("source", "record_id", "entity_id").iter_rows():
        events.append({"type": "record_removed", "entity_id": e, "source": s, "record_id": r})
    changed_keys = _keys(records, delta.changed).join(entities, on=["source", "record_id"])
    for s, r, e in changed_keys.sort("source", "record_id").iter_rows():
        events.append({"type": "record_changed", "entity_id": e, "source": s, "record_id": r})
    # Entities left with no record (and not merged away) retire.
    candidates = set(old_entity_of.values()) | set(delta.removed["entity_id"].drop_nulls().to_list())
    alive = set(entities["entity_id"].filter(entities["entity_id"].is_in(list(candidates))).unique().to_list())
    merged_away = {m for m, _ in assignment.merged}
    retired = sorted(candidates - alive - merged_away)

    attrs = list(project.attributes)
    extra = [c for c in ("raw_hash",) if c in records.columns]
    rows = records
    if not full:  # only new and changed rows are written whole; unseen ones keep their last_seen_run
        rows = records.filter(pl.col("rid").is_in(delta.dirty_rids.implode()) | ~w.seen)
        if not has_attributes(rows, delta):
            # New and changed records were cleaned this run; of unseen ones only the keys are used.
            rows = rows.join(delta.fresh, on="rid", how="left")
    # final and w.seen are in rid order: gathered by rid rather than joined.
    rec_rows = (pl.concat([rows.select("rid", "source", "record_id", *attrs, "content_hash", *extra, "rk"),
                           final.select("entity_id", "first_seen_run", "last_seen_run")[rows["rid"]],
                           w.seen.gather(rows["rid"]).alias("_seen").to_frame()], how="horizontal")
                .with_columns(pl.col("first_seen_run").fill_null(run_id).cast(pl.Int32),
                              pl.when(pl.col("_seen")).then(pl.lit(run_id)).otherwise(pl.col("last_seen_run"))
                              .cast(pl.Int32).alias("last_seen_run")))

    touched = assignment.touched | set(retired) | set(merged_away)
    size_ids = touched | candidates | set(assignment.entity_of.values())
    sizes = dict(entities.filter(pl.col("entity_id").is_in(list(size_ids))).group_by("entity_id").len().iter_rows())
    try:
        st.begin()
        version = w.row.get("model_version") or trained.version  # (a hash of the model: ~0.05 s each time at 1M)
        st.save_model(version, trained.settings, trained.tf_tables, run_id, splink_version)
        save_compiled(st, version, trained.settings, run_id)
        if full:
            st.replace_table("records", rec_rows.drop("rid", "_seen").sort("source", "record_id"))
            _write_links(st, records, w, replace=True)
        else:
            _write_records_delta(st, records, delta, rec_rows, run_id, all_seen=bool(w.seen.all()))
            _write_links_delta(st, records, delta, w)
        if w.joined is not None:
            rk = records.select("rid", "rk")
            rows = (w.joined.join(rk.rename({"rid": "rid_l", "rk": "rk_l"}), on="rid_l")
                    .join(rk.rename({"rid": "rid_r", "rk": "rk_r"}), on="rid_r")
                    .select("rk_l", "rk_r", pl.col("match_probability").cast(pl.Float64)))
            if w.reclustered_all:
                st.replace_table("joins", rows)
            else:
                _write_joins_delta(st, records, w.affected, delta.gone_rks, rows)
        if w.components is not None:
            write_components(st, records, w.components, replace=w.reclustered_all, gone=delta.gone_rks)
        if w.new_keys is not None:
            if full:
                bk.write_all(st, w.new_keys)
            else:
                bk.write_delta(st, delta.gone_rks, w.new_keys)
        # Record moves, the entity rows this run touched and the events: the one write path
        # for identity changes (a decision writes through it too).
        moves = None if full else _moves(records, delta, moved_to.select("rid", "_new"))
        n_events = st.write_identity(assignment, sizes={e: sizes.get(e, 0) for e in size_ids}, run_id=run_id,
                                     moves=moves, retired=retired, events_after=events)
        from idweave.linkage.forget import clear_pending  # this run decided their clusters again
        from idweave.linkage.privacy import record_check  # the check value of the key (never the key)

        clear_pending(st)
        record_check(project, st)
        # Every entity's size is kept in the table (the run wrote those that changed): the
        # sizes of the graph are counted there, not by grouping a million record ids.
        size_counts = st.active_size_counts()
        row = dict(w.row)
        row.update(run_id=run_id, started_at=w.started, finished_at=utc_now(), mode=w.mode,
                   n_records=records.height, n_new=int(delta.new.len()), n_changed=int(delta.changed.len()),
                   n_removed=delta.removed.height, n_pairs=w.n_links_total, n_links=w.n_strong_total,
                   n_entities=sum(size_counts.values()), n_events=n_events)
        st.insert_run(row)
        # What the next run checks to know that nothing changed (written last: the store
        # version it names includes this run's events).
        st.set_meta(SOURCE_STATE, record_state(w.source_state, (run_id, st.next_event_id() - 1),
                                               size_counts))
        # At a checkpoint DuckDB merges a table's small last row groups (vacuum): after a small
        # append to a wide table that rewrites whole row groups (links at 50k records: 0.54 s
        # for 28k new rows, 0.04 s without). Incremental runs leave that to every
        # VACUUM_EVERY-th run; full runs rewrite their tables anyway.
        st.set_vacuum(full or not run_id % VACUUM_EVERY)
        st.commit()
    except BaseException:
        st.rollback()
        raise
    return entities, size_counts, run_id, n_events


def _moves(records: pl.DataFrame, delta: Delta, assigned: pl.DataFrame) -> pl.DataFrame:
    """``rk`` and new ``entity_id`` of the stored records whose entity changed (``assigned``:
    ``rid`` and ``_new`` entity id of the records given ids this run); new records are
    inserted whole instead."""
    # delta.prior and records are in rid order: gather by rid.
    return (assigned.with_columns(delta.prior["entity_id"].gather(assigned["rid"]).alias("_old"),
                                  records["rk"].gather(assigned["rid"]).alias("rk"))
            .filter(pl.col("_new") != pl.col("_old"))  # new records (no _old) were inserted whole
            .select("rk", pl.col("_new").alias("entity_id")))


def _write_records_delta(st: Store, records: pl.DataFrame, delta: Delta, rec_rows: pl.DataFrame,
                         run_id: int, *, all_seen: bool) -> None:
    """Records of an incremental run: drop removed and changed rows, insert new and changed
    ones, mark what the sources held as seen (the records whose entity changed move in
    :meth:`Store.write_identity`)."""
    if delta.gone_rks.len():
        st.delete_records(delta.gone_rks)
    dirty = delta.dirty_rids.implode()
    fresh = rec_rows.filter(pl.col("rid").is_in(dirty))
    st.append("records", fresh.drop("rid", "_seen"))
    if delta.fresh is not None and "raw_hash" in records.columns:
        # Rows cleaned again whose cleaned values did not change: their new raw hash lets the
        # next run reuse them.
        redone = records.join(delta.fresh.select("rid"), on="rid", how="semi") \
            .filter(~pl.col("rid").is_in(dirty)).select("rk", "raw_hash")
        if redone.height:
            st.set_raw_hashes(redone)
    st.mark_seen(run_id, None if all_seen else rec_rows.filter(~pl.col("_seen")).select("rk"))


def _write_joins_delta(st: Store, records: pl.DataFrame, affected: pl.Series, gone: pl.Series,
                       rows: pl.DataFrame) -> None:
    """The trace of the re-clustered part replaces its stored joins (and those of gone records)."""
    rks = pl.concat([records.filter(pl.col("rid").is_in(affected.implode()))["rk"].cast(pl.Int64),
                     gone.cast(pl.Int64)]).unique()
    st.delete_touching("joins", rks)
    st.append("joins", rows)


def stored_joins(st: Store, records: pl.DataFrame, rids: pl.Series) -> pl.DataFrame:
    """The last clustering's joins among ``rids`` (``rid_l``, ``rid_r``, ``match_probability``)."""
    from idweave.linkage._db import query_pl

    rk = records.filter(pl.col("rid").is_in(rids.implode())).select("rid", "rk")
    with st.registered("_rks", rk.select("rk")):
        raw = query_pl(st.con, "select rk_l, rk_r, match_probability from joins "
                               "where rk_l in (select rk from _rks) and rk_r in (select rk from _rks)")
    schema = {"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64}
    if raw.height == 0:
        return pl.DataFrame(schema=schema)
    return (raw.join(rk.rename({"rid": "rid_l", "rk": "rk_l"}), on="rk_l")
            .join(rk.rename({"rid": "rid_r", "rk": "rk_r"}), on="rk_r")
            .select(pl.min_horizontal("rid_l", "rid_r").alias("rid_l"), pl.max_horizontal("rid_l", "rid_r").alias("rid_r"),
                    pl.col("match_probability").cast(pl.Float64)))


def _write_links_delta(st: Store, records: pl.DataFrame, delta: Delta, w: RunWrite) -> None:
    """Links of an incremental run: drop every stored link of a re-scored or removed record
    (and the derived links of re-clustered records), insert the links scored this run."""
    drop = pl.concat([delta.gone_rks, _rks(records, w.rescored)]).unique()
    if drop.len():
        st.delete_touching("links", drop)
    if w.drop_pairs.height:
        rk = records.select("rid", "rk")
        pairs = (w.drop_pairs.unique()
                 .join(rk.rename({"rid": "rid_l", "rk": "a"}), on="rid_l")
                 .join(rk.rename({"rid": "rid_r", "rk": "b"}), on="rid_r")
                 .select("a", "b"))
        # A stored link's rk_l is its record first in (source, record_id) order, as rid_l is.
        st.delete_link_pairs(pairs)
    _write_links(st, records, w, replace=False)


def canonical_scores(scored: pl.DataFrame, prior: float) -> pl.DataFrame:
    """Recompute ``match_weight`` and ``match_probability`` from the per-comparison weights
    (``w_*``) in a fixed order.

    DuckDB may add up Splink's match-weight terms in a different order from one query to the
    next (its optimiser folds what column statistics show to be constant), so the same pair
    can score one unit in the last place apart in two runs. Ties in match probability decide
    the order in which clustering takes edges, so an incremental run and a full run must see
    bit-identical scores: these do not depend on the batch a pair was scored in.
    """
    import math
    from functools import reduce

    ws = [c for c in scored.columns if c.startswith("w_")]
    mw = reduce(lambda acc, c: acc + pl.col(c).fill_null(0.0), ws, pl.lit(math.log2(prior / (1 - prior))))
    two = pl.lit(2.0)
    prob = (pl.when(pl.col("match_weight") >= 0)
            .then(1.0 / (1.0 + two.pow(-pl.col("match_weight"))))
            .otherwise(two.pow(pl.col("match_weight")) / (1.0 + two.pow(pl.col("match_weight")))))
    return scored.with_columns(mw.alias("match_weight")).with_columns(prob.alias("match_probability"))


# Scoring in pieces (see score_chunks): at least this many pairs a piece, and about this many
# pieces, so that a progress display moves and a piece's DuckDB query stays small.
CHUNK_PAIRS = 500_000
CHUNKS = 20


def score_chunks(records: pl.DataFrame, pairs: pl.DataFrame, trained: Any, *, engine: Any = "duckdb",
                 count: Any = None, chunk: int | None = None, keep: Any = None) -> pl.DataFrame:
    """:func:`~idweave.linkage.scoring.score_pairs` of ``pairs`` (``rid_l``, ``rid_r``,
    ``rule``) against ``records`` (with ``rid`` and the attributes), in pieces of about
    ``chunk`` pairs: each piece is a range of ``rid_l`` scored with only its own records, the
    pieces in ``rid_l`` order, so the result is the one query's, rows and order (a pair's
    score depends on the pair and the model only; :func:`canonical_scores` makes it bit for
    bit). ``count(done, total)`` is called after each piece. Engines other than DuckDB score
    in one piece (a Splink linker per piece would cost more than it shows).

    ``keep(piece)``, if given, is called with each scored piece and returns what of it to
    keep (a run keeps the light columns and spills the rest: :mod:`idweave.linkage._spill`),
    so that no more than one piece's levels and weights are in memory at once.

    >>> from idweave.linkage.project import load_project
    >>> from idweave.linkage.sources import load_records
    >>> from idweave.linkage.training import train
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> recs = load_records(p).sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    >>> m = train(recs, p)
    >>> pairs = pl.DataFrame({"rid_l": [0, 0, 1, 5], "rid_r": [2, 1, 3, 9], "rule": [3, 3, 3, 3]})
    >>> seen = []
    >>> pieces = score_chunks(recs, pairs, m, chunk=2, count=lambda done, total: seen.append((done, total)))
    >>> whole = score_chunks(recs, pairs, m)
    >>> canonical_scores(pieces, m.prior).equals(canonical_scores(whole, m.prior)), seen
    (True, [(2, 4), (4, 4)])
    """
    import numpy as np
    from idweave.linkage.scoring import score_pairs

    total = pairs.height
    size = chunk or max(CHUNK_PAIRS, -(-total // CHUNKS))
    name = getattr(engine, "name", engine)
    if keep is None:
        keep = _whole
    if total <= size or name != "duckdb":
        out = keep(score_pairs(records, pairs, trained, engine=engine))
        if count is not None:
            count(total, total)
        return out
    rid_l = pairs["rid_l"].to_numpy()
    cum = np.cumsum(np.bincount(rid_l))  # pairs with rid_l <= r
    # Piece i holds the pairs with bounds[i] <= rid_l < bounds[i + 1] (a rid_l is never split).
    bounds = np.unique(np.searchsorted(cum, np.arange(size, total, size), side="left") + 1)
    piece = pl.Series(np.searchsorted(bounds, rid_l, side="right"))
    rec_rid = records["rid"].to_numpy()
    wanted = np.zeros(int(max(rec_rid.max(), pairs["rid_r"].max(), rid_l.max())) + 1, dtype=bool)
    parts, done = [], 0
    for i in range(len(bounds) + 1):
        part = pairs.filter(piece == i)
        if part.height == 0:
            continue
        wanted[:] = False
        wanted[part["rid_l"].to_numpy()] = True
        wanted[part["rid_r"].to_numpy()] = True
        parts.append(keep(score_pairs(records.filter(pl.Series(wanted[rec_rid])), part, trained, engine=engine)))
        done += part.height
        if count is not None:
            count(done, total)
    return pl.concat(parts)


def _whole(piece: pl.DataFrame) -> pl.DataFrame:
    return piece


def records_of(records: pl.DataFrame, pairs: pl.DataFrame, st: Store | None = None,
               delta: Delta | None = None) -> pl.DataFrame:
    """The records a set of pairs names, with their attributes (all of them when the pairs
    touch most records): scoring reads every record it is given, so a few pairs should not
    pay for a million. ``records`` without attributes (an incremental run's): they come from
    :func:`attributes` (``st``, ``delta``)."""
    ids = pl.concat([pairs["rid_l"], pairs["rid_r"]]).unique()
    if delta is not None and not has_attributes(records, delta):
        return attributes(st, delta, ids)  # type: ignore[arg-type]
    return records.filter(pl.col("rid").is_in(ids.implode())) if ids.len() < records.height // 2 else records


def has_attributes(records: pl.DataFrame, delta: Delta) -> bool:
    """Does ``records`` carry the attributes (a full run's), or only keys (an incremental
    run's, whose attributes :func:`attributes` gives)?"""
    return delta.fresh is None or all(a in records.columns for a in (delta.attribute_schema or {}))


# --------------------------------------------------------------------------------------
# the sources' files: a rerun on files that did not change does nothing
# --------------------------------------------------------------------------------------
# The ``meta`` key of the last run's source files, project, code and store version.
SOURCE_STATE = "source_files"
# A file modified this close to the moment its state was taken may change again within the
# same modification time (file systems keep times in coarse steps): its bytes are compared.
RACY_NS = 2_000_000_000


@dataclass
class SourceFiles:
    """Every file of every source of a run, as the run found it before reading: ``files``
    maps a source to ``[path, size, mtime_ns, sha256]`` per file; ``checked_ns`` is when."""

    files: dict[str, list[list[Any]]] = field(default_factory=dict)
    checked_ns: int = 0


def source_files(project: Project) -> SourceFiles | None:
    """The state of the project's source files (None when a source is an in-memory frame: a
    frame has no file to check, so such a run is never skipped).

    >>> from idweave.linkage.project import load_project
    >>> sf = source_files(load_project("fixtures/tiny/project.yaml"))
    >>> sorted(sf.files), len(sf.files["census"][0][3])
    (['benefits', 'census', 'tax'], 64)
    """
    if any(src.frame is not None or not src.files for src in project.sources.values()):
        return None
    now = time.time_ns()
    out = {}
    for name, src in project.sources.items():
        rows = []
        for f in src.files:
            size, mtime = file_stat(f)
            rows.append([str(f.resolve()), size, mtime, file_digest(f)])
        out[name] = rows
    return SourceFiles(out, now)


def still_as_found(sf: SourceFiles | None) -> SourceFiles | None:
    """``sf`` if every file still has the size and time it had (the run read what ``sf``
    describes), else None (the run's state is then not recorded: the next run checks rows)."""
    if sf is None:
        return None
    for rows in sf.files.values():
        for path, size, mtime, _digest in rows:
            try:
                if file_stat(path) != (size, mtime):
                    return None
            except OSError:
                return None
    return sf


def unchanged_key(project: Project, threshold: float | None) -> str:
    """What else must be as it was for a run to change nothing: the project's settings, the
    code that decides stored state (fingerprint.py) and the threshold the caller gave."""
    from idweave.linkage.fingerprint import code_fingerprint

    spec = [project.config_hash(), code_fingerprint(), threshold]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:16]


def record_state(state: dict[str, Any] | None, version: tuple[int, int],
                 size_counts: dict[int, int]) -> str | None:
    """The ``meta`` value a run leaves for :func:`unchanged_run` (None for a run that read a
    frame or a file that changed while it read)."""
    if state is None:
        return None
    result = dict(state["result"], entities=sum(size_counts.values()),
                  entity_sizes={str(k): v for k, v in size_counts.items()})
    return json.dumps({**state, "version": list(version), "result": result}, default=str)


def unchanged_run(st: Store, project: Project, threshold: float | None) -> dict[str, Any] | None:
    """The last run's recorded state if running now would change nothing, else None.

    Nothing changes when the store is as that run left it (no run, decision or erasure
    since: the last run id and event id are those it recorded), the project, the code and
    the given threshold are the same, and every source has the same files, each of the same
    size and modification time, or of the same sha256 (a file rewritten with the same bytes,
    or modified within ``RACY_NS`` of when its state was taken). No row is read.
    """
    raw = st.meta_value(SOURCE_STATE)
    if raw is None:
        return None
    state = json.loads(raw)
    if state.get("key") != unchanged_key(project, threshold):
        return None
    if tuple(state["version"]) != StoredIndex._version(st):
        return None
    files = state["files"]
    if set(files) != set(project.sources):
        return None
    for name, src in project.sources.items():
        if src.frame is not None or [r[0] for r in files[name]] != [str(f.resolve()) for f in src.files]:
            return None
        for (path, size, mtime, digest), f in zip(files[name], src.files):
            try:
                now_size, now_mtime = file_stat(f)
                if now_size != size:
                    return None
                if now_mtime == mtime and mtime < state["checked_ns"] - RACY_NS:
                    continue
                if file_digest(f) != digest:
                    return None
            except OSError:
                return None
    return state


def unchanged_summary(project: Project, threshold: float | None) -> dict[str, Any] | None:
    """The summary of the store's last run, if running ``project`` now would change nothing
    (:func:`unchanged_run`), else None. Reads no row of the sources or the store, writes
    nothing, and imports none of scoring, Splink or clustering: ``idweave link`` asks this
    before it imports the pipeline, so a rerun that has nothing to do starts and ends quickly.
    A missing or wrong pseudonymisation key raises as the run would.

    >>> from idweave.linkage import link
    >>> from idweave.linkage.project import load_project
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> link(p).run_id == unchanged_summary(p, None)["run_id"]  # the files did not change since
    True
    """
    from idweave.linkage.errors import IdweaveError
    from idweave.linkage.privacy import check_store, pseudonymiser

    t0 = time.perf_counter()
    if not project.store.exists() or not project.model_file.exists():
        return None  # the run makes them
    pseudonymiser(project)  # a missing key stops the run, as the run itself would
    try:
        st = Store.open(project.store, read_only=True)
    except IdweaveError:
        return None  # busy or not a store: the run itself says so
    with st:
        check_store(project, st)  # a wrong key stops the run, as the run itself would
        state = unchanged_run(st, project, threshold)
    if state is None:
        return None
    run_id = int(state["version"][0])
    return {"run_id": run_id, "mode": "unchanged",
            "mode_reason": f"the sources' files, the project, the code and the store are as run {run_id} "
                           "left them: nothing to do",
            **state["result"],
            "new_records": 0, "changed_records": 0, "removed_records": 0, "scored_pairs": 0,
            "rescored_records": 0, "flipped_block_records": 0, "reclustered_records": 0, "retrained": False,
            "training_log": ["reused the stored model"], "events": 0,
            "timings": {"check": round(time.perf_counter() - t0, 3)}}
