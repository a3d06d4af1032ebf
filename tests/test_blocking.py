"""Blocking: keys and rules as data, pair generation and counts on a hand-made frame
(exact), exclusivity, the swapped-name key, the big-block cap, and derived rules; every rule
at once (``key_table``, ``pairs_from_keys``) and an incremental run's pairs from stored keys
(``_blockkeys.plan_pairs``), pinned to ``generate_pairs`` on the fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import FIXTURES
from idweave.blocking import (
    PairStats, Key, Rule, count_pairs, derive_rules, generate_pairs, parse_rules, rule_pairs,
)
from idweave.blocking.pairs import key_table, pairs_from_keys, rule_keys
from idweave.linkage import _blockkeys as bk
from idweave.linkage import load_project
from idweave.linkage.graph import Store
from idweave.linkage.project import project_rules, with_rids
from idweave.linkage.sources import load_records

# rid 3 has first and last name swapped; rid 5 and 6 each miss a value.
RECORDS = pl.DataFrame({
    "rid": [0, 1, 2, 3, 4, 5, 6],
    "source": ["a", "a", "b", "b", "c", "c", "c"],
    "fn": ["ann", "ann", "ann", "lee", "bob", "bob", None],
    "ln": ["lee", "lee", "lee", "ann", "fox", None, "fox"],
    "dob": ["1980-01-02", "1980-01-02", "1981-01-02", "1980-01-02", "1975-05-05", "1975-05-05", "1975-06-06"],
    "pc": ["AB1", "AB1", "AB1", "XY9", "AB1", None, "CD2"],
})
ATTRS = {"fn": "given_name", "ln": "family_name", "dob": "date", "pc": "postcode"}
FIRST = Rule((Key("fn", "fn"),))
LAST = Rule((Key("ln", "ln"),))
SWAPPED = Rule((Key("fn", "ln"), Key("ln", "fn")))
YEAR_AND_PLACE = Rule((Key("dob", "dob", ("year",)), Key("pc", "pc")))
RULES = [FIRST, LAST, SWAPPED, YEAR_AND_PLACE]


def pairs(rule: Rule, **kw) -> list[tuple[int, int]]:
    return sorted(rule_pairs(RECORDS, rule, **kw).rows())


# ------------------------------------------------------------------ keys and rules
@pytest.mark.parametrize("text, key", [
    ("first_name", Key("first_name", "first_name", ())),
    ("first_name:exact", Key("first_name", "first_name", ())),
    (" birth_date:year ", Key("birth_date", "birth_date", ("year",))),
    ("first_name:first_token:metaphone", Key("first_name", "first_name", ("first_token", "metaphone"))),
    ("first_name~last_name:metaphone", Key("first_name", "last_name", ("metaphone",))),
])
def test_key_parse(text: str, key: Key) -> None:
    assert Key.parse(text) == key


@pytest.mark.parametrize("text", ["a~b~c", "~b", ":metaphone"])
def test_bad_keys(text: str) -> None:
    with pytest.raises(ValueError, match="write attribute"):
        Key.parse(text)


def test_rule_forms_and_names() -> None:
    assert Rule.from_dict("fn & ln:prefix2") == Rule((Key("fn", "fn"), Key("ln", "ln", ("prefix2",))))
    assert Rule.from_dict(["fn", "ln:prefix2"]).name == "fn & ln:prefix2"
    named = Rule.from_dict({"name": "swapped names", "keys": ["fn~ln", "ln~fn"]})
    assert (named.name, named.symmetric) == ("swapped names", False)
    assert SWAPPED.name == "fn~ln & ln~fn"
    for rule in RULES + [named]:
        assert Rule.from_dict(rule.to_dict()) == rule


def test_rule_sql_for_splink() -> None:
    assert YEAR_AND_PLACE.sql() == 'substr(l."dob", 1, 4) = substr(r."dob", 1, 4) AND l."pc" = r."pc"'
    assert SWAPPED.sql() == 'l."fn" = r."ln" AND l."ln" = r."fn"'
    assert Rule((Key("fn", "fn", ("metaphone",)),)).sql() is None  # no SQL form for phonetic codes


def test_parse_rules_reports_every_bad_rule() -> None:
    with pytest.raises(ValueError) as info:
        parse_rules([["fn"], ["zip"], ["dob:decade"], ["a~b~c"]], attributes=ATTRS)
    message = str(info.value)
    assert message.startswith("rule 2: unknown attribute 'zip'; rule 3: unknown key transform 'decade'")
    assert message.endswith("rule 4: bad key 'a~b~c': write attribute[:transform] or left~right[:transform]")


@pytest.mark.parametrize("spec", [None, [], "fn", {"keys": ["fn"]}])
def test_parse_rules_wants_a_list(spec) -> None:
    with pytest.raises(ValueError, match="must be a list of rules"):
        parse_rules(spec, attributes=ATTRS)


# ------------------------------------------------------------------ pairs (exact, by hand)
def test_one_rule() -> None:
    assert pairs(FIRST) == [(0, 1), (0, 2), (1, 2), (4, 5)]  # a null key blocks nothing
    assert pairs(LAST) == [(0, 1), (0, 2), (1, 2), (4, 6)]


def test_swapped_name_key() -> None:
    # Only record 3 has its names the other way round: it pairs with 0, 1 and 2.
    assert pairs(SWAPPED) == [(0, 3), (1, 3), (2, 3)]


def test_transformed_keys() -> None:
    assert pairs(YEAR_AND_PLACE) == [(0, 1)]
    assert pairs(Rule((Key("dob", "dob", ("year",)),))) == [(0, 1), (0, 3), (1, 3), (4, 5), (4, 6), (5, 6)]
    assert pairs(Rule((Key("dob", "dob", ("month_day",)),))) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3),
                                                                  (4, 5)]
    names = pl.DataFrame({"rid": [0, 1, 2], "source": ["a"] * 3, "fn": ["catherine", "kathryn", "katie"]})
    assert rule_pairs(names, Rule((Key("fn", "fn", ("metaphone",)),))).rows() == [(0, 1)]
    assert sorted(rule_pairs(names, Rule((Key("fn", "fn", ("prefix2",)),))).rows()) == [(1, 2)]


def test_generate_pairs_keeps_the_first_rule_that_found_a_pair() -> None:
    stats = PairStats()
    out = generate_pairs(RECORDS, RULES, stats=stats)
    assert out.columns == ["rid_l", "rid_r", "rule"]
    assert out.rows() == [(0, 1, 0), (0, 2, 0), (0, 3, 2), (1, 2, 0), (1, 3, 2), (2, 3, 2), (4, 5, 0), (4, 6, 1)]
    assert stats.raw == [4, 4, 3, 1]
    assert stats.added == [4, 1, 3, 0]
    assert stats.skipped_blocks == [0, 0, 0, 0]


def test_exclusive_sources_are_never_paired_with_themselves() -> None:
    out = generate_pairs(RECORDS, RULES, exclusive=["a"])
    assert out.rows() == [(0, 2, 0), (0, 3, 2), (1, 2, 0), (1, 3, 2), (2, 3, 2), (4, 5, 0), (4, 6, 1)]
    out = generate_pairs(RECORDS, RULES, exclusive=["a", "b", "c"])
    assert out.rows() == [(0, 2, 0), (0, 3, 2), (1, 2, 0), (1, 3, 2)]


def test_big_blocks_are_skipped_and_counted() -> None:
    stats = PairStats()
    # The "ann" block holds 3 records, more than 2: skipped; "bob" (2 records) stays.
    out = generate_pairs(RECORDS, [FIRST], max_block=2, stats=stats)
    assert out.rows() == [(4, 5, 0)]
    assert (stats.skipped_blocks, stats.skipped_records) == ([1], [3])


def test_pairs_restricted_to_new_records() -> None:
    out = generate_pairs(RECORDS, RULES, restrict_to=pl.Series([3, 6]))
    assert out.rows() == [(0, 3, 2), (1, 3, 2), (2, 3, 2), (4, 6, 1)]


def test_no_rules_no_pairs() -> None:
    out = generate_pairs(RECORDS, [])
    assert out.height == 0 and out.schema == {"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32}


# ------------------------------------------------------------------ count_pairs (exact)
def test_count_pairs_per_rule_and_source_pair() -> None:
    df = count_pairs(RECORDS, RULES)
    assert df.columns == ["rule_index", "rule", "sources", "pairs_added", "cumulative", "possible",
                          "share_of_possible", "skipped_blocks", "cap", "sharpens", "pairs_made",
                          "skipped_records", "budget", "big_blocks"]
    got = {(r["rule"], r["sources"]): (r["pairs_added"], r["cumulative"], r["possible"])
           for r in df.iter_rows(named=True)}
    possible = {"a-a": 1, "a-b": 4, "a-c": 6, "b-b": 1, "b-c": 6, "c-c": 3, "all": 21}
    added = {  # rule -> source pair -> pairs it adds
        "fn": {"a-a": 1, "a-b": 2, "c-c": 1, "all": 4},
        "ln": {"c-c": 1, "all": 1},
        "fn~ln & ln~fn": {"a-b": 2, "b-b": 1, "all": 3},
        "dob:year & pc": {},
    }
    expected, cumulative = {}, dict.fromkeys(possible, 0)
    for rule, by_sources in added.items():
        for sp in possible:
            cumulative[sp] += by_sources.get(sp, 0)
            expected[(rule, sp)] = (by_sources.get(sp, 0), cumulative[sp], possible[sp])
    assert got == expected
    # Rows in rule order, then source pairs in name order, "all" last.
    assert df["sources"].to_list()[:7] == list(possible)
    last = df.row(-1, named=True)
    assert (last["sources"], last["cumulative"], last["share_of_possible"]) == ("all", 8, 8 / 21)


def test_count_pairs_with_an_exclusive_source() -> None:
    df = count_pairs(RECORDS, RULES, exclusive=["a"])
    a_a = df.filter(pl.col("sources") == "a-a")
    assert a_a["pairs_added"].to_list() == [0, 0, 0, 0]
    assert a_a["possible"].to_list() == [0, 0, 0, 0] and a_a["share_of_possible"].to_list() == [0.0] * 4
    assert df.filter(pl.col("sources") == "all")["cumulative"].to_list() == [3, 4, 7, 7]
    assert df.filter(pl.col("sources") == "all")["possible"][0] == 20


def test_count_pairs_agrees_with_generate_pairs_on_the_tiny_fixture() -> None:
    project = load_project(FIXTURES / "tiny" / "project.yaml")
    records = with_rids(load_records(project))
    rules = project_rules(project, records)
    generated = generate_pairs(records, rules, exclusive=["tax"])
    counted = count_pairs(records, rules, exclusive=["tax"])
    assert counted.filter(pl.col("sources") == "all")["cumulative"][-1] == generated.height
    # tax is exclusive: no tax-tax pair at all.
    source = dict(records.select("rid", "source").iter_rows())
    assert not any(source[a] == source[b] == "tax" for a, b, _ in generated.rows())
    assert counted.filter(pl.col("sources") == "tax-tax")["pairs_added"].sum() == 0


# ------------------------------------------------------------------ derived rules
FULL = {"ssn": "national_id", "email": "email", "phone": "phone", "fn": "given_name", "ln": "family_name",
        "dob": "date", "pc": "postcode", "sex": "sex"}


def test_derived_rules_start_with_the_identifiers_alone() -> None:
    rules = derive_rules(FULL)
    assert [r.name for r in rules[:3]] == ["ssn", "email", "phone"]
    assert all(r.keys == (Key(a, a),) for r, a in zip(rules[:3], ["ssn", "email", "phone"]))


def test_derived_rules_include_a_swapped_name_rule() -> None:
    rules = derive_rules(FULL)
    assert any({(k.left, k.right) for k in r.keys} == {("fn", "ln"), ("ln", "fn")} for r in rules)


def test_derived_rules_parse_back_with_the_declared_attributes() -> None:
    for attrs in (FULL, {"name": "full_name", "dob": "date"}, {"fn": "given_name", "dob": "date"},
                  {"ssn": "national_id"}):
        rules = derive_rules(attrs)
        assert rules, attrs
        assert parse_rules([r.to_dict() for r in rules], attributes=attrs) == rules
        assert len({r.name for r in rules}) == len(rules)  # no rule twice


def test_derived_rules_use_a_full_name_when_there_are_no_name_parts() -> None:
    rules = derive_rules({"name": "full_name", "dob": "date"})
    assert all(any("name" in (k.left + k.right) for k in r.keys) or r.attributes <= {"dob"} for r in rules)
    assert any("name" in (k.left + k.right) for r in rules for k in r.keys)


def test_nothing_to_block_on() -> None:
    assert derive_rules({"note": "text"}) == []
    assert derive_rules({}) == []


def test_derived_rules_are_deterministic() -> None:
    assert derive_rules(FULL) == derive_rules(dict(FULL))


# ------------------------------------------------------------------ every rule at once, pinned to generate_pairs
# Beyond the project's rules (one asymmetric): an asymmetric rule with a multi-valued key on
# one side and its own small cap, and one key under two rules with different caps (the same
# hashes under two rule indexes).
EXTRA_RULES = [
    Rule((Key("full_name", "first_name", ("tokens",)), Key("birth_date", "birth_date", ("year",))), max_block=6),
    Rule((Key("last_name", "last_name", ("metaphone",)),), max_block=4),
    Rule((Key("last_name", "last_name", ("metaphone",)),)),
]


@pytest.fixture(scope="module", params=["tiny", "demo"])
def fixture_records(request) -> tuple[pl.DataFrame, list[Rule]]:
    project = load_project(FIXTURES / request.param / "project.yaml")
    records = with_rids(load_records(project))
    return records, project_rules(project, records) + EXTRA_RULES


def test_key_table_holds_each_rules_keys(fixture_records) -> None:
    records, rules = fixture_records
    table = key_table(records, rules)
    hashed = key_table(records, rules, seed=7)
    assert hashed.sort(pl.all()).equals(table.with_columns(pl.col("key").hash(seed=7)).sort(pl.all()))
    for i, rule in enumerate(rules):
        left, right = rule_keys(records, rule)
        for side, frame in ((0, left), (1, right)):
            got = table.filter((pl.col("rule") == i) & (pl.col("side") == side)).drop("rule", "side")
            if side == 1 and rule.symmetric:
                assert got.height == 0  # a symmetric rule's right keys are its left ones
            else:
                assert frame.height and got.sort(pl.all()).equals(frame.sort(pl.all())), (rule.name, side)


@pytest.mark.parametrize("max_block", [400, 3])
@pytest.mark.parametrize("exclusive", [[], ["tax"]])
@pytest.mark.parametrize("share", [None, 0.02, 0.3])
def test_pairs_from_keys_are_generate_pairs(fixture_records, max_block, exclusive, share) -> None:
    records, rules = fixture_records
    restrict = None if share is None else records["rid"].sample(fraction=share, seed=3).sort()
    want = generate_pairs(records, rules, max_block=max_block, exclusive=exclusive, restrict_to=restrict)
    assert want.height
    for seed in (None, 11):  # on the keys' text and on their hashes
        got = pairs_from_keys(key_table(records, rules, seed=seed), rules, max_block=max_block,
                              exclusive=exclusive, restrict_to=restrict)
        assert got.equals(want)
    if restrict is not None:
        # Only the keys the restricted records hold (with all their holders) are needed.
        table = key_table(records, rules)
        theirs = table.filter(pl.col("rid").is_in(restrict.implode())).select("rule", "key").unique()
        held = table.join(theirs, on=["rule", "key"], how="semi")
        assert held.height < table.height
        assert pairs_from_keys(held, rules, max_block=max_block, exclusive=exclusive,
                               restrict_to=restrict).equals(want)


def test_pairs_from_keys_with_no_rules_or_keys() -> None:
    empty = pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    assert pairs_from_keys(key_table(RECORDS, []), []).equals(empty)
    assert pairs_from_keys(key_table(RECORDS.clear(), RULES), RULES).equals(empty)
    assert pairs_from_keys(key_table(RECORDS, RULES), RULES, restrict_to=pl.Series([], dtype=pl.Int64)).equals(empty)


def _rk_pairs(pairs: pl.DataFrame, rk_of: pl.DataFrame) -> set[tuple[int, int, int]]:
    """Pairs as (smaller rk, larger rk, rule)."""
    named = (pairs.join(rk_of.select(pl.col("rid").alias("rid_l"), pl.col("rk").alias("a")), on="rid_l")
             .join(rk_of.select(pl.col("rid").alias("rid_r"), pl.col("rk").alias("b")), on="rid_r"))
    assert named.height == pairs.height
    return {(min(a, b), max(a, b), r) for a, b, r in named.select("a", "b", "rule").iter_rows()}


@pytest.mark.parametrize("max_block, exclusive, seed", [(400, [], 1), (400, ["tax"], 2), (5, [], 3),
                                                        (5, ["tax"], 4), (8, ["tax"], 5)])
def test_plan_pairs_makes_what_a_full_run_would(fixture_records, tmp_path: Path, max_block, exclusive, seed) -> None:
    """Stored keys of a first set of records, then records added, removed and changed: the
    stored pairs that stand (touching no dirty or removed record, in no flipped block) and
    the plan's pairs are exactly the pairs of the second set, with the same first rules."""
    records, rules = fixture_records
    rng = np.random.default_rng(seed)
    everyone = records.drop("rid").with_row_index("rk").with_columns(pl.col("rk").cast(pl.Int64))
    n = everyone.height
    roll = rng.random(n)
    before = everyone.filter(pl.Series(roll < 0.8))
    removed = set(before["rk"].sample(fraction=0.05, seed=seed).to_list())
    staying = before.filter(~pl.col("rk").is_in(list(removed)))["rk"]
    changed = set(staying.sample(fraction=0.08, seed=seed + 1).to_list())
    added = set(everyone.filter(pl.Series((roll >= 0.8) & (roll < 0.9)))["rk"].to_list())
    # A changed record takes another record's surname and birth date (a new block or an old one).
    donors = everyone.sample(n=len(changed), seed=seed + 2, with_replacement=True)
    new_values = pl.DataFrame({"rk": sorted(changed), "last_name": donors["last_name"],
                               "birth_date": donors["birth_date"]})
    after = (everyone.filter(pl.col("rk").is_in(before["rk"].implode()) | pl.col("rk").is_in(list(added)))
             .filter(~pl.col("rk").is_in(list(removed)))
             .update(new_values, on="rk"))
    before = before.with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    after = after.sort("rk").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    with Store.open(tmp_path / "store.duckdb") as st:
        bk.write_all(st, bk.all_keys(before, rules)[1])
        cur = after.filter(pl.col("rk").is_in(list(added | changed)))
        plan = bk.plan_pairs(st, after.select("rid", "source", "rk"), cur,
                             pl.Series(sorted(removed | changed), dtype=pl.Int64), rules,
                             max_block=max_block, exclusive=exclusive)
    assert plan.dirty.to_list() == cur["rid"].to_list()
    fresh = bk.all_keys(cur, rules)[1]
    assert plan.new_keys.sort(pl.all()).equals(fresh.sort(pl.all()))
    full_before = _rk_pairs(generate_pairs(before, rules, max_block=max_block, exclusive=exclusive), before)
    full_after = _rk_pairs(generate_pairs(after, rules, max_block=max_block, exclusive=exclusive), after)
    flips = {p[:2] for p in _rk_pairs(plan.flip_pairs.with_columns(rule=pl.lit(0)), after)}
    remade = _rk_pairs(plan.pairs, after)
    stale = removed | changed | added
    stand = {p for p in full_before if p[0] not in stale and p[1] not in stale and p[:2] not in flips}
    assert stand.isdisjoint(remade)
    assert stand | remade == full_after
    # Every remade pair touches a dirty record or lies in a flipped block.
    assert all(a in stale or b in stale or (a, b) in flips for a, b, _ in remade)
    if max_block == 5:
        assert plan.flipped_members > 0 and plan.flip_pairs.height > 0  # the cap was crossed both ways


