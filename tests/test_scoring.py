"""Fast scoring (linkage/model.py: score_pairs) against Splink's own linker.

``score_pairs`` runs Splink's prediction SQL for a model as one DuckDB query, written once per
model; ``_score_pairs_splink`` builds a Splink linker and calls its ``predict``. On every pair
they must agree: the same rows in the same order with the same dtypes, the same levels, and
the same weights and probabilities bit for bit (term-frequency adjustments, nulls, derived
columns and numeric attributes included).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import FIXTURES, copy_fixture
from idweave.blocking.pairs import generate_pairs
from idweave.linkage import model as model_mod
from idweave.linkage import scoring, training
from idweave.linkage.project import project_rules, with_rids
from idweave.linkage.project import load_project
from idweave.linkage.sources import load_records


def all_pairs(n: int) -> pl.DataFrame:
    """Every pair of ``n`` records (rid_l < rid_r), rule 0."""
    idx = pl.int_range(0, n, eager=True)
    grid = pl.DataFrame({"rid_l": idx}).join(pl.DataFrame({"rid_r": idx}), how="cross")
    return grid.filter(pl.col("rid_l") < pl.col("rid_r")).with_columns(pl.lit(0, pl.Int32).alias("rule"))


def bits(s: pl.Series) -> np.ndarray:
    """A float column as its 64-bit patterns (so 0.0 and -0.0 differ, as NaNs would)."""
    assert s.dtype == pl.Float64 and s.null_count() == 0, s.name
    return s.to_numpy().view(np.uint64)


def assert_same_scores(fast: pl.DataFrame, ref: pl.DataFrame) -> None:
    """The fast path's frame is the linker's: columns, dtypes, row order, values bit for bit."""
    assert fast.schema == ref.schema
    assert fast.height == ref.height
    for c in fast.columns:
        if fast.schema[c] == pl.Float64:
            assert np.array_equal(bits(fast[c]), bits(ref[c])), c
        else:
            assert fast[c].to_list() == ref[c].to_list(), c


def comparisons(model: model_mod.TrainedModel) -> list[str]:
    return [c["output_column_name"] for c in model.comparisons()]


@pytest.fixture(scope="module")
def tiny() -> tuple[pl.DataFrame, model_mod.TrainedModel]:
    p = load_project(FIXTURES / "tiny" / "project.yaml")
    recs = with_rids(load_records(p))
    return recs, training.train(recs, p)


@pytest.fixture(scope="module")
def demo() -> tuple[pl.DataFrame, pl.DataFrame, model_mod.TrainedModel]:
    """The demo's records, its candidate pairs (as a full run blocks them) and its model."""
    p = load_project(FIXTURES / "demo" / "project.yaml")
    recs = with_rids(load_records(p))
    exclusive = [s.name for s in p.sources.values() if s.exclusive]
    pairs = generate_pairs(recs, project_rules(p, recs), exclusive=exclusive)
    return recs, pairs, training.train(recs, p)


def test_every_pair_of_tiny_scores_as_splinks_linker_does(tiny) -> None:
    recs, model = tiny
    pairs = all_pairs(recs.height)
    fast = scoring.score_pairs(recs, pairs, model)
    ref = scoring._score_pairs_splink(recs, pairs, model)
    assert_same_scores(fast, ref)
    assert fast.height == pairs.height
    # The pairs exercise what the fast path must get right: nulls (level -1) on every
    # attribute some source lacks, and term-frequency adjusted exact levels.
    for c in ("postcode", "ssn", "phone", "email", "sex"):
        assert (fast[f"level_{c}"] == -1).any(), c
    assert set(model.tf_tables) == {"first_name", "last_name", "postcode"}
    parts = scoring.scoring_parts(model.settings)
    for comp in parts.comparisons:
        c = comp["name"]
        base = pl.Series([comp["weights"][g] for g in fast[f"level_{c}"].to_list()])
        adjusted = fast.filter(pl.Series(bits(fast[f"w_{c}"]) != bits(base)))
        if comp["tf_column"] is not None:
            assert adjusted.height > 0, c  # the tf adjustment changed some weights
            assert set(adjusted[f"level_{c}"].to_list()) == set(comp["tf"]), c
        else:
            assert adjusted.height == 0, c


