"""Candidate pairs from blocking rules, in polars.

Input records need ``rid`` (a unique integer per record), ``source`` and the attributes the
rules name. A pair is ``(rid_l, rid_r)`` with ``rid_l < rid_r`` and the index of the first
rule that found it. Pairs inside an exclusive source are never made: such a source holds at
most one record per person, so those pairs cannot be matches.

>>> import polars as pl
>>> from idweave.blocking.rules import Rule, Key
>>> recs = pl.DataFrame({"rid": [0, 1, 2], "source": ["a", "a", "b"], "fn": ["ann", "ann", "anne"]})
>>> generate_pairs(recs, [Rule((Key("fn", "fn"),))]).rows()
[(0, 1, 0)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import polars as pl

from idweave.blocking.keys import key_values
from idweave.blocking.rules import Rule

__all__ = ["generate_pairs", "count_pairs", "rule_pairs", "rule_keys", "PairStats", "DEFAULT_MAX_BLOCK"]

# A key value shared by more records than this makes too many pairs to be informative
# (a very common name, a placeholder date): its block is skipped for that rule and counted.
DEFAULT_MAX_BLOCK = 400


@dataclass
class PairStats:
    """Counts per rule from :func:`generate_pairs` (no values, no ids)."""

    added: list[int] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    skipped_blocks: list[int] = field(default_factory=list)
    skipped_records: list[int] = field(default_factory=list)


def _key_frame(records: pl.DataFrame, rule: Rule, side: str) -> pl.DataFrame:
    """``rid``, ``source``, ``key`` for one side of a rule; several rows for a record whose
    keys have several values (every combination of its key values)."""
    combined: pl.DataFrame | None = None
    for i, k in enumerate(rule.keys):
        kv = key_values(k.source_values(records, side), k.transforms).rename({"key": f"k{i}"})
        combined = kv if combined is None else combined.join(kv, on="row", how="inner")
    assert combined is not None
    cols = [c for c in combined.columns if c != "row"]
    key = pl.col(cols[0]) if len(cols) == 1 else pl.concat_str([pl.col(c) for c in cols], separator="\x1f")
    frame = combined.select("row", key.alias("key"))
    ids = records.select("rid", "source").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return frame.join(ids, on="row").select("rid", "source", "key")


def rule_keys(records: pl.DataFrame, rule: Rule) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The key frames (``rid``, ``source``, ``key``) of a rule's left and right sides (the
    same frame twice for a symmetric rule): what :func:`rule_pairs` joins.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", None]})
    >>> rule_keys(recs, Rule((Key("fn", "fn"),)))[0].rows()
    [(0, 'a', 'ann')]
    """
    left = _key_frame(records, rule, "l")
    return left, (left if rule.symmetric else _key_frame(records, rule, "r"))


def rule_pairs(records: pl.DataFrame, rule: Rule, *, max_block: int = DEFAULT_MAX_BLOCK,
               exclusive: Iterable[str] = (), restrict_to: pl.Series | None = None,
               stats: PairStats | None = None,
               keys: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> pl.DataFrame:
    """All pairs one rule makes (``rid_l < rid_r``), skipping blocks above ``max_block``.

    ``restrict_to``: if given, only pairs with at least one side among these rids (the new
    records of an incremental run). ``keys``: the rule's key frames from :func:`rule_keys`,
    when the caller already has them (block sizes count every record of those frames).
    """
    excl = list(exclusive)
    left, right = keys if keys is not None else rule_keys(records, rule)
    # A block's size is the number of distinct records holding the key on either side.
    both = left.select("key", "rid") if rule.symmetric else pl.concat([left.select("key", "rid"),
                                                                      right.select("key", "rid")])
    sizes = both.unique().group_by("key").len()
    cap = rule.max_block if rule.max_block is not None else max_block
    big = sizes.filter(pl.col("len") > cap)
    if stats is not None:
        stats.skipped_blocks.append(big.height)
        stats.skipped_records.append(int(big["len"].sum()) if big.height else 0)
    if big.height:
        left = left.join(big.select("key"), on="key", how="anti")
        right = right.join(big.select("key"), on="key", how="anti") if not rule.symmetric else left
    if restrict_to is not None:
        new = pl.DataFrame({"rid": restrict_to})
        keys = pl.concat([left.join(new, on="rid", how="semi").select("key"),
                          right.join(new, on="rid", how="semi").select("key")]).unique()
        left = left.join(keys, on="key", how="semi")
        right = right.join(keys, on="key", how="semi") if not rule.symmetric else left
    j = left.join(right, on="key", suffix="_r")
    j = j.filter(pl.col("rid") != pl.col("rid_r"))
    if excl:
        j = j.filter(~((pl.col("source") == pl.col("source_r")) & pl.col("source").is_in(excl)))
    pairs = j.select(
        pl.min_horizontal("rid", "rid_r").alias("rid_l"),
        pl.max_horizontal("rid", "rid_r").alias("rid_r"),
    )
    if restrict_to is not None:
        new_ids = restrict_to.implode()
        pairs = pairs.filter(pl.col("rid_l").is_in(new_ids) | pl.col("rid_r").is_in(new_ids))
    return pairs.unique()


def generate_pairs(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                   exclusive: Iterable[str] = (), restrict_to: pl.Series | None = None,
                   stats: PairStats | None = None,
                   keys: Sequence[tuple[pl.DataFrame, pl.DataFrame]] | None = None) -> pl.DataFrame:
    """The union of the pairs of all rules: ``rid_l``, ``rid_r``, ``rule`` (first rule index).

    ``keys``, if given, holds each rule's key frames (:func:`rule_keys`), computed once by a
    caller that needs them too (an incremental run).
    """
    excl = list(exclusive)
    seen: pl.DataFrame | None = None
    parts = []
    for i, rule in enumerate(rules):
        p = rule_pairs(records, rule, max_block=max_block, exclusive=excl, restrict_to=restrict_to, stats=stats,
                       keys=keys[i] if keys is not None else None)
        if seen is not None and seen.height:
            new = p.join(seen, on=["rid_l", "rid_r"], how="anti")
        else:
            new = p
        if stats is not None:
            stats.raw.append(p.height)
            stats.added.append(new.height)
        parts.append(new.with_columns(pl.lit(i, pl.Int32).alias("rule")))
        seen = new.select("rid_l", "rid_r") if seen is None else pl.concat([seen, new.select("rid_l", "rid_r")])
    if not parts:
        return pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    out = pl.concat(parts).sort("rid_l", "rid_r")
    return out.with_columns(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64))


