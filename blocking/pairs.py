"""Candidate pairs from blocking rules: in polars (:func:`generate_pairs`, the reference), and
the same pairs in a DuckDB with a memory limit that spills to disk (:func:`sql_pairs`, what a
full run uses: the joins and the final grouping outside Python memory).

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

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import polars as pl

from idweave.blocking.keys import key_values
from idweave.blocking.rules import DEFAULT_CAP, PAIR_BUDGET, Key, Rule

if TYPE_CHECKING:
    import duckdb

__all__ = ["generate_pairs", "count_pairs", "rule_pairs", "rule_keys", "key_table", "key_parts", "pairs_from_keys",
           "PairStats", "DEFAULT_MAX_BLOCK", "pair_budget", "pairs_db", "load_keys", "sql_pairs",
           "generate_pairs_sql", "PAIRS_MEMORY_FRACTION", "pairs_memory_limit"]

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


def key_parts(records: pl.DataFrame, rules: Sequence[Rule], *, seed: int | None = None
              ) -> Iterator[tuple[int, int, pl.DataFrame]]:
    """:func:`key_table`'s rows one rule side at a time: ``(rule, side, frame)``, the frame
    holding ``rid``, ``source``, ``key`` (hashed with ``seed`` when given), so a caller that
    moves them elsewhere holds one rule's keys at a time, not all of them.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", "lee"]})
    >>> [(i, side, f["key"].to_list()) for i, side, f in key_parts(recs, [Rule((Key("fn", "fn"),))])]
    [(0, 0, ['ann', 'lee'])]
    """
    kv = _KeyValues(records)
    key = pl.col("key") if seed is None else pl.col("key").hash(seed=seed)
    for i, rule in enumerate(rules):
        for side, s in ((0, "l"), (1, "r")):
            if side == 0 or not rule.symmetric:
                yield i, side, kv.side(rule, s).select("rid", "source", key.alias("key")).collect()


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


# The share of the machine's memory the DuckDB that makes a full run's pairs may hold before
# it spills to its temporary folder (DuckDB's own default is 80 %: the run holds its records,
# keys and model besides, and the machine may run other work). At 202k records the pairs
# need about 0.3 GB, well inside it; past it, DuckDB spills its joins and groupings to disk.
PAIRS_MEMORY_FRACTION = 0.125
_KEYS_TABLE = "pair_keys"


def pairs_memory_limit(fraction: float = PAIRS_MEMORY_FRACTION) -> str:
    """DuckDB's ``memory_limit`` for :func:`pairs_db`: ``fraction`` of the machine's physical
    memory, at least 256 MB.

    >>> pairs_memory_limit(1e-9)
    '256MB'
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(256, int(total * fraction / 2**20))}MB"


@contextmanager
def pairs_db(memory_limit: str | None = None, temp_dir: str | None = None) -> Iterator["duckdb.DuckDBPyConnection"]:
    """A private in-memory DuckDB for :func:`sql_pairs`, with ``memory_limit``
    (:func:`pairs_memory_limit` by default) and a new temporary folder in ``temp_dir`` (the
    system's, ``TMPDIR``, by default) it spills to beyond that limit, removed at the end;
    DuckDB's default threads. (Not the process's scratch DuckDB: its memory limit would hold
    for every other query on it.)

    >>> with pairs_db("300MB") as con:
    ...     con.execute("select current_setting('memory_limit')").fetchall()
    [('286.1 MiB',)]
    """
    import duckdb

    folder = tempfile.mkdtemp(prefix="idweave-pairs-", dir=temp_dir)
    try:
        con = duckdb.connect(config={"memory_limit": memory_limit or pairs_memory_limit(),
                                     "temp_directory": folder})
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_keys(con: "duckdb.DuckDBPyConnection", parts: Iterable[tuple[int, int, pl.DataFrame]], *,
              exclusive: Iterable[str] = ()) -> None:
    """Move rule keys (:func:`key_parts`: ``(rule, side, frame of rid, source, key)``) into
    table ``pair_keys`` of ``con``: ``rule``, ``side``, ``rid``, ``key`` and ``xs``, the index
    of the record's source among ``exclusive`` (-1 for any other source). One part at a time,
    so Python holds one rule's keys at a time.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1], "source": ["a", "b"], "fn": ["ann", "ann"]})
    >>> with pairs_db() as con:
    ...     load_keys(con, key_parts(recs, [Rule((Key("fn", "fn"),))]), exclusive=["b"])
    ...     con.execute("select rule, side, rid, key, xs from pair_keys order by rid").fetchall()
    [(0, 0, 0, 'ann', -1), (0, 0, 1, 'ann', 0)]
    """
    excl = list(dict.fromkeys(exclusive))
    xs = (pl.col("source").replace_strict({s: j for j, s in enumerate(excl)}, default=-1, return_dtype=pl.Int16)
          if excl else pl.lit(-1, pl.Int16))
    made = False
    for rule, side, frame in parts:
        part = frame.select(pl.lit(rule, pl.Int16).alias("rule"), pl.lit(side, pl.UInt8).alias("side"),
                            pl.col("rid").cast(pl.Int64), "key", xs.alias("xs")).to_arrow()
        con.register("_part", part)
        con.execute(f"insert into {_KEYS_TABLE} select * from _part" if made else
                    f"create or replace temp table {_KEYS_TABLE} as select * from _part")
        con.unregister("_part")
        made = True
    if not made:
        con.execute(f"create or replace temp table {_KEYS_TABLE} "
                    "(rule smallint, side utinyint, rid bigint, key ubigint, xs smallint)")


