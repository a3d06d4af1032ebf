"""A full run's pairs in DuckDB (``pairs.sql_pairs``, ``_blockkeys.full_pairs``) against the
polars reference (``pairs.generate_pairs``, ``_blockkeys.all_keys``): the same frames (pairs,
first rule, order) and the same ``PairStats``, on the demo fixture and on a generated
population (fixtures/generate.py) with several rule sets (derived, sharpening with small
``scale_from``, asymmetric, small caps), exclusive sources, text and hashed keys, and a
small memory limit; and a hypothesis property on random small frames."""

from __future__ import annotations

import importlib.util

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from idweave.blocking import Key, PairStats, Rule, derive_rules, generate_pairs
from idweave.blocking.pairs import generate_pairs_sql, key_parts, load_keys, pairs_db, sql_pairs
from idweave.linkage import _blockkeys as bk
from idweave.linkage import load_project
from idweave.linkage.project import project_rules, with_rids
from idweave.linkage.sources import load_records

SWAPPED = Rule((Key("first_name", "last_name"), Key("last_name", "first_name")), name="swapped", max_block=6)
HALF_SWAPPED = Rule((Key("first_name", "last_name", ("initial",)), Key("birth_date", "birth_date", ("year",))),
                    name="half swapped", max_block=4)
SHARPER_SWAP = Rule((Key("first_name", "last_name", ("initial",)), Key("birth_date", "birth_date", ("year",)),
                     Key("postcode", "postcode")), name="sharper swap", max_block=4, sharpens="half swapped")


