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
from idweave.blocking.rules import DEFAULT_CAP, PAIR_BUDGET, Key, Rule

__all__ = ["generate_pairs", "count_pairs", "rule_pairs", "rule_keys", "key_table", "pairs_from_keys",
           "PairStats", "DEFAULT_MAX_BLOCK", "pair_budget"]

# A key value shared by more records than this makes too many pairs to be informative
# (a very common name, a placeholder date): its block is skipped for that rule and counted
# (derived rules carry caps of their own that follow the size of the data: rules.py).
DEFAULT_MAX_BLOCK = DEFAULT_CAP


@dataclass
class PairStats:
    """Counts per rule from :func:`generate_pairs` (no values, no ids)."""

    added: list[int] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    skipped_blocks: list[int] = field(default_factory=list)
    skipped_records: list[int] = field(default_factory=list)


class _KeyValues:
    """The key values of one records frame per (attribute spec, transforms), each computed once
    however many rules and sides use it."""

    def __init__(self, records: pl.DataFrame) -> None:
        self.records = records
        self.memo: dict[tuple[str, tuple[str, ...]], pl.DataFrame] = {}
        self.ids = (records.select("rid", "source").with_row_index("row")
                    .with_columns(pl.col("row").cast(pl.Int64)).lazy())

    def of(self, key: Key, side: str) -> pl.DataFrame:
        """``row``, ``key``: :func:`key_values` of one side of a key."""
        spec = key.left if side == "l" else key.right
        kv = self.memo.get((spec, key.transforms))
        if kv is None:
            kv = self.memo[(spec, key.transforms)] = key_values(key.source_values(self.records, side), key.transforms)
        return kv

    def side(self, rule: Rule, side: str) -> pl.LazyFrame:
        """``rid``, ``source``, ``key`` for one side of a rule; several rows for a record whose
        keys have several values (every combination of its key values)."""
        combined: pl.LazyFrame | None = None
        for i, k in enumerate(rule.keys):
            kv = self.of(k, side).lazy().rename({"key": f"k{i}"})
            combined = kv if combined is None else combined.join(kv, on="row", how="inner")
        assert combined is not None
        cols = [f"k{i}" for i in range(len(rule.keys))]
        key = pl.col(cols[0]) if len(cols) == 1 else pl.concat_str([pl.col(c) for c in cols], separator="\x1f")
        return combined.select("row", key.alias("key")).join(self.ids, on="row").select("rid", "source", "key")


def key_frame(records: pl.DataFrame, rule: Rule, side: str) -> pl.DataFrame:
    """``rid``, ``source``, ``key`` for one side (``"l"`` or ``"r"``) of a rule.

    >>> from idweave.blocking.rules import parse_rules
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "surname": ["lee", "lee"]})
    >>> key_frame(recs, parse_rules(["surname"], attributes={"surname": "family_name"})[0], "l")["rid"].to_list()
    [0, 1]
    """
    return _KeyValues(records).side(rule, side).collect()


