"""Derived blocking whose cost is bounded as the data grow (issue 14): caps that follow the
number of records, blocks above a cap that are sharpened by one more key instead of dropped,
the pair budget, and what ``count-pairs`` shows of them. On populations of the project's
seeded generator (fixtures/generate.py), written to tmp_path; ``scale_from`` (the size up to
which derived rules are as they always were) is set small so that small data scale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from idweave.blocking import count_pairs, derive_rules, generate_pairs, rule_pairs
from idweave.blocking import rules as rules_mod
from idweave.blocking.pairs import key_table, pair_budget, pairs_from_keys, rule_keys
from idweave.blocking.rules import PAIR_BUDGET, SCALE_FROM, Rule, scale_factor, scaled_cap
from idweave.linkage.project import load_project, with_rids
from idweave.linkage.sources import load_records

from conftest import run_cli, table_rows

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KINDS = {"fn": "given_name", "ln": "family_name", "dob": "date", "pc": "postcode", "town": "city"}


def _gen():
    spec = importlib.util.spec_from_file_location("generate", FIXTURES / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


@pytest.fixture(scope="module")
def populations(tmp_path_factory) -> dict[int, tuple[Path, pl.DataFrame]]:
    """Project file and records of two generated populations, one four times the other."""
    gen = _gen()
    out = {}
    for people in (1500, 6000):
        d = tmp_path_factory.mktemp(f"people{people}")
        gen.write(gen.generate(people, 14), d)
        project = d / "project.yaml"
        out[people] = (project, with_rids(load_records(load_project(project))))
    return out


def _truth(records: pl.DataFrame, project: Path) -> pl.DataFrame:
    """``rid``, ``person`` from the generated files' ``true_person`` column."""
    frames = _gen().read(project.parent)
    ids = {"census": "person_no", "tax": "tin_row", "benefits": "claim_id"}
    truth = pl.concat([f.select(pl.lit(s).alias("source"), pl.col(ids[s]).cast(pl.Utf8).alias("record_id"),
                                pl.col("true_person").alias("person")) for s, f in frames.items()])
    return records.select("rid", "source", "record_id").join(truth, on=["source", "record_id"]).select("rid", "person")


