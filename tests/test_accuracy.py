"""One test per accuracy mechanism, each on a small hand-made case showing what it fixes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from idweave.blocking import derive_rules, generate_pairs
from idweave.blocking.keys import canonical_names, key_values
from idweave.blocking.rules import Key, Rule
from idweave.linkage import link, load_project
from idweave.linkage.cluster import choose_threshold, cluster, completion_pairs
from idweave.linkage.explain import explain_pair
from idweave.linkage import comparisons, scoring, training
from idweave.linkage.model import TrainedModel
from idweave.linkage.training import refine_prior, regularise

REPO = Path(__file__).resolve().parents[1]
KINDS = {"first_name": "given_name", "last_name": "family_name", "birth_date": "date", "postcode": "postcode"}


def _records(rows: list[dict]) -> pl.DataFrame:
    base = {a: None for a in KINDS}
    return pl.DataFrame([{"rid": i, "source": "s", **base, **r} for i, r in enumerate(rows)],
                        schema={"rid": pl.Int64, "source": pl.Utf8, **{a: pl.Utf8 for a in KINDS}})


# ------------------------------------------------------------------ blocking
def test_nickname_key_blocks_bob_with_robert():
    recs = _records([{"first_name": "bob", "last_name": "smith"}, {"first_name": "robert", "last_name": "smith"}])
    plain = Rule((Key("first_name", "first_name", ("metaphone",)), Key("last_name", "last_name", ("metaphone",))))
    nick = Rule((Key("first_name", "first_name", ("nickname", "metaphone")),
                 Key("last_name", "last_name", ("metaphone",))))
    assert generate_pairs(recs, [plain]).height == 0
    assert generate_pairs(recs, [nick]).select("rid_l", "rid_r").rows() == [(0, 1)]


def test_ambiguous_nickname_keeps_every_formal_name():
    assert canonical_names("chris") == ["christian", "christina", "christopher"]
    assert key_values(pl.Series(["chris"]), ("nickname",))["key"].to_list() == canonical_names("chris")


def test_name_words_key_finds_a_surname_in_the_first_name_field():
    # A registry put the surname in the first-name field and left the surname empty.
    recs = _records([{"first_name": "hazlehurst", "birth_date": "1740-02-01"},
                     {"first_name": "tom", "last_name": "hazlehurst", "birth_date": "1740-02-01"}])
    rules = derive_rules(KINDS)
    words = [r for r in rules if any("+" in k.left for k in r.keys) and len(r.keys) == 2
             and r.keys[1].left == "birth_date" and not r.keys[1].transforms]
    assert words, [r.name for r in rules]
    assert generate_pairs(recs, words).select("rid_l", "rid_r").rows() == [(0, 1)]
    aligned = [r for r in rules if r.keys[0].left == "first_name" and len(r.keys) == 2
               and r.keys[1].left == "last_name"]
    assert generate_pairs(recs, aligned).height == 0


def test_rare_value_rule_uses_a_rare_word_alone_and_skips_a_common_one():
    rows = [{"first_name": "xavier", "last_name": "quenby"}, {"first_name": "q", "last_name": "quenby"}]
    rows += [{"first_name": f"p{i}", "last_name": "smith"} for i in range(30)]
    recs = _records(rows)
    rare = Rule((Key("first_name+last_name", "first_name+last_name", ("tokens", "metaphone")),), max_block=25)
    pairs = generate_pairs(recs, [rare])
    assert (0, 1) in pairs.select("rid_l", "rid_r").rows()
    # 30 "smith" records exceed the cap: none of their 435 pairs is made.
    assert pairs.height == 1


# ------------------------------------------------------------------ comparisons, trained on the demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("acc") / "demo"
    shutil.copytree(REPO / "fixtures" / "demo", d)
    p = yaml.safe_load((d / "project.yaml").read_text())
    p["store"] = "store.duckdb"
    (d / "project.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    link(d / "project.yaml")
    return d / "project.yaml"


def _score(project: Path, left: dict, right: dict) -> dict:
    proj = load_project(project)
    from idweave.linkage.graph import Store

    with Store.open(proj.store, read_only=True) as st:
        settings, tf, _ = st.latest_model()
    attrs = [c["output_column_name"] for c in settings["comparisons"]]
    recs = pl.DataFrame([{"rid": 0, **{a: left.get(a) for a in attrs}}, {"rid": 1, **{a: right.get(a) for a in attrs}}],
                        schema={"rid": pl.Int64, **{a: pl.Utf8 for a in attrs}})
    out = scoring.score_pairs(recs, pl.DataFrame({"rid_l": [0], "rid_r": [1], "rule": [0]},
                                                   schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32}),
                                TrainedModel(settings, tf))
    row = out.row(0, named=True)
    labels = {}
    for c in settings["comparisons"]:
        levels = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        g = row[f"level_{c['output_column_name']}"]
        labels[c["output_column_name"]] = "null" if g == -1 else levels[len(levels) - 1 - g]["label_for_charts"]
    return {"labels": labels, "w": {a: row[f"w_{a}"] for a in attrs}, "p": row["match_probability"]}


def test_nickname_level_counts_bob_as_robert(demo):
    s = _score(demo, {"first_name": "bob", "last_name": "smith"}, {"first_name": "robert", "last_name": "smith"})
    assert s["labels"]["first_name"] == "nickname or variant"
    assert s["w"]["first_name"] > 0
    other = _score(demo, {"first_name": "bob", "last_name": "smith"}, {"first_name": "mary", "last_name": "smith"})
    assert other["labels"]["first_name"] == "else" and other["w"]["first_name"] < 0


def test_other_field_level_rewards_a_swapped_name(demo):
    s = _score(demo, {"first_name": "smith", "last_name": "john"}, {"first_name": "john", "last_name": "smith"})
    assert s["labels"]["first_name"] == "found in the other name field"
    assert s["w"]["first_name"] > 0


def test_day_month_swap_is_not_a_disagreement(demo):
    s = _score(demo, {"birth_date": "1980-03-04"}, {"birth_date": "1980-04-03"})
    assert s["labels"]["birth_date"] == "one typo or day/month swapped"
    far = _score(demo, {"birth_date": "1980-03-04"}, {"birth_date": "1950-11-20"})
    assert s["w"]["birth_date"] > far["w"]["birth_date"]


def test_placeholder_identifier_is_missing_not_a_match(demo):
    s = _score(demo, {"ssn": None}, {"ssn": None})
    assert s["labels"]["ssn"] == "null" and s["w"]["ssn"] == 0


def test_trained_ladders_are_monotone(demo):
    proj = load_project(demo)
    settings = __import__("json").loads(proj.model_file.read_text())
    for c, lv in ((c, [x for x in c["comparison_levels"] if not x.get("is_null_level")
                       and x["label_for_charts"].removesuffix(comparisons.HOUSEHOLD_SUFFIX) not in training.SIDE_LEVELS
                       and x["label_for_charts"].endswith(comparisons.HOUSEHOLD_SUFFIX) == branch])
                  for c in settings["comparisons"] for branch in (False, True)):
        # A household branch (levels for pairs whose family names agree) is a ladder of its own.
        for upper, lower in zip(lv, lv[1:]):
            w_up = math.log2(upper["m_probability"] / upper["u_probability"])
            w_low = math.log2(lower["m_probability"] / lower["u_probability"])
            # A lift stops at m = 1 (a probability); otherwise more similar is never weaker.
            # In a household branch a level held at the floor lifts nothing (model._monotone).
            held = lv[0]["label_for_charts"].endswith(comparisons.HOUSEHOLD_SUFFIX) and lower["m_probability"] == training.MIN_M
            assert w_up >= w_low - 1e-9 or upper["m_probability"] == 1.0 or held, c["output_column_name"]
        assert all(x["m_probability"] >= training.MIN_M for x in lv)


def test_explain_weights_add_up_to_the_total(demo):
    proj = load_project(demo)
    from idweave.linkage.graph import Store
    from idweave.linkage._db import query_pl

    with Store.open(proj.store, read_only=True) as st:
        row = query_pl(st.con, "select source_l, record_id_l, source_r, record_id_r from links "
                               "order by match_probability desc limit 1").row(0)
    ex = explain_pair(demo, row[:2], row[2:])
    assert abs(ex.prior_weight + sum(c.weight for c in ex.comparisons) - ex.match_weight) < 1e-6


# ------------------------------------------------------------------ training
def test_regularise_lifts_a_degenerate_level_and_fills_an_untrained_one():
    s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
        {"sql_condition": "n", "label_for_charts": "null", "is_null_level": True},
        {"label_for_charts": "exact", "m_probability": 0.9, "u_probability": 0.01},
        {"label_for_charts": "close", "m_probability": 1e-15, "u_probability": 0.5},
        {"label_for_charts": "far"},
        {"label_for_charts": "else", "m_probability": 0.1, "u_probability": 0.98}]}]}
    notes = regularise(s)
    lv = s["comparisons"][0]["comparison_levels"]
    w = [math.log2(x["m_probability"] / x["u_probability"]) for x in lv[1:]]
    assert w[1] >= w[3] - 1e-9 and w[2] >= w[3] - 1e-9
    assert "level x: close: m 1e-15 raised to 0.005" in notes
    assert any(n.startswith("degenerate level x: close") for n in notes)
    assert any(n.startswith("untrained level x: far") for n in notes)


def test_refine_prior_finds_the_share_of_matching_pairs():
    # 100 certain matches and 900 certain non-matches among 100,000 possible pairs: the
    # prior must converge near 100 / 100,000 whatever it started at.
    settings = {"probability_two_random_records_match": 1e-7, "comparisons": []}
    old_w = math.log2(1e-7 / (1 - 1e-7))
    links = pl.DataFrame({"rid_l": range(1000), "rid_r": range(1, 1001),
                          "match_weight": [40.0 + old_w] * 100 + [-40.0 + old_w] * 900})
    links = links.with_columns((1 / (1 + 2 ** -pl.col("match_weight"))).alias("match_probability"))
    model, out = refine_prior(TrainedModel(settings), links, 100_000)
    assert abs(model.prior - 1e-3) / 1e-3 < 0.01
    assert out["match_probability"].head(100).min() > 0.999
    assert out["match_probability"].tail(900).max() < 1e-6


def test_m_from_labels(tmp_path):
    d = tmp_path / "tiny"
    shutil.copytree(REPO / "fixtures" / "tiny", d)
    shutil.copytree(REPO / "fixtures" / "labels", tmp_path / "labels")
    p = yaml.safe_load((d / "project.yaml").read_text())
    p["store"] = "store.duckdb"
    p["training"] = {"m_from_labels": "../labels/tiny_labels.csv"}
    (d / "project.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    r = link(d / "project.yaml")
    assert "m estimated from 52 labelled matching pairs" in r.summary["training_log"]
    assert not any(x.startswith("em pass") for x in r.summary["training_log"])


# ------------------------------------------------------------------ clustering
def _chain() -> pl.DataFrame:
    # Two true people {0,1,2} and {3,4,5}; one strong false link 2-3 bridges them.
    rows = [(0, 1, 0.99), (1, 2, 0.99), (0, 2, 0.98), (3, 4, 0.99), (4, 5, 0.99), (3, 5, 0.97), (2, 3, 0.95),
            (0, 3, 0.01), (1, 3, 0.01), (2, 4, 0.02), (2, 5, 0.01), (0, 4, 0.01), (1, 4, 0.01), (0, 5, 0.01),
            (1, 5, 0.01)]
    return pl.DataFrame(rows, schema={"rid_l": pl.Int64, "rid_r": pl.Int64, "match_probability": pl.Float64},
                        orient="row")


def test_average_linkage_does_not_chain_through_one_bridge():
    links = _chain()
    cc = cluster(links, range(6), threshold=0.9)
    av = cluster(links, range(6), threshold=0.9, method="average")
    assert cc["cluster"].n_unique() == 1
    assert av["cluster"].to_list() == [0, 0, 0, 3, 3, 3]


def test_completion_scores_the_pairs_blocking_missed():
    links = _chain().filter(pl.col("match_probability") > 0.5)
    # Within the one candidate cluster of 6 records, 15 pairs exist and 7 were scored.
    assert completion_pairs(links, range(6), threshold=0.9).height == 8


def test_exclusive_source_never_gets_two_records_in_one_entity():
    links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.99, 0.98]})
    out = cluster(links, range(3), threshold=0.9, exclusive={0: "tax", 2: "tax"})
    assert out["cluster"].to_list() == [0, 0, 2]


def _expected_f1(p: pl.Series, t: float) -> float:
    tp = float(p.filter(p >= t).sum())
    fp = float((p >= t).sum()) - tp
    fn = float(p.sum()) - tp
    return 2 * tp / (2 * tp + fp + fn)


def test_threshold_chosen_maximises_the_models_expected_f1():
    grid = [0.5, 0.9, 0.99]
    for p in (pl.Series([0.999] * 50 + [0.6] * 5 + [0.3] * 200), pl.Series([0.995] * 20 + [0.95] * 500)):
        t = choose_threshold(p, grid=grid)
        assert all(_expected_f1(p, t) >= _expected_f1(p, g) - 1e-12 for g in grid)
    # Only near-certain pairs above 0.99 and a mass at 0.95 counted as doubtful: 0.95 > F1/2
    # so the expected F1 still includes them.
    assert choose_threshold(pl.Series([0.995] * 20 + [0.95] * 500), grid=grid) == 0.5
    assert choose_threshold(pl.Series([], dtype=pl.Float64)) == 0.9
