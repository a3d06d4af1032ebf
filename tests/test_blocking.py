"""Blocking: keys and rules as data, pair generation and counts on a hand-made frame
(exact), exclusivity, the swapped-name key, the big-block cap, and derived rules."""

from __future__ import annotations

import polars as pl
import pytest

from conftest import FIXTURES
from idweave.blocking import (
    PairStats, Key, Rule, count_pairs, derive_rules, generate_pairs, parse_rules, rule_pairs,
)
from idweave.linkage import load_project
from idweave.linkage.pipeline import project_rules, with_rids
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
                          "share_of_possible", "skipped_blocks"]
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