def test_weights_are_those_scoring_parts_gives(tiny) -> None:
    """w_c is ScoringParts.weight of the pair's level and term frequencies, bit for bit."""
    recs, model = tiny
    fast = scoring.score_pairs(recs, all_pairs(recs.height), model)
    parts = scoring.scoring_parts(model.settings)
    checked = 0
    for comp in parts.comparisons:
        c, col = comp["name"], comp["tf_column"]
        table = dict(model.tf_tables[col].iter_rows()) if col else {}
        values = recs[col].to_list() if col else None
        for gamma, l, r, w in fast.select(f"level_{c}", "rid_l", "rid_r", f"w_{c}").iter_rows():
            tf_l = table.get(values[l]) if col else None
            tf_r = table.get(values[r]) if col else None
            assert parts.weight(comp, gamma, tf_l, tf_r).hex() == w.hex(), (c, l, r)
            checked += 1
    assert checked == fast.height * len(parts.comparisons)


def test_every_candidate_pair_of_the_demo_scores_as_splinks_linker_does(demo) -> None:
    recs, pairs, model = demo
    assert pairs.height > 5000
    fast = scoring.score_pairs(recs, pairs, model)
    assert_same_scores(fast, scoring._score_pairs_splink(recs, pairs, model))
    # Every level of every comparison is reached, "nickname or variant" (a derived column's
    # level) and null included.
    for comp in model.comparisons():
        c = comp["output_column_name"]
        reached = set(fast[f"level_{c}"].to_list())
        want = set(range(-1, len(comp["comparison_levels"]) - 1))
        assert reached <= want and len(reached) >= 3, c
    assert set(fast["level_first_name"].to_list()) == set(range(-1, 8))


def test_values_missing_from_the_tf_tables(tiny) -> None:
    """Values a tf table lacks (new names, or a table holding only some values) have no
    term frequency: the other record's is used, and none at all adjusts nothing."""
    recs, model = tiny
    thinned = {c: t.gather_every(2) for c, t in model.tf_tables.items()}
    changed = recs.with_columns(
        pl.when(pl.col("rid") % 3 == 0).then(pl.col("first_name") + "x").otherwise(pl.col("first_name"))
        .alias("first_name"),
        pl.when(pl.col("rid") % 4 == 0).then(pl.lit("zz9 9zz")).otherwise(pl.col("postcode")).alias("postcode"))
    pairs = all_pairs(recs.height)
    sparse = model_mod.TrainedModel(model.settings, thinned)
    fast = scoring.score_pairs(changed, pairs, sparse)
    assert_same_scores(fast, scoring._score_pairs_splink(changed, pairs, sparse))
    # Exact agreements on values the thinned table holds and on values it does not.
    known = set(thinned["postcode"]["postcode"].to_list())
    pc = changed["postcode"].to_list()
    exact = fast.filter(pl.col("level_postcode") == 4)
    sides = [(pc[l] in known) for l in exact["rid_l"].to_list()]
    assert False in sides and True in sides
    assert "zz9 9zz" not in known and pc.count("zz9 9zz") > 1


OVERRIDES = """
  census_no: number
comparisons:
  first_name: {method: jaro_winkler, thresholds: [0.95, 0.85], term_frequency: true}
  last_name: {method: damerau_levenshtein, thresholds: [1, 2], term_frequency: true}
  full_name: {method: full_name, term_frequency: true}
  postcode: {method: address, term_frequency: true}
  sex: {method: exact, term_frequency: true}
  email: {method: levenshtein, thresholds: [2]}
  phone: identifier
"""


def test_other_ladders_and_a_numeric_attribute(tmp_path: Path) -> None:
    """Overridden ladders (tf on five comparisons, full names, edit distances) and a number
    (a Float64 column) score as the linker scores them."""
    project = copy_fixture("tiny", tmp_path / "tiny")
    text = project.read_text().replace("  email: email\nsources:", "  email: email" + OVERRIDES + "sources:")
    text = text.replace("postcode: zip, sex: sex}", "postcode: zip, sex: sex, census_no: person_no}")
    project.write_text(text)
    p = load_project(project)
    recs = with_rids(load_records(p))
    assert recs.schema["census_no"] == pl.Float64
    model = training.train(recs, p)
    assert "census_no" in comparisons(model) and "full_name" in comparisons(model)
    assert len(model.tf_tables) == 5
    pairs = all_pairs(recs.height)
    fast = scoring.score_pairs(recs, pairs, model)
    assert_same_scores(fast, scoring._score_pairs_splink(recs, pairs, model))
    assert set(fast["level_census_no"].to_list()) >= {-1, 0, 1}