def rule_keys(records: pl.DataFrame, rule: Rule) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The key frames (``rid``, ``source``, ``key``) of a rule's left and right sides (the
    same frame twice for a symmetric rule): what :func:`rule_pairs` joins.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", None]})
    >>> rule_keys(recs, Rule((Key("fn", "fn"),)))[0].rows()
    [(0, 'a', 'ann')]
    """
    kv = _KeyValues(records)
    left = kv.side(rule, "l").collect()
    return left, (left if rule.symmetric else kv.side(rule, "r").collect())


def key_table(records: pl.DataFrame, rules: Sequence[Rule], *, seed: int | None = None) -> pl.DataFrame:
    """Every rule's keys in one frame: ``rule`` (index), ``side`` (0: left, 1: right side of
    an asymmetric rule; a symmetric rule has only side 0), ``rid``, ``source``, ``key``: the
    rows of :func:`rule_keys` for every rule, each distinct (attribute, transforms) key value
    computed once. ``seed``: the key hashed (UInt64) with that seed instead of its text.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", "lee"], "ln": ["lee", None]})
    >>> key_table(recs, [Rule((Key("fn", "fn"),)), Rule((Key("fn", "ln"),))]).sort(pl.all()).rows()
    [(0, 0, 0, 'a', 'ann'), (0, 0, 1, 'b', 'lee'), (1, 0, 0, 'a', 'ann'), (1, 0, 1, 'b', 'lee'), (1, 1, 0, 'a', 'lee')]
    """
    kv = _KeyValues(records)
    key = pl.col("key") if seed is None else pl.col("key").hash(seed=seed)
    parts = [kv.side(rule, s).select(pl.lit(i, pl.Int16).alias("rule"), pl.lit(side, pl.UInt8).alias("side"),
                                     "rid", "source", key.alias("key"))
             for i, rule in enumerate(rules) for side, s in ((0, "l"), (1, "r")) if side == 0 or not rule.symmetric]
    if not parts:
        return pl.DataFrame(schema={"rule": pl.Int16, "side": pl.UInt8, "rid": records.schema["rid"],
                                    "source": pl.Utf8, "key": pl.Utf8 if seed is None else pl.UInt64})
    return pl.concat(parts).collect()


def rule_pairs(records: pl.DataFrame, rule: Rule, *, max_block: int = DEFAULT_MAX_BLOCK,
               exclusive: Iterable[str] = (), restrict_to: pl.Series | None = None,
               stats: PairStats | None = None,
               keys: tuple[pl.DataFrame, pl.DataFrame] | None = None) -> pl.DataFrame:
    """All pairs one rule makes (``rid_l < rid_r``), skipping blocks above ``max_block``.

    ``restrict_to``: if given, only pairs with at least one side among these rids (the new
    records of an incremental run). ``keys``: the rule's key frames from :func:`rule_keys`,
    when the caller already has them (block sizes count every record of those frames).
    """
    return _rule_pairs(records, rule, max_block=max_block, exclusive=exclusive, restrict_to=restrict_to,
                       stats=stats, keys=keys)[0]


def _rule_pairs(records: pl.DataFrame, rule: Rule, *, max_block: int, exclusive: Iterable[str],
                restrict_to: pl.Series | None, stats: PairStats | None,
                keys: tuple[pl.DataFrame, pl.DataFrame] | None,
                within: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`rule_pairs`, and the records (``rid``) in the rule's blocks above its cap.

    ``within`` (``rid``): only pairs between these records are made, once the block sizes
    are known (they count every holder). A rule that sharpens another needs only the
    members of the other's too-big blocks: any other pair it makes lies in a block the
    other rule kept, so it is made already."""
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
    members = both.join(big.select("key"), on="key", how="semi").select("rid").unique()
    if big.height:
        left = left.join(big.select("key"), on="key", how="anti")
        right = right.join(big.select("key"), on="key", how="anti") if not rule.symmetric else left
    if within is not None:
        left = left.join(within, on="rid", how="semi")
        right = right.join(within, on="rid", how="semi") if not rule.symmetric else left
    if restrict_to is not None:
        new = pl.DataFrame({"rid": restrict_to})
        keys = pl.concat([left.join(new, on="rid", how="semi").select("key"),
                          right.join(new, on="rid", how="semi").select("key")]).unique()
        left = left.join(keys, on="key", how="semi")
        right = right.join(keys, on="key", how="semi") if not rule.symmetric else left
    j = left.join(right, on="key", suffix="_r")
    # A symmetric rule's join holds every pair both ways round: keep one.
    j = j.filter(pl.col("rid") < pl.col("rid_r") if rule.symmetric else pl.col("rid") != pl.col("rid_r"))
    if excl:
        j = j.filter(~((pl.col("source") == pl.col("source_r")) & pl.col("source").is_in(excl)))
    pairs = j.select(
        pl.min_horizontal("rid", "rid_r").alias("rid_l"),
        pl.max_horizontal("rid", "rid_r").alias("rid_r"),
    )
    if restrict_to is not None:
        new_ids = restrict_to.implode()
        pairs = pairs.filter(pl.col("rid_l").is_in(new_ids) | pl.col("rid_r").is_in(new_ids))
    return pairs.unique(), members


def generate_pairs(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                   exclusive: Iterable[str] = (), restrict_to: pl.Series | None = None,
                   stats: PairStats | None = None,
                   keys: Sequence[tuple[pl.DataFrame, pl.DataFrame]] | None = None) -> pl.DataFrame:
    """The union of the pairs of all rules: ``rid_l``, ``rid_r``, ``rule`` (first rule index).

    ``keys``, if given, holds each rule's key frames (:func:`rule_keys`), computed once by a
    caller that needs them too (an incremental run).
    """
    excl = list(exclusive)
    parts = []
    big_members: dict[str, pl.DataFrame] = {}  # rule name -> records in its blocks above the cap
    for i, rule in enumerate(rules):
        # A sharpening rule pairs only inside its parent's too-big blocks (the same union:
        # its other pairs the parent, an earlier rule, made already).
        within = big_members.get(rule.sharpens) if rule.sharpens is not None else None
        p, big_members[rule.name] = _rule_pairs(records, rule, max_block=max_block, exclusive=excl,
                                                restrict_to=restrict_to, stats=stats,
                                                keys=keys[i] if keys is not None else None, within=within)
        if stats is not None:
            stats.raw.append(p.height)
        parts.append(p.with_columns(pl.lit(i, pl.Int32).alias("rule")))
    if not parts:
        return pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    # Each pair once, with the first rule that makes it.
    out = pl.concat(parts).group_by("rid_l", "rid_r").agg(pl.col("rule").min()).sort("rid_l", "rid_r")
    if stats is not None:
        added = dict(out["rule"].value_counts().iter_rows())
        stats.added.extend(added.get(i, 0) for i in range(len(rules)))
    return out.with_columns(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64))


