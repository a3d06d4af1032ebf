"""Stored blocking keys: what lets an incremental run block new records without recomputing
the keys of every stored record.

A full run computes every rule's key values for every record (:func:`rule_keys`, hashed to
64 bits) and keeps them in the store's ``block_keys`` table (``rule``, ``side``, ``h``,
``rk``: rule index, 0 for a rule's left side and 1 for the right side of an asymmetric
rule, key hash, and the record's persistent integer key ``records.rk``). Full runs block on
the same hashes, so both kinds of run find exactly the same pairs.

An incremental run computes keys only for its new and changed records and reads from the
store just the holders of the keys it touches (:func:`plan_pairs`): the block sizes before
and after the run, the blocks that crossed their size cap, and the complete key frames
:func:`~idweave.blocking.pairs.generate_pairs` needs for the pairs of those records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import polars as pl

from idweave.blocking.pairs import generate_pairs, rule_keys
from idweave.blocking.rules import Rule
from idweave.linkage.graph import Store

__all__: list[str] = []

# Any fixed seed: the hashes are stored, so it must never change (a polars upgrade that
# changes its hash makes every run full: the signature holds the polars version).
_SEED = 0x1D3E4A7E
_KEY_SCHEMA = {"rid": pl.Int64, "source": pl.Utf8, "key": pl.UInt64}
_ROW_SCHEMA = {"rule": pl.Int16, "side": pl.UInt8, "h": pl.UInt64, "rk": pl.Int64}  # a block_keys row


def hashed_keys(records: pl.DataFrame, rule: Rule) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`~idweave.blocking.pairs.rule_keys` with each key hashed (``rid``, ``source``,
    ``key`` as UInt64); the same frame twice for a symmetric rule."""
    left, right = rule_keys(records, rule)
    lh = left.select(pl.col("rid").cast(pl.Int64), "source", pl.col("key").hash(seed=_SEED))
    return lh, (lh if rule.symmetric else
                right.select(pl.col("rid").cast(pl.Int64), "source", pl.col("key").hash(seed=_SEED)))


def key_rows(keys: Sequence[tuple[pl.DataFrame, pl.DataFrame]], rules: Sequence[Rule],
             rk_of: pl.DataFrame) -> pl.DataFrame:
    """The ``block_keys`` rows of key frames (``rk_of``: ``rid`` -> ``rk``)."""
    parts = []
    for i, (rule, (left, right)) in enumerate(zip(rules, keys)):
        sides = [(0, left)] if rule.symmetric else [(0, left), (1, right)]
        for side, frame in sides:
            parts.append(frame.select("rid", pl.col("key").alias("h"))
                         .with_columns(pl.lit(i, pl.Int16).alias("rule"), pl.lit(side, pl.UInt8).alias("side")))
    if not parts:
        return pl.DataFrame(schema=_ROW_SCHEMA)
    return (pl.concat(parts).join(rk_of.select("rid", "rk"), on="rid")
            .select("rule", "side", "h", "rk").sort("rule", "h"))


def write_all(st: Store, rows: pl.DataFrame) -> None:
    """Replace the stored keys (a full run; inside the caller's transaction)."""
    st.replace_table("block_keys", rows)


def write_delta(st: Store, gone_rks: pl.Series, rows: pl.DataFrame) -> None:
    """Drop the keys of removed and changed records, add those of new and changed ones."""
    if gone_rks.len():
        with st.registered("_gone_rk", pl.DataFrame({"rk": gone_rks.cast(pl.Int64)})):
            st.con.execute("delete from block_keys where rk in (select rk from _gone_rk)")
    st.append("block_keys", rows)


def _stored(st: Store, on: str, want: pl.DataFrame) -> pl.DataFrame:
    """The stored rows matching a row of ``want`` on the condition ``on`` (none if it is empty)."""
    from idweave.linkage._db import query_pl

    if want.height == 0:
        return pl.DataFrame(schema=_ROW_SCHEMA)
    with st.registered("_want", want.unique()):
        out = query_pl(st.con, f"select b.rule, b.side, b.h, b.rk from block_keys b semi join _want w on {on}")
    return out.cast(_ROW_SCHEMA) if out.height else pl.DataFrame(schema=_ROW_SCHEMA)