def _rule_table(rules: Sequence[Rule], max_block: int) -> pl.DataFrame:
    """Per rule: its ``cap``, whether it is symmetric (``sym``) and the index of the rule it
    sharpens (``parent``), as :func:`generate_pairs` finds it: the last earlier rule of that
    name (null for a rule of its own, or when no earlier rule has the name)."""
    seen: dict[str, int] = {}
    parents: list[int | None] = []
    for i, rule in enumerate(rules):
        parents.append(seen.get(rule.sharpens) if rule.sharpens is not None else None)
        seen[rule.name] = i
    return pl.DataFrame({"rule": list(range(len(rules))),
                         "cap": [r.max_block if r.max_block is not None else max_block for r in rules],
                         "sym": [r.symmetric for r in rules], "parent": parents},
                        schema={"rule": pl.Int16, "cap": pl.Int64, "sym": pl.Boolean, "parent": pl.Int16})


def sql_pairs(con: "duckdb.DuckDBPyConnection", rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
              stats: PairStats | None = None) -> pl.DataFrame:
    """:func:`generate_pairs` in DuckDB, on the keys :func:`load_keys` put in ``con``: the
    same pairs (``rid_l`` < ``rid_r``, the first rule that makes each), block caps by the
    distinct records holding a key on either side, sharpening rules paired only between the
    records of their parent's blocks above its cap, no pair inside one exclusive source,
    sorted by ``rid_l``, ``rid_r``; ``stats`` filled as :func:`generate_pairs` fills them.

    Every rule at once, in four statements: the blocks above their cap, the records in them
    (for the rules that others sharpen), the keys left to pair, and one self-join of those
    grouped by pair. Only the result comes back to Python.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1, 2], "source": ["a", "a", "b"], "fn": ["ann", "ann", "anne"]})
    >>> rules = [Rule((Key("fn", "fn"),))]
    >>> with pairs_db() as con:
    ...     load_keys(con, key_parts(recs, rules))
    ...     sql_pairs(con, rules).rows()
    [(0, 1, 0)]
    """
    out_schema = {"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32}
    if not rules:
        return pl.DataFrame(schema=out_schema)
    k = _KEYS_TABLE
    con.register("_rules", _rule_table(rules, max_block).to_arrow())
    con.execute("create or replace temp table _ri as select * from _rules")
    con.unregister("_rules")
    # Blocks above their cap: distinct records per (rule, key), counted only for keys held by
    # more rows than the cap (a block of fewer rows has fewer records).
    con.execute(f"""create or replace temp table _big as
        with rows as (select k.rule, k.key from {k} k join _ri using (rule)
                      group by k.rule, k.key, _ri.cap having count(*) > _ri.cap)
        select d.rule, d.key, count(*) as n
        from (select distinct k.rule, k.key, k.rid from {k} k semi join rows r on k.rule = r.rule and k.key = r.key) d
        join _ri using (rule) group by d.rule, d.key, _ri.cap having count(*) > _ri.cap""")
    # The records in the too-big blocks of the rules that others sharpen.
    con.execute(f"""create or replace temp table _members as
        select distinct k.rule, k.rid from {k} k semi join _big b on k.rule = b.rule and k.key = b.key
        where k.rule in (select parent from _ri where parent is not null)""")
    # The keys left to pair: outside blocks above the cap; for a sharpening rule, only those
    # of records in its parent's blocks above the cap.
    con.execute(f"""create or replace temp table _kept as
        select k.rule, k.side, k.rid, k.key, k.xs, _ri.sym from {k} k join _ri using (rule)
        anti join _big b on k.rule = b.rule and k.key = b.key
        where _ri.parent is null
        union all
        select k.rule, k.side, k.rid, k.key, k.xs, _ri.sym from {k} k join _ri using (rule)
        semi join _members m on m.rule = _ri.parent and m.rid = k.rid
        anti join _big b on k.rule = b.rule and k.key = b.key
        where _ri.parent is not null""")
    # A symmetric rule's keys are both its sides (each pair once, the smaller rid on the
    # left); an asymmetric rule joins its left keys (side 0) to its right keys (side 1).
    made = """select l.rule, least(l.rid, r.rid) as rid_l, greatest(l.rid, r.rid) as rid_r
        from _kept l join _kept r on l.rule = r.rule and l.key = r.key
        where l.side = 0 and r.side = case when l.sym then 0 else 1 end
          and (l.rid < r.rid or (not l.sym and l.rid > r.rid))
          and (l.xs < 0 or l.xs <> r.xs)"""
    if stats is not None:
        con.execute(f"create or replace temp table _made as select distinct * from ({made})")
        made = "select * from _made"
    rel = con.sql(f"""select rid_l::bigint as rid_l, rid_r::bigint as rid_r, min(rule)::integer as rule
                      from ({made}) group by rid_l, rid_r order by rid_l, rid_r""")
    out = pl.from_arrow(rel.to_arrow_table())
    assert isinstance(out, pl.DataFrame)
    out = out if out.width else pl.DataFrame(schema=out_schema)
    if stats is not None:
        def per_rule(sql: str) -> list[int]:
            got = dict(con.execute(sql).fetchall())
            return [int(got.get(i, 0) or 0) for i in range(len(rules))]
        stats.skipped_blocks.extend(per_rule("select rule, count(*) from _big group by rule"))
        stats.skipped_records.extend(per_rule("select rule, sum(n) from _big group by rule"))
        stats.raw.extend(per_rule("select rule, count(*) from _made group by rule"))
        added = dict(out["rule"].value_counts().iter_rows())
        stats.added.extend(added.get(i, 0) for i in range(len(rules)))
    for t in ("_ri", "_big", "_members", "_kept", "_made"):
        con.execute(f"drop table if exists {t}")
    return out.cast(out_schema)


def generate_pairs_sql(records: pl.DataFrame, rules: Sequence[Rule], *, max_block: int = DEFAULT_MAX_BLOCK,
                       exclusive: Iterable[str] = (), stats: PairStats | None = None, seed: int | None = None,
                       memory_limit: str | None = None, temp_dir: str | None = None) -> pl.DataFrame:
    """:func:`generate_pairs` (no ``restrict_to``) made in a :func:`pairs_db`: the keys of
    :func:`key_parts` (hashed with ``seed`` if given), paired by :func:`sql_pairs`.

    >>> from idweave.blocking.rules import Key
    >>> recs = pl.DataFrame({"rid": [0, 1, 2], "source": ["a", "a", "b"], "fn": ["ann", "ann", "ann"]})
    >>> generate_pairs_sql(recs, [Rule((Key("fn", "fn"),))], exclusive=["a"]).rows()
    [(0, 2, 0), (1, 2, 0)]
    """
    with pairs_db(memory_limit, temp_dir) as con:
        load_keys(con, key_parts(records, rules, seed=seed), exclusive=exclusive)
        return sql_pairs(con, rules, max_block=max_block, stats=stats)


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