def pairs_from_keys(keys: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                    exclusive: Iterable[str] = (), restrict_to: pl.Series | None = None) -> pl.DataFrame:
    """:func:`generate_pairs` for every rule at once, from their keys in one frame
    (``rule``, ``side``, ``rid``, ``source``, ``key``, as :func:`key_table` makes them): the
    same pairs with the same first rule, block cap and exclusive sources, in a few joins
    however many rules there are.

    A block's size counts every record holding its key in ``keys``, so when ``restrict_to``
    is given ``keys`` needs every holder of every key of those records (an incremental run
    reads them from the store), and no others are needed.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1, 2], "source": ["a", "a", "b"], "fn": ["ann", "ann", "anne"],
    ...                      "ln": ["lee", "lee", "ann"]})
    >>> rules = [Rule((Key("ln", "ln"),)), Rule((Key("fn", "ln"),))]
    >>> pairs_from_keys(key_table(recs, rules), rules).rows()
    [(0, 1, 0), (0, 2, 1), (1, 2, 1)]
    >>> pairs_from_keys(key_table(recs, rules), rules, restrict_to=pl.Series([0])).rows()
    [(0, 1, 0), (0, 2, 1)]
    """
    excl = list(exclusive)
    out_schema = {"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32}
    if not rules or keys.height == 0:
        return pl.DataFrame(schema=out_schema)
    caps = pl.DataFrame({"rule": list(range(len(rules))),
                         "cap": [r.max_block if r.max_block is not None else max_block for r in rules]},
                        schema={"rule": keys.schema["rule"], "cap": pl.Int64}).lazy()
    symmetric = [i for i, r in enumerate(rules) if r.symmetric]
    k = keys.lazy().select("rule", "side", "key", "rid", "source")
    # A block's size is the number of distinct records holding the key on either side.
    big = (k.select("rule", "key", "rid").unique().group_by("rule", "key").len().join(caps, on="rule")
           .filter(pl.col("len") > pl.col("cap")).select("rule", "key"))
    k = k.join(big, on=["rule", "key"], how="anti")
    sym = pl.col("rule").is_in(symmetric)
    left = k.filter(pl.col("side") == 0).drop("side")
    right = k.filter((pl.col("side") == 1) | sym).drop("side")  # a symmetric rule's left keys are its right keys
    if restrict_to is None:
        j = left.join(right, on=["rule", "key"], suffix="_r")
    else:
        new = pl.DataFrame({"rid": restrict_to.cast(keys.schema["rid"])}).lazy()
        # Pairs with a restricted record on the left; and on the right for an asymmetric
        # rule (a symmetric rule's are the same pairs the other way round).
        j = pl.concat([left.join(new, on="rid", how="semi").join(right, on=["rule", "key"], suffix="_r"),
                       left.join(right.filter(~sym).join(new, on="rid", how="semi"), on=["rule", "key"],
                                 suffix="_r")])
    j = j.filter(pl.col("rid") != pl.col("rid_r"))
    if excl:
        j = j.filter(~((pl.col("source") == pl.col("source_r")) & pl.col("source").is_in(excl)))
    out = (j.group_by(pl.min_horizontal("rid", "rid_r").cast(pl.Int64).alias("rid_l"),
                      pl.max_horizontal("rid", "rid_r").cast(pl.Int64).alias("rid_r"))
           .agg(pl.col("rule").min().cast(pl.Int32)).sort("rid_l", "rid_r"))
    return out.collect()


def pair_budget(n_records: int, budget: float = PAIR_BUDGET) -> int:
    """The most candidate pairs derived rules are meant to make for ``n_records`` records:
    ``budget`` pairs per record (:data:`~idweave.blocking.rules.PAIR_BUDGET`).

    >>> pair_budget(1000)
    25000
    """
    return int(budget * n_records)


def count_pairs(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                exclusive: Iterable[str] = ()) -> pl.DataFrame:
    """Pairs each rule adds and the running total, per source pair, with the share of all
    possible pairs; one row per (rule, source pair) plus a row per rule for all sources.

    Per rule also: ``budget``, the pairs derived rules are meant to stay within
    (:func:`pair_budget` of the number of records, the same on every row), its block ``cap``, the rule it ``sharpens`` (whose blocks above the cap it
    splits by one more key; null for a rule of its own), ``pairs_made`` (its own pairs, found
    by an earlier rule or not: what generating them costs; a sharpening rule's only inside
    its parent's blocks above the cap), ``skipped_records`` (records in
    its blocks above the cap) and what happens to those blocks (``big_blocks``:
    ``"sharpened"`` when a later rule splits them, ``"dropped"`` when none does, empty when
    there are none).

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
    split = {r.sharpens for r in rules if r.sharpens is not None}
    budget = pair_budget(records.height)
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
                         "skipped_blocks": stats.skipped_blocks[i],
                         "cap": rule.max_block if rule.max_block is not None else max_block,
                         "sharpens": rule.sharpens, "pairs_made": stats.raw[i],
                         "skipped_records": stats.skipped_records[i], "budget": budget,
                         "big_blocks": "" if not stats.skipped_blocks[i] else
                         "sharpened" if rule.name in split else "dropped"})
    df = pl.DataFrame(rows, schema_overrides={"sharpens": pl.Utf8})
    order = {s: j for j, s in enumerate(possible)}
    return df.with_columns(pl.col("sources").replace_strict(order, return_dtype=pl.Int32).alias("_o")) \
        .sort("rule_index", "_o").drop("_o")