def _recall(pairs: pl.DataFrame, truth: pl.DataFrame) -> float:
    sizes = truth.group_by("person").len()
    total = int((sizes["len"] * (sizes["len"] - 1) // 2).sum())
    found = (pairs.join(truth.rename({"rid": "rid_l", "person": "p_l"}), on="rid_l")
             .join(truth.rename({"rid": "rid_r", "person": "p_r"}), on="rid_r").filter(pl.col("p_l") == pl.col("p_r")))
    return found.height / total


# ------------------------------------------------------------------ caps follow N
def test_up_to_scale_from_the_rules_are_as_they_always_were() -> None:
    assert derive_rules(KINDS, SCALE_FROM) == derive_rules(KINDS) == derive_rules(KINDS, 1000)
    assert all(r.sharpens is None for r in derive_rules(KINDS, SCALE_FROM))


def test_caps_shrink_with_n_in_steps_and_rare_value_caps_stay() -> None:
    base = {r.name: r for r in derive_rules(KINDS)}
    caps = {}
    for factor in (2, 4, 16, 256):
        rules = derive_rules(KINDS, 1000 * factor, scale_from=1000)
        assert scale_factor(1000 * factor, 1000) == factor
        plain = [r for r in rules if r.sharpens is None]
        assert [r.keys for r in plain] == [r.keys for r in base.values()]
        for r, b in zip(plain, base.values()):
            # A rare-value rule keeps its cap; a conjunction's follows N.
            assert r.max_block == (b.max_block if b.max_block is not None else scaled_cap(400, 1000 * factor, 1000))
        caps[factor] = next(r.max_block for r in plain if len(r.keys) == 2)
    assert caps[2] > caps[4] > caps[16] > caps[256] >= 2
    # Within one doubling the rules do not change (an incremental run rarely crosses one).
    assert derive_rules(KINDS, 4100, scale_from=1000) == derive_rules(KINDS, 7900, scale_from=1000)


def test_every_sharpening_rule_is_its_parent_plus_one_key() -> None:
    rules = derive_rules(KINDS, 64_000, scale_from=1000)
    by_name = {r.name: r for r in rules}
    children = [r for r in rules if r.sharpens is not None]
    assert children
    for c in children:
        parent = by_name[c.sharpens]
        assert c.keys[:-1] == parent.keys and c.max_block == parent.max_block
        # The added key reads an attribute the parent's keys do not (sharpening, not repeating).
        assert c.keys[-1].left not in {side for k in parent.keys for side in (k.left, k.right)}
        assert rules.index(c) > rules.index(parent)


def test_a_rule_is_sharpened_by_each_useful_key_on_its_own() -> None:
    rules = derive_rules(KINDS, 64_000, scale_from=1000)
    conjunctions = [frozenset(r.keys) for r in derive_rules(KINDS) if r.max_block is None]
    by_name = {r.name: r for r in rules}
    # One rule per set of keys.
    assert len({frozenset(r.keys) for r in rules}) == len(rules)
    for c in (r for r in rules if r.sharpens is not None):
        parent = by_name[c.sharpens]
        # No split holds every key of another derived conjunction (name & town split by
        # the year would be name & year with one key more: that rule makes those pairs).
        root = frozenset(_root(c, by_name).keys)
        assert not any(k <= frozenset(c.keys) for k in conjunctions if k != root)
        # A conjunction is not split by the initial of a name it already reads.
        if _root(c, by_name).max_block is None:
            assert not c.keys[-1].attributes() & parent.attributes
    # Each key splits a rule's big blocks on its own (a mistyped year still leaves the
    # postcode district): surname & birth date's month and day is split by the district
    # and by the town, side by side, not one inside the other.
    md = next(r for r in rules if r.sharpens is None and [str(k) for k in r.keys] == ["ln:metaphone", "dob:month_day"])
    assert [[str(k) for k in r.keys[2:]] for r in rules if r.sharpens == md.name] == [["pc:district"], ["town"]]


def _root(rule: Rule, by_name: dict[str, Rule]) -> Rule:
    """The derived rule a chain of sharpening rules starts from."""
    while rule.sharpens is not None:
        rule = by_name[rule.sharpens]
    return rule


# ------------------------------------------------------------------ too big: sharpened, not dropped
def test_a_too_big_block_sharpens_instead_of_vanishing(populations) -> None:
    project, records = populations[6000]
    kinds = {a.name: a.kind for a in load_project(project).attributes.values()
             if records[a.name].null_count() < records.height}
    rules = derive_rules(kinds, records.height, scale_from=records.height // 16)
    stats_rules = [(i, r) for i, r in enumerate(rules) if r.sharpens is None]
    checked = 0
    for i, parent in stats_rules:
        child = next((r for r in rules if r.sharpens == parent.name), None)
        if child is None:
            continue
        left, _ = rule_keys(records, parent)
        sizes = left.select("key", "rid").unique().group_by("key").len()
        big = sizes.filter(pl.col("len") > parent.max_block)
        if not big.height or not parent.symmetric:
            continue
        members = left.join(big.select("key"), on="key", how="semi")
        # The pairs inside the parent's too-big blocks that it does not make (through a small
        # block of another of their keys, nicknames giving several) ...
        inside = (members.join(members, on="key", suffix="_r").filter(pl.col("rid") < pl.col("rid_r"))
                  .select(pl.col("rid").alias("rid_l"), "rid_r").unique())
        dropped = inside.join(rule_pairs(records, parent), on=["rid_l", "rid_r"], how="anti")
        assert dropped.height > 0
        # ... are made by the sharpening rule when they also agree on its key.
        sharpened = rule_pairs(records, child).join(dropped, on=["rid_l", "rid_r"], how="semi")
        assert 0 < sharpened.height < dropped.height
        assert sharpened.join(generate_pairs(records, rules), on=["rid_l", "rid_r"], how="anti").height == 0
        checked += 1
    assert checked >= 2


def test_sharpening_inside_the_parents_big_blocks_only_makes_the_same_pairs(populations) -> None:
    """generate_pairs pairs a sharpening rule only inside its parent's too-big blocks; the
    incremental path (pairs_from_keys on stored keys) pairs it everywhere: the same pairs,
    with the same first rule."""
    _, records = populations[6000]
    kinds = {"first_name": "given_name", "last_name": "family_name", "birth_date": "date", "postcode": "postcode"}
    rules = derive_rules(kinds, records.height, scale_from=records.height // 16)
    assert any(r.sharpens for r in rules)
    want = pairs_from_keys(key_table(records, rules), rules, exclusive=["tax"])
    assert generate_pairs(records, rules, exclusive=["tax"]).equals(want)


# ------------------------------------------------------------------ the budget
def test_pairs_per_record_stay_within_the_budget_as_n_grows(populations) -> None:
    (_, small), (p_large, large) = populations[1500], populations[6000]
    kinds = {a.name: a.kind for a in load_project(p_large).attributes.values()}
    excl = ["tax"]

    def ppr(records: pl.DataFrame, rules: list[Rule]) -> float:
        return generate_pairs(records, rules, exclusive=excl).height / records.height

    at_small = ppr(small, derive_rules(kinds, small.height, scale_from=small.height))
    unscaled = ppr(large, derive_rules(kinds, large.height, scale_from=large.height))
    # As if the large population were 16 times the size the rules start scaling at.
    scaled_rules = derive_rules(kinds, large.height, scale_from=large.height // 16)
    scaled = ppr(large, scaled_rules)
    # Without scaling the cost per record grows with N; the scaled caps cut it back, within
    # the budget ...
    assert unscaled > 1.3 * at_small
    assert scaled < unscaled
    assert scaled * large.height <= pair_budget(large.height) and pair_budget(large.height) == PAIR_BUDGET * large.height
    # ... and the sharpened blocks keep the true pairs the dropped ones lost.
    truth = _truth(large, p_large)
    before = _recall(generate_pairs(large, derive_rules(kinds), exclusive=excl), truth)
    after = _recall(generate_pairs(large, scaled_rules, exclusive=excl), truth)
    assert after >= before


# ------------------------------------------------------------------ count-pairs shows it
def test_count_pairs_reports_budget_caps_and_sharpening(populations) -> None:
    _, records = populations[6000]
    rules = derive_rules({"fn": "given_name", "ln": "family_name", "dob": "date"}, records.height,
                         scale_from=records.height // 16)
    recs = records.rename({"first_name": "fn", "last_name": "ln", "birth_date": "dob"})
    df = count_pairs(recs, rules).filter(pl.col("sources") == "all")
    assert df["budget"].unique().to_list() == [PAIR_BUDGET * recs.height]
    assert df["cap"].to_list() == [r.max_block for r in rules]
    assert df["sharpens"].to_list() == [r.sharpens for r in rules]
    # A sharpening rule makes only the pairs inside its parent's too-big blocks.
    for r, made in zip(rules, df["pairs_made"].to_list()):
        assert made == rule_pairs(recs, r).height if r.sharpens is None else made < rule_pairs(recs, r).height
    sharpened = df.filter(pl.col("big_blocks") == "sharpened")
    assert sharpened.height and set(sharpened["rule"]) <= set(df["sharpens"].drop_nulls())
    assert (df.filter(pl.col("skipped_blocks") == 0)["big_blocks"] == "").all()


def test_count_pairs_command_shows_the_budget_and_what_sharpened(populations, monkeypatch) -> None:
    project, records = populations[6000]
    monkeypatch.setattr(rules_mod, "SCALE_FROM", records.height // 16)
    result = run_cli("count-pairs", project)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    budget = next(line for line in lines if line.startswith("budget:"))
    made = int(lines[-1].split()[1].replace(",", ""))
    assert budget.startswith(f"budget: {PAIR_BUDGET} pairs per record x {records.height:,} records = "
                             f"{PAIR_BUDGET * records.height:,} pairs")
    assert f"{made / records.height:.1f} per record" in result.out
    rows = table_rows(result.out.split("candidate pairs: all sources")[1])
    by_index = {r[5]: r for r in rows}
    sharpened = [r for r in rows if r[8].startswith("sharpened by #")]
    assert sharpened
    for r in sharpened:
        # "sharpened by #k": rule k names this rule as the one it sharpens, with the same cap.
        child = by_index[r[8].removeprefix("sharpened by #")]
        assert child[0].endswith(f"(sharpens #{r[5]})") and child[6] == r[6]
        assert int(r[4].replace(",", "")) > 0
    assert {r[8] for r in rows} <= {"", "dropped"} | {r[8] for r in sharpened}
    assert sum(int(r[1].replace(",", "")) for r in rows) == made