def count_pairs(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                exclusive: Iterable[str] = ()) -> pl.DataFrame:
    """Pairs each rule adds and the running total, per source pair, with the share of all
    possible pairs; one row per (rule, source pair) plus a row per rule for all sources.

    >>> import polars as pl
    >>> from idweave.blocking.rules import Rule, Key
    >>> recs = pl.DataFrame({"rid": [0, 1, 2], "source": ["a", "a", "b"], "fn": ["ann", "ann", "ann"]})
    >>> count_pairs(recs, [Rule((Key("fn", "fn"),))]).select("rule", "sources", "pairs_added").rows()
    [('fn', 'a-a', 1), ('fn', 'a-b', 2), ('fn', 'b-b', 0), ('fn', 'all', 3)]
    """
    excl = list(exclusive)
    stats = PairStats()
    pairs = generate_pairs(records, rules, max_block=max_block, exclusive=excl, stats=stats)
    src = records.select("rid", "source")
    labelled = (
        pairs.join(src.rename({"rid": "rid_l", "source": "s_l"}), on="rid_l")
        .join(src.rename({"rid": "rid_r", "source": "s_r"}), on="rid_r")
        .with_columns(pl.when(pl.col("s_l") <= pl.col("s_r"))
                      .then(pl.concat_str(["s_l", "s_r"], separator="-"))
                      .otherwise(pl.concat_str(["s_r", "s_l"], separator="-")).alias("sources"))
    )
    sizes = dict(records.group_by("source").len().iter_rows())
    names = sorted(sizes)
    possible: dict[str, int] = {}
    for i, a in enumerate(names):
        for b in names[i:]:
            if a == b:
                possible[f"{a}-{a}"] = 0 if a in excl else sizes[a] * (sizes[a] - 1) // 2
            else:
                possible[f"{a}-{b}"] = sizes[a] * sizes[b]
    possible["all"] = sum(possible.values())
    counts = labelled.group_by("rule", "sources").len()
    rows = []
    for sp in possible:
        cum = 0
        for i, rule in enumerate(rules):
            if sp == "all":
                n = stats.added[i]
            else:
                hit = counts.filter((pl.col("rule") == i) & (pl.col("sources") == sp))
                n = int(hit["len"][0]) if hit.height else 0
            cum += n
            rows.append({"rule_index": i, "rule": rule.name, "sources": sp, "pairs_added": n,
                         "cumulative": cum, "possible": possible[sp],
                         "share_of_possible": (cum / possible[sp]) if possible[sp] else 0.0,
                         "skipped_blocks": stats.skipped_blocks[i]})
    df = pl.DataFrame(rows)
    order = {s: j for j, s in enumerate(possible)}
    return df.with_columns(pl.col("sources").replace_strict(order, return_dtype=pl.Int32).alias("_o")) \
        .sort("rule_index", "_o").drop("_o")