def test_a_full_runs_keys_are_each_rules_keys_hashed() -> None:
    """``_blockkeys.all_keys`` (one key table for all rules) gives every rule's key frames
    as ``rule_keys`` gives them one rule at a time, hashed with the stored seed, and one
    ``block_keys`` row per (rule, side, key, record)."""
    project = load_project(FIXTURES / "demo" / "project.yaml")
    records = with_rids(load_records(project)).with_columns((pl.col("rid") + 1000).alias("rk"))
    rules = project_rules(project, records)
    keys, rows = bk.all_keys(records, rules)
    want_rows = []
    for i, (rule, (left, right)) in enumerate(zip(rules, keys)):
        sides = rule_keys(records, rule)
        for side, got, want in ((0, left, sides[0]), (1, right, sides[1])):
            want = want.select(pl.col("rid").cast(pl.Int64), "source", pl.col("key").hash(seed=bk._SEED))
            assert got.sort(pl.all()).equals(want.sort(pl.all())), (rule.name, side)
            if side == 0 or not rule.symmetric:
                want_rows.append(want.select(pl.lit(i, pl.Int16).alias("rule"), pl.lit(side, pl.UInt8).alias("side"),
                                             pl.col("key").alias("h"), (pl.col("rid") + 1000).alias("rk")))
    assert sum(not r.symmetric for r in rules) > 0  # the demo's derived rules include an asymmetric one
    assert rows.sort(pl.all()).equals(pl.concat(want_rows).sort(pl.all()))
