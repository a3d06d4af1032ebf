"""The adapter to Splink: the only module of idweave that imports splink.

Everything idweave does with Splink's internals (attributes and functions Splink does not
publish, which a new Splink may rename or move) is one named function here, and
:data:`INTERNALS` lists each internal they touch: ``tests/test_splink_adapter.py`` checks
every one on the installed Splink, one test each, and fails naming the one that moved. A
use of an internal that moved also fails at run time as a :class:`~idweave.linkage.errors.ModelError`
naming it, not somewhere deep inside Splink. Splink is imported inside the functions, never
when this module is: a run that scores with a stored model does not load it.

>>> splink_version().split(".")[0]
'5'
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

import duckdb
import polars as pl

from idweave.linkage.errors import ModelError

__all__ = [
    "INTERNALS", "splink_version", "dist_version", "engine", "engine_errors", "db_api", "make_linker",
    "linker_prior", "set_linker_prior", "linker_settings", "restore_linker_settings", "is_em_training_error",
    "em_step_replaced", "scoring_reading", "block_on", "spark_jar", "SPARK_HASH_UDF", "connected_components",
]

# Splink's internals the functions below use: (where, attribute) -> what for.
INTERNALS: dict[tuple[str, str], str] = {
    ("Linker", "_settings_obj"): "the linker's settings: its prior, kept and put back around an EM pass",
    ("Settings", "_probability_two_random_records_match"): "the prior (no public setter)",
    ("Settings", "core_model_settings"): "the comparisons an EM pass changes (kept, put back on failure)",
    ("Settings", "comparisons"): "the comparisons, parsed and numbered",
    ("Settings", "column_info_settings"): "the unique id column (``unique_id_input_columns``)",
    ("Settings", "_term_frequency_columns"): "tf columns (``input_name``, ``name``, ``tf_name``)",
    ("Settings", "_columns_to_select_for_blocking"): "the columns of a blocked pair",
    ("Settings", "_columns_to_select_for_comparison_vector_values"): "the comparison vector columns",
    ("Comparison", "comparison_levels"): "the levels, numbered as Splink numbers them",
    ("Comparison", "output_column_name"): "the comparison's name",
    ("Comparison", "_case_statement"): "the CASE giving the level (gamma)",
    ("Comparison", "_gamma_column_name"): "the gamma column of the prediction SQL",
    ("Comparison", "_mw_column_name"): "the match weight column of the prediction SQL",
    ("Comparison", "_mw_tf_adj_column_name"): "the tf adjustment column of the prediction SQL",
    ("Comparison", "_has_tf_adjustments"): "whether the comparison adjusts for term frequency",
    ("ComparisonLevel", "comparison_vector_value"): "the level's gamma",
    ("ComparisonLevel", "is_null_level"): "the null level",
    ("ComparisonLevel", "_match_weight"): "the level's match weight",
    ("ComparisonLevel", "_has_tf_adjustments"): "whether the level adjusts for term frequency",
    ("ComparisonLevel", "_tf_adjustment_weight"): "the level's tf adjustment weight",
    ("ComparisonLevel", "_is_else_level"): "the else level",
    ("ComparisonLevel", "_u_probability_corresponding_to_exact_match"): "u of the exact level (tf adjustment)",
    ("ComparisonLevel", "_tf_minimum_u_value"): "the smallest u a tf adjustment uses",
    ("ComparisonLevel", "_tf_adjustment_input_column"): "the tf column (``input_name``)",
    ("splink.internals.settings_creator", "SettingsCreator"): "a model's settings read as Splink reads them",
    ("splink.internals.predict", "predict_from_comparison_vectors_sqls_using_settings"):
        "Splink's prediction SQL (match weights, then probability)",
    ("splink.internals.expectation_maximisation", "compute_proportions_for_new_parameters"):
        "EM's maximisation step, replaced while an EM pass runs",
    ("splink.internals.exceptions", "EMTrainingException"): "an EM pass with no pairs",
    ("splink.internals.dialects", "SparkDialect"): "Spark's dialect, hashing as DuckDB does (sampling, chunks)",
    ("SparkDialect", "hash_function_name"): "the hash function of Splink's sampling and chunking",
    ("SparkDialect", "hash_bucket_expression"): "the hash bucket of Splink's record and EM sampling",
}


@contextmanager
def _internals() -> Iterator[None]:
    """An internal Splink moved (see :data:`INTERNALS`) becomes a ModelError naming it."""
    try:
        yield
    except (AttributeError, ImportError) as exc:
        raise ModelError(f"Splink {splink_version()} has changed an internal idweave uses ({exc}); "
                         f"tests/test_splink_adapter.py names which") from exc


def splink_version() -> str:
    """The installed Splink's version, read from its package metadata: no ``import splink``
    (a third of a second), so a run that reuses a stored model never loads Splink.

    >>> splink_version() == dist_version("splink")
    True
    """
    return dist_version("splink")


@lru_cache(maxsize=None)
def dist_version(name: str) -> str:
    """An installed distribution's version (cached).

    >>> dist_version("polars") == pl.__version__
    True
    """
    from importlib.metadata import version

    return version(name)


@contextmanager
def engine(what: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB for Splink's work tables (never the store), closed after;
    engine failures become a ModelError saying what failed.

    >>> with engine("counting") as con:
    ...     con.execute("select 1 + 1").fetchone()
    (2,)
    """
    con = duckdb.connect()
    try:
        with engine_errors(what):
            yield con
    finally:
        con.close()


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Engine failures inside the block become a ModelError saying what failed.

    >>> with engine_errors("scoring"):
    ...     1 / 0
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.ModelError: scoring failed: ZeroDivisionError: division by zero
    """
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{what} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}") from exc


def db_api(con, engine: str):
    """Splink's database API for ``engine`` over ``con`` (a DuckDB connection, or for
    ``spark`` a SparkSession: see :mod:`idweave.linkage.engine`).

    >>> with engine("a test") as con:
    ...     type(db_api(con, "duckdb")).__name__
    'DuckDBAPI'
    """
    if engine == "duckdb":
        from splink import DuckDBAPI

        return DuckDBAPI(connection=con)
    if engine == "spark":
        from splink.backends.spark import SparkAPI

        db = SparkAPI(spark_session=con)
        db.sql_dialect = _spark_dialect()
        return db
    raise ModelError(f"engine {engine!r} is not available in this version of idweave; use duckdb or spark",
                     key="engine")


# The Spark UDF computing DuckDB's hash() (registered by idweave.linkage.engine).
SPARK_HASH_UDF = "idweave_duckdb_hash"


@lru_cache(maxsize=1)
def _spark_dialect():
    """Splink's Spark dialect hashing with DuckDB's ``hash()`` (:data:`SPARK_HASH_UDF`):
    Splink picks the pairs u is estimated on (and its sample of records, and EM's) by hash
    buckets of the unique id, so with Spark's own ``hash`` a Spark-trained model would
    estimate u on other pairs than a DuckDB-trained one."""
    with _internals():
        from splink.internals.dialects import SparkDialect

    class DuckDBHashSparkDialect(SparkDialect):
        @property
        def hash_function_name(self) -> str:
            return SPARK_HASH_UDF

        def hash_bucket_expression(self, col_expression: str, modulus: int) -> str:
            # DuckDB's: the hash is unsigned there (a DECIMAL(20, 0) here), so ``%`` is a bucket
            return f"{self.hash_function_expression(col_expression)} % {modulus}"

    return DuckDBHashSparkDialect()


def spark_jar() -> str:
    """The path of Splink's similarity jar for the installed Spark (``spark.jars``)."""
    from splink.backends.spark import similarity_jar_location

    return similarity_jar_location()


def connected_components(db, nodes, edges, threshold: float):
    """Splink's connected components (``cluster_pairwise_predictions_at_threshold``) of
    ``edges`` (``rid_l``, ``rid_r``, ``match_probability``) at or above ``threshold`` over
    ``nodes`` (``rid``), in ``db``'s engine: a Splink dataframe of ``rid`` and ``cluster_id``
    (a member's rid; every node is in one). Example: :func:`idweave.linkage.engine.cluster_on`.
    """
    from splink.clustering import cluster_pairwise_predictions_at_threshold

    return cluster_pairwise_predictions_at_threshold(nodes, edges, db, "rid", "rid_l", "rid_r",
                                                     threshold_match_probability=threshold)


def block_on(*columns: str):
    """Splink's blocking rule "these columns agree", rendered by the linker in its dialect.

    >>> block_on("a", "b").get_blocking_rule("duckdb").blocking_rule_sql
    '(l."a" = r."a") AND (l."b" = r."b")'
    """
    from splink import block_on as _block_on

    return _block_on(*columns)


def make_linker(records: pl.DataFrame, settings: dict[str, Any], con, engine: str,
                tf_tables: dict[str, pl.DataFrame] | None = None, *, validate: bool = True):
    """A Splink linker over ``records`` (registered in ``con``) with ``settings`` and the
    given term-frequency tables; returns (linker, database API).

    >>> from idweave.linkage.comparisons import build_settings, input_columns, prepare
    >>> from idweave.linkage.project import load_project, with_rids
    >>> from idweave.linkage.sources import load_records
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> s = build_settings(p)
    >>> recs = prepare(with_rids(load_records(p)), input_columns(s))
    >>> with engine("a test") as con:
    ...     linker, _ = make_linker(recs, s, con, "duckdb")
    ...     linker_prior(linker) == s["probability_two_random_records_match"]
    True
    """
    from splink import Linker

    db = db_api(con, engine)
    sdf = db.register(records.to_arrow(), table_name="idweave_records")
    # Splink's own messages are for notebooks; idweave reports what matters in its summary.
    # ``validate=False`` skips Splink's check of the settings against the input columns, for a
    # model Splink already trained (it checked them then): half the linker's set-up time.
    linker = Linker(sdf, settings, log_level=logging.ERROR, validate_settings=validate)
    logging.getLogger("splink").setLevel(logging.ERROR)
    for col, tf in (tf_tables or {}).items():
        t = db.register(tf.to_arrow(), table_name=f"idweave_tf_{col}")
        linker.table_management.register_term_frequency_lookup(t, col)
    return linker, db


def linker_prior(linker) -> float:
    """The linker's prior (probability two random records match): Splink has no public
    getter; its settings object holds it. Example: :func:`make_linker`."""
    with _internals():
        return linker._settings_obj._probability_two_random_records_match


def set_linker_prior(linker, prior: float) -> None:
    """Set the linker's prior (Splink has no public setter).

    >>> class S: _probability_two_random_records_match = 0.5
    >>> class L: _settings_obj = S()
    >>> lk = L(); set_linker_prior(lk, 0.25); linker_prior(lk)
    0.25
    """
    with _internals():
        linker._settings_obj._probability_two_random_records_match = prior


def linker_settings(linker):
    """A copy of the linker's trained comparisons, for :func:`restore_linker_settings`
    (Splink has no public way to keep or restore a linker's settings)."""
    with _internals():
        return linker._settings_obj.core_model_settings.copy()


def restore_linker_settings(linker, kept) -> None:
    """Put back what :func:`linker_settings` kept.

    >>> class Core:
    ...     def __init__(self, v): self.v = v
    ...     def copy(self): return Core(self.v)
    >>> class S: core_model_settings = Core(1)
    >>> class L: _settings_obj = S()
    >>> lk = L(); kept = linker_settings(lk); lk._settings_obj.core_model_settings.v = 2
    >>> restore_linker_settings(lk, kept); lk._settings_obj.core_model_settings.v
    1
    """
    with _internals():
        linker._settings_obj.core_model_settings = kept


def is_em_training_error(exc: BaseException) -> bool:
    """Whether ``exc`` is Splink's "EM had no pairs to train on".

    >>> is_em_training_error(ValueError("x"))
    False
    """
    with _internals():
        from splink.internals.exceptions import EMTrainingException
    return isinstance(exc, EMTrainingException)


_EM_STEP_LOCK = threading.Lock()


@contextmanager
def em_step_replaced(wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """While the block is open, Splink's EM maximisation step is ``wrap(original step)``
    (one block at a time, under a lock), then put back. Splink 5 has no option for this: its
    EM loop looks the step up in its module, where it is replaced.

    >>> from splink.internals import expectation_maximisation as em
    >>> before = em.compute_proportions_for_new_parameters
    >>> with em_step_replaced(lambda step: "wrapped"):
    ...     em.compute_proportions_for_new_parameters
    'wrapped'
    >>> em.compute_proportions_for_new_parameters is before
    True
    """
    with _internals():
        from splink.internals import expectation_maximisation as em

        original = em.compute_proportions_for_new_parameters
    with _EM_STEP_LOCK:
        em.compute_proportions_for_new_parameters = wrap(original)
        try:
            yield
        finally:
            em.compute_proportions_for_new_parameters = original


def scoring_reading(settings: dict[str, Any]) -> dict[str, Any]:
    """What Splink makes of a model's settings for scoring, as plain data: per comparison
    its name, level CASE, the prediction SQL's gamma, match weight and tf adjustment
    columns, and per level its gamma, match weight and tf adjustment (weight, the exact
    level's u, minimum u, column); the tf columns (input, quoted, quoted tf name); the quoted
    unique id; the columns of blocked pairs and comparison vectors; and the two SQL steps
    of Splink's prediction (match weight parts, then weight and probability).

    >>> from idweave.linkage.comparisons import build_settings
    >>> from idweave.linkage.project import load_project
    >>> r = scoring_reading(build_settings(load_project("fixtures/tiny/project.yaml")))
    >>> r["uid"], r["comparisons"][0]["name"], r["comparisons"][0]["levels"][0]["gamma"]
    ('"rid"', 'first_name', -1)
    """
    with _internals():
        from splink.internals.predict import predict_from_comparison_vectors_sqls_using_settings
        from splink.internals.settings_creator import SettingsCreator

        s = SettingsCreator.from_path_or_dict(json.loads(json.dumps(settings, default=str))).get_settings("duckdb")
        comps = []
        for cc in s.comparisons:
            levels = []
            for lv in cc.comparison_levels:
                g = lv.comparison_vector_value
                tf = None
                if (g != -1 and lv._has_tf_adjustments and lv._tf_adjustment_weight != 0 and not lv._is_else_level):
                    tf = (float(lv._tf_adjustment_weight),
                          lv._u_probability_corresponding_to_exact_match(cc.comparison_levels),
                          float(lv._tf_minimum_u_value), lv._tf_adjustment_input_column.input_name)
                levels.append({"gamma": g, "match_weight": 0.0 if lv.is_null_level else float(lv._match_weight),
                               "tf": tf})
            comps.append({"name": cc.output_column_name, "case": cc._case_statement, "gamma": cc._gamma_column_name,
                          "mw": cc._mw_column_name,
                          "tf_adj": cc._mw_tf_adj_column_name if cc._has_tf_adjustments else None, "levels": levels})
        tf_cols = sorted(s._term_frequency_columns, key=lambda c: c.input_name)
        mw_parts, predict = predict_from_comparison_vectors_sqls_using_settings(s)
        return {
            "comparisons": comps,
            "tf_columns": [(c.input_name, c.name, c.tf_name) for c in tf_cols],
            "uid": s.column_info_settings.unique_id_input_columns[0].name,
            "blocking_columns": list(s._columns_to_select_for_blocking),
            "vector_columns": list(s._columns_to_select_for_comparison_vector_values),
            "predict_sql": (mw_parts["sql"], predict["sql"]),
        }
