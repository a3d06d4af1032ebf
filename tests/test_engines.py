"""The engines (``linkage/engine.py``): the same model on DuckDB and on Spark puts every pair
on the same level with the same match probability, and Spark clusters component by
component as the driver does (training on Spark: ``tests/test_engines_e2e.py``).

The tests marked ``spark`` need pyspark and a Java runtime (``.ci/run`` installs both); they
are skipped, saying so, where either is missing, and deselected with ``-m "not spark"``. They
share one SparkSession (a module fixture: it takes 5-20 s and ~3 GB to start) and are kept
few and small. Nothing here is timed.
"""

from __future__ import annotations

import re

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES
from idweave.blocking import generate_pairs
from idweave.linkage import _levels, _splink, engine, training
from idweave.linkage.comparisons import build_settings, input_columns, prepare
from idweave.linkage.project import load_project, project_rules, with_rids
from idweave.linkage.scoring import score_pairs
from idweave.linkage.sources import load_records

# Every comparison method and kind, with the trickiest values found for each: Jaro-Winkler
# values on which the Splink jar and DuckDB disagree (elltiot/elliot) or that DuckDB rounds
# with a fused multiply-add ("c "/"ca b bcaaba"), initials, nicknames, multi-word names,
# swapped day and month, an impossible date, transposed identifiers, phone suffixes,
# postcode districts, e-mail user names, numbers within 1 % and 10 %.
VALUES = {
    "g": ["elltiot", "elliot", "bob", "robert", "j", "john", "mary ann", "ann", "c ", "ca b bcaaba", None, "eliot"],
    "f": ["smith", "smyth", "garcia lopez", "garcia", "elliot", "elltiot", "o'neil", "oneil", None, "smith", "j",
          "jones"],
    "n": ["ann smith", "smith ann", "anne smith", "bob jones", "jones bob", "b jones", None, "elltiot x",
          "elliot x", "x", "ann  smith", "ann smith"],
    "d": ["1980-01-02", "1980-02-01", "1980-01-03", "1981-01-02", "1990-06-15", "2020-02-30", None, "1980-01-02",
          "2020-03-01", "1979-12-31", "1970-01-01", "1980-12-01"],
    "s": ["f", "m", "f", None, "m", "f", "f", "m", "f", "m", None, "f"],
    "pc": ["sw1a 1aa", "sw1a 1ab", "sw1a1aa", "sw2b 3cc", "e1 6an", None, "sw1a 2aa", "ec1a 1bb", "e1 6na",
           "sw1a 1aa", "n1", "sw"],
    "a": ["10 high street", "10 high st", "12 high street", "10 low road", None, "flat 2 10 high street",
          "10 high street", "high street 10", "1 main road", "2 main road", "main", "10 high street"],
    "c": ["london", "londn", "leeds", None, "london", "lodnon", "york", "york", "leeds", "london", "l", "lonodn"],
    "id": ["123456789", "123456798", "123456780", None, "987654321", "123456789", "12345678", "1234567890",
           "223456789", "123456789", "x", "123456789"],
    "ph": ["07700900123", "07700900132", "01632900123", "7700900123", None, "07700900123", "447700900123",
           "07700900999", "0770090012", "07700900123", "1", "07700900123"],
    "e": ["ann.smith@example.com", "ann.smith@example.org", "anne.smith@example.com", "bob@example.com", None,
          "ann.smyth@example.com", "ann.smith@example.com", "a@b", "elltiot@x.org", "elliot@x.org", "@", "x"],
    "t": ["acme limited", "acme ltd", "acme limted", None, "zenith", "zenit", "acme limited", "a", "b", "",
          "elltiot", "elliot"],
    "num": [100.0, 100.5, 109.0, 111.0, None, 0.0, -100.0, -100.9, 1e6, 1.01e6, 99.0, 100.0],
    "lv": ["kitten", "sitting", "kitten", None, "abc", "acb", "ab", "ba", "", "a", "kitten", "kitte"],
    "dl": ["abcd", "abdc", "acbd", "badc", None, "abcd", "ca", "abc", "", "x", "abcd", "abcde"],
}
KINDS = {"g": "given_name", "f": "family_name", "n": "full_name", "d": "date", "s": "sex", "pc": "postcode",
         "a": "address", "c": "city", "id": "national_id", "ph": "phone", "e": "email", "t": "text",
         "num": "number", "lv": "text", "dl": "text"}
OVERRIDES = {"n": "full_name", "lv": "levenshtein", "dl": "damerau_levenshtein"}