def test_a_changed_model_is_not_scored_with_the_old_one(tiny) -> None:
    """The compiled SQL is kept per model (its settings): other parameters, other SQL."""
    recs, model = tiny
    pairs = all_pairs(recs.height)
    before = scoring.score_pairs(recs, pairs, model)
    compiled = scoring._compiled(model.settings)
    assert compiled is scoring._compiled(copy.deepcopy(model.settings))
    # The query evaluates the very level CASE statements scoring_parts hands out.
    assert all(g in compiled.vector_columns for g in scoring.scoring_parts(model.settings).gamma_sql)
    settings = copy.deepcopy(model.settings)
    settings["probability_two_random_records_match"] *= 2
    exact = settings["comparisons"][0]["comparison_levels"][1]
    exact["m_probability"] = exact["m_probability"] / 2
    other = model_mod.TrainedModel(settings, model.tf_tables)
    assert scoring._compiled(settings) is not scoring._compiled(model.settings)
    fast = scoring.score_pairs(recs, pairs, other)
    assert_same_scores(fast, scoring._score_pairs_splink(recs, pairs, other))
    moved = fast.filter(pl.col("level_first_name") == 7)
    assert moved.height and not np.array_equal(bits(moved["w_first_name"]),
                                                bits(before.filter(pl.col("level_first_name") == 7)["w_first_name"]))
    assert not np.array_equal(bits(fast["match_weight"]), bits(before["match_weight"]))
    # scoring_parts hands out copies: changing one leaves the kept parts alone.
    parts = scoring.scoring_parts(model.settings)
    parts.comparisons[0]["weights"].clear()
    assert scoring.scoring_parts(model.settings).comparisons[0]["weights"]


def test_input_order_and_dtypes(tiny) -> None:
    """Pairs in any order, rids as UInt32 and rules as Int64 give the linker's frame: rows
    ordered by (rid_l, rid_r), rids Int64, rule and levels Int32, weights Float64."""
    recs, model = tiny
    pairs = all_pairs(recs.height).sample(fraction=1.0, shuffle=True, seed=3).with_columns(
        pl.col("rid_l").cast(pl.UInt32), pl.col("rid_r").cast(pl.UInt32),
        (pl.col("rid_l") % 7).cast(pl.Int64).alias("rule"))
    small = recs.with_columns(pl.col("rid").cast(pl.UInt32))
    fast = scoring.score_pairs(small, pairs, model)
    assert_same_scores(fast, scoring._score_pairs_splink(small, pairs, model))
    assert fast.select("rid_l", "rid_r").equals(fast.select("rid_l", "rid_r").sort("rid_l", "rid_r"))
    assert fast.schema["rid_l"] == pl.Int64 and fast.schema["rule"] == pl.Int32
    assert fast["rule"].to_list() == [l % 7 for l in fast["rid_l"].to_list()]
    assert all(fast.schema[f"level_{c}"] == pl.Int32 and fast.schema[f"w_{c}"] == pl.Float64
               for c in comparisons(model))
    # Pairs naming a rid no record has are dropped, as the linker drops them.
    extra = pl.DataFrame({"rid_l": [0, 1], "rid_r": [10_000, 2], "rule": [1, 1]},
                         schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32})
    got = scoring.score_pairs(recs, extra, model)
    assert got.select("rid_l", "rid_r").rows() == [(1, 2)]
    assert_same_scores(got, scoring._score_pairs_splink(recs, extra, model))
    empty = scoring.score_pairs(recs, extra.head(0), model)
    assert empty.height == 0 and empty.schema == fast.schema


def test_a_model_without_a_tf_table_is_scored_by_the_linker(tiny) -> None:
    """A model whose tf tables were not all kept: Splink computes the missing term
    frequencies from the records given, so such a model is scored by a linker, and as
    before ``w_c`` holds no tf adjustment for a comparison without its table."""
    recs, model = tiny
    partial = model_mod.TrainedModel(model.settings, {"first_name": model.tf_tables["first_name"]})
    pairs = all_pairs(recs.height)
    got = scoring.score_pairs(recs, pairs, partial)
    assert_same_scores(got, scoring._score_pairs_splink(recs, pairs, partial))
    full = scoring.score_pairs(recs, pairs, model)
    parts = scoring.scoring_parts(model.settings)
    weights = next(c for c in parts.comparisons if c["name"] == "last_name")["weights"]
    base = pl.Series([weights[g] for g in got["level_last_name"].to_list()])
    assert np.array_equal(bits(got["w_last_name"]), bits(base))
    assert not np.array_equal(bits(full["w_last_name"]), bits(base))
    assert np.array_equal(bits(got["w_first_name"]), bits(full["w_first_name"]))
