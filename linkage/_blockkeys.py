"""Stored blocking keys: what lets an incremental run block new records without recomputing
the keys of every stored record.

A full run computes every rule's key values for every record (:func:`full_pairs`, hashed to
64 bits; :func:`all_keys` in polars), makes its pairs from them in a DuckDB that spills to disk, and keeps them in the store's ``block_keys`` table (``rule``, ``side``, ``h``,
``rk``: rule index, 0 for a rule's left side and 1 for the right side of an asymmetric
rule, key hash, and the record's persistent integer key ``records.rk``). Full runs block on
the same hashes, so both kinds of run find exactly the same pairs.

An incremental run computes keys only for its new and changed records and reads from the
store just the holders of the keys it touches (:func:`plan_pairs`): the block sizes before
and after the run, the blocks that crossed their size cap, and the complete key frames
:func:`~idweave.blocking.pairs.pairs_from_keys` needs for the pairs of those records (the
pairs :func:`~idweave.blocking.pairs.generate_pairs` would make). A block that stays above
its cap whatever the run adds makes no pair and flips nothing: its holders are dropped as
soon as they are counted. All rules are handled together, so the cost follows the dirty
records, not the number of rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import polars as pl

from idweave.blocking.pairs import DEFAULT_MAX_BLOCK, key_parts, key_table, load_keys, pairs_db, pairs_from_keys, sql_pairs
from idweave.blocking.rules import Rule
from idweave.linkage._db import query_pl
from idweave.linkage.graph import Store

__all__: list[str] = []

# Any fixed seed: the hashes are stored, so it must never change (a polars upgrade that
# changes its hash makes every run full: the signature holds the polars version).
_SEED = 0x1D3E4A7E
_KEY_SCHEMA = {"rid": pl.Int64, "source": pl.Utf8, "key": pl.UInt64}
_ROW_SCHEMA = {"rule": pl.Int16, "side": pl.UInt8, "h": pl.UInt64, "rk": pl.Int64}  # a block_keys row


def all_keys(records: pl.DataFrame, rules: Sequence[Rule]
             ) -> tuple[list[tuple[pl.DataFrame, pl.DataFrame]], pl.DataFrame]:
    """Every rule's key frames (``rid``, ``source``, ``key`` hashed to UInt64, for
    :func:`~idweave.blocking.pairs.generate_pairs`) and their ``block_keys`` rows, from one
    :func:`~idweave.blocking.pairs.key_table` (each distinct key value computed once): a
    full run's keys.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", "ann"], "rk": [7, 9]})
    >>> keys, rows = all_keys(recs, [Rule((Key("fn", "fn"),))])
    >>> keys[0][0]["rid"].to_list(), rows["rk"].to_list(), rows["h"].n_unique()
    ([0, 1], [7, 9], 1)
    """
    table = key_table(records, rules, seed=_SEED).with_columns(pl.col("rid").cast(pl.Int64))
    parts = table.partition_by("rule", "side", as_dict=True)
    empty = pl.DataFrame(schema=_KEY_SCHEMA)
    keys = []
    for i, rule in enumerate(rules):
        left = parts.get((i, 0), empty).select("rid", "source", "key").sort("rid")
        keys.append((left, left if rule.symmetric else parts.get((i, 1), empty).select("rid", "source", "key").sort("rid")))
    return keys, _rows(table, records)


def full_pairs(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
               exclusive: Sequence[str] = (), memory_limit: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A full run's candidate pairs and its ``block_keys`` rows: :func:`all_keys` and
    :func:`~idweave.blocking.pairs.generate_pairs` on them, the same frames, but with the keys
    moved rule by rule into a :func:`~idweave.blocking.pairs.pairs_db` (a DuckDB with a memory
    limit that spills to disk) and paired there (:func:`~idweave.blocking.pairs.sql_pairs`):
    Python holds the pairs and the rows, not the joins.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", "ann"], "rk": [7, 9]})
    >>> pairs, rows = full_pairs(recs, [Rule((Key("fn", "fn"),))])
    >>> pairs.rows(), rows["rk"].to_list(), rows["h"].n_unique()
    ([(0, 1, 0)], [7, 9], 1)
    """
    with pairs_db(memory_limit) as con:
        load_keys(con, key_parts(records, rules, seed=_SEED), exclusive=exclusive)
        con.register("_rk", records.select(pl.col("rid").cast(pl.Int64), pl.col("rk").cast(pl.Int64)).to_arrow())
        rows = query_pl(con, "select k.rule, k.side, k.key as h, i.rk from pair_keys k join _rk i using (rid) "
                             "order by k.rule, k.key, i.rk, k.side")
        con.unregister("_rk")
        rows = rows.cast(_ROW_SCHEMA) if rows.width else pl.DataFrame(schema=_ROW_SCHEMA)
        pairs = sql_pairs(con, rules, max_block=max_block)
    return pairs, rows