@pytest.fixture(scope="module")
def every_ladder(tmp_path_factory) -> tuple[dict, pl.DataFrame]:
    """Settings with every comparison method (and household branches), and records of the
    values above, prepared as a model reads them."""
    d = tmp_path_factory.mktemp("ladders")
    cols = list(KINDS)
    (d / "people.csv").write_text(",".join(["pid", *cols]) + "\n" + ",".join(["1", *["x"] * len(cols)]) + "\n")
    (d / "project.yaml").write_text(
        "store: out/s.duckdb\nattributes:\n" + "".join(f"  {c}: {k}\n" for c, k in KINDS.items())
        + "comparisons:\n" + "".join(f"  {c}: {m}\n" for c, m in OVERRIDES.items())
        + "sources:\n  people:\n    path: people.csv\n    id: pid\n    columns: {"
        + ", ".join(f"{c}: {c}" for c in cols) + "}\n")
    s = build_settings(load_project(d / "project.yaml"))
    recs = pl.DataFrame({"rid": list(range(12)), **VALUES},
                        schema_overrides={"num": pl.Float64, **{c: pl.Utf8 for c in cols if c != "num"}})
    return s, prepare(recs, input_columns(s))


def _pair_table(recs: pl.DataFrame) -> pl.DataFrame:
    """Every pair of records (both orders), columns ``c_l`` and ``c_r``."""
    left = recs.rename({c: f"{c}_l" for c in recs.columns})
    right = recs.rename({c: f"{c}_r" for c in recs.columns})
    return left.join(right, how="cross").filter(pl.col("rid_l") != pl.col("rid_r"))


def _case(levels: list[dict], render) -> str:
    """The position of the first level a pair reaches (Splink's CASE, in ladder order)."""
    whens = " ".join(f"WHEN {render(lv['sql_condition'])} THEN {i}" for i, lv in enumerate(levels)
                     if lv["sql_condition"] != "ELSE")
    return f"CASE {whens} ELSE {len(levels) - 1} END"


def _gammas_sql(s: dict, render, quote: str) -> str:
    cases = ", ".join(f"{_case(c['comparison_levels'], render)} AS {quote}{c['output_column_name']}{quote}"
                      for c in s["comparisons"])
    return f"SELECT rid_l, rid_r, {cases} FROM pairs ORDER BY rid_l, rid_r"


def test_every_ladder_renders_for_spark_without_duckdb_sql(every_ladder) -> None:
    s, _ = every_ladder
    rendered = engine.render_settings(s, "spark")
    conds = [lv["sql_condition"] for c in rendered["comparisons"] for lv in c["comparison_levels"]]
    assert len(conds) > 60 and all(not re.search(r'"[A-Za-z0-9_]+_[lr]"', q) for q in conds)
    text = " ".join(conds).lower()
    for duckdb_only in ("jaro_winkler_similarity", "list_has_any", "list_intersect", "string_split", "date_diff",
                        "len", "damerau_levenshtein"):
        assert not re.search(rf"\b{duckdb_only}\(", text), duckdb_only
    assert engine.JW_UDF.lower() in text and engine.DL_UDF.lower() in text and "arrays_overlap" in text
    # the stored (DuckDB) form is left as it is
    assert engine.render_settings(s, "duckdb") == s


def test_an_unknown_function_is_refused_for_spark_naming_it() -> None:
    from idweave.linkage.errors import ModelError

    with pytest.raises(ModelError, match="jaro_similarity"):
        engine.render_condition('jaro_similarity("a_l", "a_r") >= 0.9', "spark")


def test_training_rules_render_in_each_dialect() -> None:
    p = load_project(FIXTURES / "demo" / "project.yaml")
    present = set(VALUES) | {"first_name", "last_name", "birth_date", "ssn", "email"}
    rules = [r for _, r in training._em_rules(p, present)] + training._prior_rules(p, present)
    assert rules
    for r in rules:
        duck = r.get_blocking_rule("duckdb").blocking_rule_sql
        spark = r.get_blocking_rule("spark").blocking_rule_sql
        assert 'l."' in duck and "`" in spark and '"' not in spark


_TEXT = st.text(alphabet="abcde é", max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=40))
def test_the_spark_similarities_are_duckdbs_bit_for_bit(pairs) -> None:
    """The functions the Spark UDFs compute (``engine.jaro_winkler``, ``_levels``) give
    DuckDB's own values exactly: Jaro-Winkler (its float operations included; the port the
    lookup fast path uses too), Damerau-Levenshtein and hash."""
    pairs = [*pairs, ("elltiot", "elliot"), ("c ", "ca b bcaaba")]
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE t AS SELECT unnest(?) AS a, unnest(?) AS b, unnest(?) AS i",
                    [[a for a, _ in pairs], [b for _, b in pairs], list(range(-len(pairs), len(pairs), 2))])
        rows = con.execute("SELECT a, b, i, jaro_winkler_similarity(a, b), damerau_levenshtein(a, b), hash(a), "
                           "hash(i::BIGINT) FROM t").fetchall()
    finally:
        con.close()
    for a, b, i, jw, dl, ha, hi in rows:
        assert _levels.duckdb_jaro_winkler(a, b) == jw, (a, b)
        assert engine.jaro_winkler(a, b) == jw, (a, b)  # the Spark UDF's
        assert _levels.damerau_levenshtein(a, b) == dl, (a, b)
        assert _levels.duckdb_hash(a) == ha and _levels.duckdb_hash(i) == hi, (a, i)