def _by_keys(st: Store, keys: pl.DataFrame) -> pl.DataFrame:
    """Stored rows holding any of ``keys`` (``rule``, ``h``) on either side."""
    return _stored(st, "b.rule = w.rule and b.h = w.h", keys)


def _by_records(st: Store, rks: pl.Series) -> pl.DataFrame:
    """Stored rows of the records ``rks``."""
    return _stored(st, "b.rk = w.rk", pl.DataFrame({"rk": rks.cast(pl.Int64)}))


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
    """
    dirty = cur["rid"].cast(pl.Int64).unique().sort()
    idx = records.select("rid", "source", "rk")
    fresh = [hashed_keys(cur, rule) for rule in rules]
    new_keys = key_rows(fresh, rules, idx)
    gone = pl.DataFrame({"rk": gone_rks.cast(pl.Int64)}).unique()
    old_rows = _by_records(st, gone["rk"])
    touched = pl.concat([new_keys.select("rule", "h"), old_rows.select("rule", "h")]).unique()
    stored = _by_keys(st, touched)

    def now_rows(stored_rows: pl.DataFrame) -> pl.DataFrame:
        """The rows as they stand after this run: stored rows of records still here and
        unchanged, plus the dirty records' fresh rows, with rid and source."""
        kept = stored_rows.join(gone, on="rk", how="anti")
        return pl.concat([kept, new_keys]).unique().join(idx, on="rk")

    now = now_rows(stored)
    flips, members = [], []
    for i, rule in enumerate(rules):
        cap = rule.max_block if rule.max_block is not None else max_block
        before = stored.filter(pl.col("rule") == i).select("h", "rk").unique().group_by("h").len()
        after = now.filter(pl.col("rule") == i).select("h", "rk").unique().group_by("h").len()
        sizes = (touched.filter(pl.col("rule") == i).select("h")
                 .join(before.rename({"len": "before"}), on="h", how="left")
                 .join(after.rename({"len": "after"}), on="h", how="left").fill_null(0))
        flipped = sizes.filter((pl.col("after") > cap) != (pl.col("before") > cap)).select("h")
        if flipped.height:
            m = now.filter(pl.col("rule") == i).join(flipped, on="h", how="semi").select("h", "rid").unique()
            members.append(m["rid"])
            flips.append(m.join(m, on="h", suffix="_r").filter(pl.col("rid") < pl.col("rid_r"))
                         .select(pl.col("rid").alias("rid_l"), "rid_r"))
    flip_members = pl.concat(members).unique() if members else dirty.clear()
    flip_pairs = (pl.concat(flips).unique() if flips
                  else pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64}))
    restrict = pl.concat([dirty, flip_members]).unique().sort()
    if flip_members.len():
        # The flipped blocks' members pair again under every rule: their other keys' holders too.
        member_rks = idx.filter(pl.col("rid").is_in(flip_members.implode()))["rk"]
        extra = _by_records(st, member_rks).join(gone, on="rk", how="anti").select("rule", "h") \
            .join(touched, on=["rule", "h"], how="anti").unique()
        now = pl.concat([now, now_rows(_by_keys(st, extra))]).unique()
    if restrict.len() == 0:
        pairs = pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    else:
        keys = []
        for i, rule in enumerate(rules):
            rows = now.filter(pl.col("rule") == i)

            def side(s: int) -> pl.DataFrame:
                return rows.filter(pl.col("side") == s).select("rid", "source", pl.col("h").alias("key")) \
                    .cast(_KEY_SCHEMA)

            left = side(0)
            keys.append((left, left if rule.symmetric else side(1)))
        pairs = generate_pairs(records, rules, max_block=max_block, exclusive=exclusive, restrict_to=restrict,
                               keys=keys)
        touches = pl.col("rid_l").is_in(dirty.implode()) | pl.col("rid_r").is_in(dirty.implode())
        in_flip = pairs.join(flip_pairs, on=["rid_l", "rid_r"], how="semi")
        pairs = pl.concat([pairs.filter(touches), in_flip]).unique().sort("rid_l", "rid_r")
    return PairPlan(pairs=pairs, dirty=dirty, flip_pairs=flip_pairs, flipped_members=int(flip_members.len()),
                    new_keys=new_keys)