def _rows(table: pl.DataFrame, rk_of: pl.DataFrame) -> pl.DataFrame:
    """``block_keys`` rows of hashed keys (``rule``, ``side``, ``rid``, ``key``, as
    :func:`~idweave.blocking.pairs.key_table` makes them)."""
    return (table.select("rule", "side", pl.col("rid").cast(pl.Int64), pl.col("key").alias("h"))
            .join(rk_of.select(pl.col("rid").cast(pl.Int64), "rk"), on="rid")
            .select("rule", "side", "h", "rk").sort("rule", "h"))


def write_all(st: Store, rows: pl.DataFrame) -> None:
    """Replace the stored keys (a full run; inside the caller's transaction)."""
    st.replace_table("block_keys", rows)


def write_delta(st: Store, gone_rks: pl.Series, rows: pl.DataFrame) -> None:
    """Drop the keys of removed and changed records, add those of new and changed ones."""
    if gone_rks.len():
        st.delete_block_keys(gone_rks)
    st.append("block_keys", rows)


def _holders(st: Store, keys: pl.DataFrame, rks: pl.Series, skip: pl.DataFrame) -> pl.DataFrame:
    """Stored rows whose key hash is one of a key (``rule``, ``h``) of ``keys`` or of the
    stored records ``rks``, leaving out the keys of ``skip``: a superset of the holders of
    those keys (a hash may stand for a key of another rule too), for the caller to narrow
    on (``rule``, ``h``) (:meth:`~idweave.linkage.graph.Store.block_key_holders`)."""
    out = st.block_key_holders(keys.select("rule", "h").unique(), pl.DataFrame({"rk": rks.cast(pl.Int64)}).unique(),
                               skip)
    return out.cast(_ROW_SCHEMA) if out is not None and out.height else pl.DataFrame(schema=_ROW_SCHEMA)