# --------------------------------------------------------------------------------------
# on Spark
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spark():
    """The Spark engine (``local[2]``), skipped with the reason when pyspark or Java is missing."""
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[test]')")
    why = engine.spark_available()
    if why:
        pytest.skip(why)
    return engine.get_engine("spark", master="local[2]")


@pytest.fixture(scope="module")
def demo():
    """The demo fixture's records, its candidate pairs and a model trained on DuckDB."""
    p = load_project(FIXTURES / "demo" / "project.yaml")
    recs = with_rids(load_records(p))
    return p, recs, generate_pairs(recs, project_rules(p, recs)), training.train(recs, p)


@pytest.mark.spark
def test_every_ladder_puts_every_pair_on_duckdbs_level_on_spark(spark, every_ladder) -> None:
    s, recs = every_ladder
    pairs = _pair_table(recs)
    con = duckdb.connect()
    try:
        con.register("pairs", pairs.to_arrow())
        want = con.sql(_gammas_sql(s, lambda q: q, '"')).pl()
    finally:
        con.close()
    with spark.session("a test") as session:
        session.createDataFrame(pairs.to_arrow()).createOrReplaceTempView("pairs")
        got = pl.from_arrow(session.sql(_gammas_sql(s, lambda q: engine.render_condition(q, "spark"), "`"))
                            .toArrow())
        # the reason for the UDF: the Splink jar's own Jaro-Winkler is another function
        _splink.db_api(session, "spark")  # registers the jar's functions in this session
        jar = session.sql("SELECT jaro_winkler('elltiot', 'elliot') AS j").collect()[0]["j"]
    assert round(jar, 4) == 0.9083 and round(_levels.duckdb_jaro_winkler("elltiot", "elliot"), 4) == 0.9278
    assert got.height == pairs.height == 132
    got = got.with_columns(pl.all().cast(pl.Int64))
    assert got.equals(want.with_columns(pl.all().cast(pl.Int64))), got.join(
        want, on=["rid_l", "rid_r"], suffix="_duckdb").head(5)


@pytest.mark.spark
def test_spark_scores_the_demo_as_duckdb_does(spark, demo) -> None:
    """One model (trained on DuckDB), the demo's candidate pairs: the same pairs on the same
    levels (gamma) with the same weights and match probabilities within 1e-9."""
    p, recs, pairs, model = demo
    want = score_pairs(recs, pairs, model)
    got = score_pairs(recs, pairs, model, engine=spark)
    assert got.columns == want.columns and got.height == want.height == pairs.height > 1000
    assert got.select("rid_l", "rid_r", "rule", "^level_.*$").equals(want.select("rid_l", "rid_r", "rule",
                                                                                 "^level_.*$"))
    for c in [c for c in want.columns if c.startswith("w_")] + ["match_weight", "match_probability"]:
        assert (got[c] - want[c]).abs().max() <= 1e-9, c


@pytest.mark.spark
@pytest.mark.parametrize("method", ["average", "components"])
def test_spark_clusters_component_by_component_as_the_driver_does(spark, demo, method) -> None:
    """Connected components in Spark, then each component clustered in an executor by
    ``cluster.cluster`` (applyInPandas): the driver's clusters exactly, exclusivity included."""
    from idweave.linkage.cluster import cluster

    p, recs, pairs, model = demo
    links = score_pairs(recs, pairs, model).select("rid_l", "rid_r", "match_probability")
    exclusive = {r: s for r, s in recs.filter(pl.col("source").is_in([n for n, src in p.sources.items()
                                                                      if src.exclusive]))
                 .select("rid", "source").iter_rows()}
    assert exclusive
    # a threshold at which components are several records, and exclusivity and averages bite
    want = cluster(links, recs["rid"], threshold=0.5, exclusive=exclusive, method=method).select("rid", "cluster")
    got = engine.cluster_on(spark, links, recs["rid"], threshold=0.5, exclusive=exclusive, method=method)
    assert got.height == recs.height and want["cluster"].n_unique() < recs.height
    want = want.with_columns(pl.col("rid").cast(pl.Int64), pl.col("cluster").cast(pl.Int64)).sort("rid")
    assert got.equals(want), got.join(want, on="rid", suffix="_driver").filter(
        pl.col("cluster") != pl.col("cluster_driver"))


@pytest.mark.spark
def test_a_spark_session_takes_the_projects_runtime_settings(spark) -> None:
    """``conf`` settings that a running session can take (``spark.sql.*``) hold in the
    engine's session even though the process's SparkSession was made before, with others."""
    eng = engine.get_engine("spark", master="local[2]", conf={"spark.sql.shuffle.partitions": "3"})
    with eng.session("a test") as session:
        assert session.conf.get("spark.sql.shuffle.partitions") == "3"
        assert session.conf.get("spark.sql.session.timeZone") == "UTC"
    with spark.session("a test") as session:
        assert session.conf.get("spark.sql.shuffle.partitions") == "4"