@pytest.fixture(scope="module")
def demo() -> tuple[pl.DataFrame, dict[str, str]]:
    p = load_project(FIXTURES / "demo" / "project.yaml")
    return with_rids(load_records(p)), {a.name: a.kind for a in p.attributes.values()}


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> tuple[pl.DataFrame, dict[str, str]]:
    spec = importlib.util.spec_from_file_location("generate", FIXTURES / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    d = tmp_path_factory.mktemp("people3000")
    gen.write(gen.generate(3000, 7), d)
    p = load_project(d / "project.yaml")
    recs = with_rids(load_records(p))
    return recs, {a.name: a.kind for a in p.attributes.values() if recs[a.name].null_count() < recs.height}


def _same(records: pl.DataFrame, rules: list[Rule], exclusive: list[str], **kw) -> pl.DataFrame:
    """The DuckDB pairs and stats equal the polars ones; returns the pairs."""
    want_stats, got_stats = PairStats(), PairStats()
    want = generate_pairs(records, rules, exclusive=exclusive, stats=want_stats)
    got = generate_pairs_sql(records, rules, exclusive=exclusive, stats=got_stats, **kw)
    assert got.schema == want.schema
    assert got.equals(want)
    assert got_stats == want_stats
    return got


def _sharpening(kinds: dict[str, str], n: int) -> list[Rule]:
    rules = derive_rules(kinds, n, scale_from=max(n // 16, 1))
    assert any(r.sharpens for r in rules)
    return rules


def test_demo_rule_sets_give_the_polars_pairs(demo) -> None:
    records, kinds = demo
    p = load_project(FIXTURES / "demo" / "project.yaml")
    rule_sets = {
        "project": project_rules(p, records),
        "sharpening": _sharpening(kinds, records.height),
        "asymmetric, small caps": [SWAPPED, HALF_SWAPPED, SHARPER_SWAP,
                                   Rule((Key("last_name", "last_name"),), name="ln", max_block=3)],
    }
    for name, rules in rule_sets.items():
        for exclusive in ([], ["tax"], ["tax", "census"]):
            pairs = _same(records, rules, exclusive)
            assert pairs.height > 0, name
    # Hashed keys (what a run blocks on) give the same pairs too.
    _same(records, rule_sets["sharpening"], ["tax"], seed=bk._SEED)


def test_generated_population_with_sharpening_and_a_memory_limit_that_spills(population) -> None:
    records, kinds = population
    rules = _sharpening(kinds, records.height) + [SWAPPED, HALF_SWAPPED, SHARPER_SWAP]
    stats = PairStats()
    generate_pairs(records, rules, exclusive=["tax"], stats=stats)
    # Some blocks are above their cap and some sharpening rule pairs inside them.
    assert sum(stats.skipped_blocks) > 0
    assert any(stats.raw[i] for i, r in enumerate(rules) if r.sharpens)
    _same(records, rules, ["tax"], seed=bk._SEED)
    # A 64 MB limit (near the least DuckDB's joins and groupings run in on two threads):
    # the same result.
    _same(records, rules, ["tax"], memory_limit="64MB")


def test_full_pairs_gives_the_pairs_and_block_keys_rows_of_all_keys(population) -> None:
    records, kinds = population
    records = records.with_columns(rk=pl.col("rid") * 3 + 11)  # a persistent key unlike the rid
    rules = _sharpening(kinds, records.height) + [SWAPPED]
    keys, want_rows = bk.all_keys(records, rules)
    want = generate_pairs(records, rules, exclusive=["tax"], keys=keys)
    got, rows = bk.full_pairs(records, rules, exclusive=["tax"])
    assert got.equals(want)
    assert rows.schema == want_rows.schema
    # The same rows, in the order of rule and key hash (ties in record and side order).
    assert rows.equals(want_rows.sort("rule", "h", "rk", "side"))
    assert rows.select("rule", "h").equals(want_rows.select("rule", "h"))


def test_no_rules_and_no_keys_give_empty_frames(demo) -> None:
    records, _ = demo
    empty = generate_pairs(records, [])
    assert generate_pairs_sql(records, []).equals(empty)
    nothing = records.with_columns(pl.lit(None, pl.Utf8).alias("last_name"))
    rules = [Rule((Key("last_name", "last_name"),))]
    assert generate_pairs_sql(nothing, rules).equals(generate_pairs(nothing, rules))
    with pairs_db() as con:
        load_keys(con, iter(()))
        assert sql_pairs(con, rules).equals(generate_pairs(nothing, rules))
    pairs, rows = bk.full_pairs(nothing.with_columns(rk=pl.col("rid")), rules)
    assert pairs.height == 0 and rows.height == 0 and rows.schema == bk.all_keys(nothing.with_columns(
        rk=pl.col("rid")), rules)[1].schema


def test_key_parts_are_key_tables_rows() -> None:
    from idweave.blocking.pairs import key_table
    recs = pl.DataFrame({"rid": [3, 5, 8], "source": ["a", "b", "b"], "first_name": ["ann lee", "lee", None],
                         "last_name": ["lee", "ann", "ann"]})
    rules = [SWAPPED, Rule((Key("first_name+last_name", "first_name+last_name", ("tokens",)),))]
    parts = pl.concat([f.select(pl.lit(i, pl.Int16).alias("rule"), pl.lit(s, pl.UInt8).alias("side"), pl.all())
                       for i, s, f in key_parts(recs, rules, seed=1)])
    assert parts.sort(pl.all()).equals(key_table(recs, rules, seed=1).sort(pl.all()))


# ------------------------------------------------------------------ property: random frames and rules
_VALUES = st.sampled_from(["a", "b", "c", "ab", "ba", None])
_ATTRS = ("x", "y", "z")


@st.composite
def _case(draw):
    n = draw(st.integers(0, 30))
    recs = pl.DataFrame({
        "rid": draw(st.permutations(range(100)))[:n],
        "source": draw(st.lists(st.sampled_from(["s", "t", "u"]), min_size=n, max_size=n)),
        **{a: draw(st.lists(_VALUES, min_size=n, max_size=n)) for a in _ATTRS},
    }, schema={"rid": pl.Int64, "source": pl.Utf8, **{a: pl.Utf8 for a in _ATTRS}})
    rules: list[Rule] = []
    for i in range(draw(st.integers(1, 5))):
        keys = tuple(Key(draw(st.sampled_from(_ATTRS)), draw(st.sampled_from(_ATTRS)),
                         draw(st.sampled_from([(), ("initial",), ("sorted_tokens",)])))
                     for _ in range(draw(st.integers(1, 2))))
        # Names repeat (a later rule of a name is the one sharpened) and a rule may sharpen
        # a name no earlier rule has.
        sharpens = draw(st.sampled_from([None, None, *(r.name for r in rules), "nowhere"]))
        rules.append(Rule(keys, name=draw(st.sampled_from(["p", "q", f"r{i}"])),
                          max_block=draw(st.sampled_from([None, 1, 2, 3, 5])), sharpens=sharpens))
    exclusive = draw(st.lists(st.sampled_from(["s", "t", "u"]), max_size=2, unique=True))
    return recs, rules, exclusive, draw(st.sampled_from([2, 4, 25]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_case())
def test_property_sql_pairs_equal_generate_pairs(case) -> None:
    recs, rules, exclusive, max_block = case
    want_stats, got_stats = PairStats(), PairStats()
    want = generate_pairs(recs, rules, max_block=max_block, exclusive=exclusive, stats=want_stats)
    got = generate_pairs_sql(recs, rules, max_block=max_block, exclusive=exclusive, stats=got_stats)
    assert got.equals(want)
    assert got_stats == want_stats