def _split_big(rows: pl.DataFrame, gone: pl.DataFrame, caps: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``rows`` (every stored holder of their keys) without the keys held by more than their
    rule's cap (``caps``: ``rule``, ``cap``) of records not in ``gone`` (``rk``); and those
    keys (``rule``, ``h``). Such a block stays above its cap whatever the dirty records add
    to it, so it makes no pair and flips no block: its holders are not needed."""
    kept = rows.join(gone, on="rk", how="anti") if gone.height else rows
    big = (kept.select("rule", "h", "rk").unique().group_by("rule", "h").len().join(caps, on="rule")
           .filter(pl.col("len") > pl.col("cap")).select("rule", "h"))
    return rows.join(big, on=["rule", "h"], how="anti"), big


@dataclass
class PairPlan:
    """Which pairs an incremental run must make again (see ``_incremental.py``)."""

    pairs: pl.DataFrame        # rid_l, rid_r, rule: to score
    dirty: pl.Series           # new and changed records: every pair touching one is remade
    flip_pairs: pl.DataFrame   # rid_l, rid_r: pairs inside a block that crossed its cap
    flipped_members: int       # records holding such a block's key
    new_keys: pl.DataFrame     # block_keys rows of the dirty records


def plan_pairs(st: Store, records: pl.DataFrame, cur: pl.DataFrame, gone_rks: pl.Series, rules: Sequence[Rule], *,
               max_block: int, exclusive: Sequence[str]) -> PairPlan:
    """The pairs of new and changed records (``cur``: ``rid``, ``source`` and the attributes
    of the dirty records), and of blocks that crossed their cap.

    ``records`` holds ``rid``, ``source``, ``rk`` of every record of the run; ``gone_rks``
    are the stored records whose keys are stale (removed or changed). A block's size counts
    every record holding its key, so a record arriving or leaving can switch a block of
    unchanged records on or off (``max_block``): only the pairs inside such a block change
    for unchanged records.

    Every rule is handled at once, in frames keyed by (``rule``, ``side``, ``h``): the cost
    follows the number of dirty records and the blocks they touch, not the number of rules.
    The pairs are :func:`~idweave.blocking.pairs.generate_pairs` restricted to the dirty
    records, on the keys as they stand after the run (``pairs_from_keys``).
    """
    dirty = cur["rid"].cast(pl.Int64).unique().sort()
    idx = records.select(pl.col("rid").cast(pl.Int64), "source", "rk")
    new_keys = _rows(key_table(cur, rules, seed=_SEED), idx)
    gone = pl.DataFrame({"rk": gone_rks.cast(pl.Int64)}).unique()
    caps = pl.DataFrame({"rule": list(range(len(rules))),
                         "cap": [r.max_block if r.max_block is not None else max_block for r in rules]},
                        schema={"rule": pl.Int16, "cap": pl.Int64})
    no_keys = pl.DataFrame(schema={"rule": pl.Int16, "h": pl.UInt64})
    rows = _holders(st, new_keys, gone["rk"], no_keys)
    touched = pl.concat([new_keys.select("rule", "h"), rows.join(gone, on="rk", how="semi").select("rule", "h")]) \
        .unique()
    # Keys held by more than their cap of unchanged records are above it before and after
    # the run: no pairs, no flip, and their holders are left out.
    stored, big = _split_big(rows.join(touched, on=["rule", "h"], how="semi"), gone, caps)

    def kept(stored_rows: pl.DataFrame) -> pl.DataFrame:
        """Stored rows of records still here and unchanged, with rid and source."""
        return stored_rows.join(gone, on="rk", how="anti").join(idx, on="rk")

    # The rows as they stand after this run: those kept and the dirty records' fresh rows.
    now = pl.concat([kept(stored), new_keys.join(big, on=["rule", "h"], how="anti").join(idx, on="rk")])

    # Block sizes (distinct records per rule and key, either side) before and after the run.
    def sizes(rows: pl.DataFrame, name: str) -> pl.DataFrame:
        return rows.select("rule", "h", "rk").unique().group_by("rule", "h").len(name=name)

    flipped = (touched.join(big, on=["rule", "h"], how="anti")
               .join(sizes(stored, "before"), on=["rule", "h"], how="left")
               .join(sizes(now, "after"), on=["rule", "h"], how="left").fill_null(0).join(caps, on="rule")
               .filter((pl.col("after") > pl.col("cap")) != (pl.col("before") > pl.col("cap")))
               .select("rule", "h"))
    m = now.join(flipped, on=["rule", "h"], how="semi").select("rule", "h", "rid").unique()
    flip_members = m["rid"].unique().sort()
    flip_pairs = (m.join(m, on=["rule", "h"], suffix="_r").filter(pl.col("rid") < pl.col("rid_r"))
                  .select(pl.col("rid").alias("rid_l"), "rid_r").unique().sort("rid_l", "rid_r"))
    restrict = pl.concat([dirty, flip_members]).unique().sort()
    if flip_members.len():
        # The flipped blocks' members pair again under every rule: their other keys' holders too.
        member_rks = idx.filter(pl.col("rid").is_in(flip_members.implode())).select("rk")
        rows = _holders(st, no_keys, member_rks["rk"], touched)
        extra = rows.join(member_rks, on="rk", how="semi").join(gone, on="rk", how="anti").select("rule", "h") \
            .join(touched, on=["rule", "h"], how="anti").unique()
        now = pl.concat([now, kept(_split_big(rows.join(extra, on=["rule", "h"], how="semi"), gone, caps)[0])])
    if restrict.len() == 0:
        pairs = pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    else:
        keys = now.select("rule", "side", "rid", "source", pl.col("h").alias("key"))
        pairs = pairs_from_keys(keys, rules, max_block=max_block, exclusive=exclusive, restrict_to=restrict)
        if flip_pairs.height:
            touches = pl.col("rid_l").is_in(dirty.implode()) | pl.col("rid_r").is_in(dirty.implode())
            pairs = pl.concat([pairs.filter(touches), pairs.join(flip_pairs, on=["rid_l", "rid_r"], how="semi")]) \
                .unique().sort("rid_l", "rid_r")
    return PairPlan(pairs=pairs, dirty=dirty, flip_pairs=flip_pairs, flipped_members=int(flip_members.len()),
                    new_keys=new_keys)
