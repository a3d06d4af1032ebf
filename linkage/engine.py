"""Engines: where Splink's SQL runs, behind one small protocol (:class:`Engine`).

An engine owns what is engine-specific: opening a session with its determinism settings
(:meth:`Engine.session`), the SQL dialect a model's comparison levels are rendered in
(:meth:`Engine.render`), registering frames and building a Splink linker over them
(:meth:`Engine.linker`, :meth:`Engine.register`), reading Splink's results back into polars
(:meth:`Engine.read`), and turning what Splink trained on it back into the one stored form of a
model (:meth:`Engine.canonical`). :class:`DuckDBEngine` is what idweave always did (an embedded
DuckDB per task); :class:`SparkEngine` runs the same Splink SQL on a SparkSession (one per
process, :func:`spark_session`).

A model is stored in one form whatever engine trained it: its level SQL in DuckDB's dialect
(what :mod:`idweave.linkage.comparisons` writes, what the compiled fast path and lookup read),
rendered for another engine when a linker is built (:func:`render_condition`, through sqlglot).
Where DuckDB and Spark would compute a similarity differently (the Splink jar's Jaro-Winkler
gives 0.9083 for ``elltiot``/``elliot``, DuckDB 0.9278), the Spark rendering calls a UDF that
computes DuckDB's definition (:func:`jaro_winkler`, bit for bit what DuckDB and the port the
lookup fast path trusts, :func:`idweave.linkage._levels.duckdb_jaro_winkler`, give; edit
distances from rapidfuzz as there), so a pair reaches the same level on both
(``tests/test_engines.py``).

>>> render_condition('jaro_winkler_similarity("a_l", "a_r") >= 0.9', "spark")
'IDWEAVE_JARO_WINKLER(`a_l`, `a_r`) >= 0.9'
>>> get_engine("duckdb").dialect
'duckdb'
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

import polars as pl

from idweave.linkage import _splink
from idweave.linkage.errors import ModelError

__all__ = [
    "ENGINES", "Engine", "DuckDBEngine", "SparkEngine", "get_engine", "engine_of", "cluster_on", "render_condition", "render_settings",
    "spark_session", "spark_available", "jaro_winkler", "JW_UDF", "DL_UDF", "HASH_UDF",
]

ENGINES = ("duckdb", "spark")

# The Spark names of the two similarity functions whose definitions idweave fixes itself.
JW_UDF = "idweave_jaro_winkler"
DL_UDF = "idweave_damerau_levenshtein"
# DuckDB's hash() on Spark: Splink's sampling and chunking hash the unique id with it
# (:func:`idweave.linkage._splink.db_api`), so both engines estimate u on the same pairs.
HASH_UDF = _splink.SPARK_HASH_UDF


class Engine(Protocol):
    """What training and scoring need from an engine."""

    name: str
    dialect: str

    def session(self, what: str, *, deterministic: bool = False):
        """A context manager: the engine's connection (failures become a ModelError saying
        ``what`` failed); ``deterministic`` asks for sums added in one order every run."""

    def render(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The model's settings with their SQL in this engine's dialect."""

    def linker(self, con: Any, records: pl.DataFrame, settings: dict[str, Any],
               tf_tables: dict[str, pl.DataFrame] | None = None, *, validate: bool = True) -> tuple[Any, Any]:
        """A Splink linker over ``records`` (settings rendered here) and its database API."""

    def register(self, db: Any, frame: pl.DataFrame, name: str) -> Any:
        """``frame`` as a table Splink can read (a Splink dataframe)."""

    def read(self, table: Any, columns: list[str] | None = None) -> pl.DataFrame:
        """A Splink dataframe of this engine (only ``columns``, if given) as a polars frame."""

    def canonical(self, trained: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        """What Splink trained on this engine, in the stored (DuckDB-dialect) form of ``reference``."""


class DuckDBEngine:
    """The embedded engine: a private in-memory DuckDB per task (Splink's ``DuckDBAPI``).

    >>> from idweave.linkage.comparisons import build_settings, input_columns, prepare
    >>> from idweave.linkage.project import load_project, with_rids
    >>> from idweave.linkage.sources import load_records
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> s = build_settings(p)
    >>> eng = DuckDBEngine()
    >>> with eng.session("a test", deterministic=True) as con:
    ...     linker, db = eng.linker(con, prepare(with_rids(load_records(p)), input_columns(s)), s)
    ...     eng.read(linker.table_management.compute_tf_table("first_name")).columns
    ['first_name', 'tf_first_name']
    """

    name = "duckdb"
    dialect = "duckdb"

    @contextmanager
    def session(self, what: str, *, deterministic: bool = False) -> Iterator[Any]:
        """A private DuckDB; ``deterministic``: one thread (DuckDB's parallel aggregation adds
        floats in whatever order its threads finish; one thread adds them in row order)."""
        with _splink.engine(what) as con:
            if deterministic:
                con.execute("SET threads = 1")
            yield con

    def render(self, settings: dict[str, Any]) -> dict[str, Any]:
        return settings  # the ladders are written in DuckDB's dialect

    def linker(self, con, records, settings, tf_tables=None, *, validate=True):
        return _splink.make_linker(records, settings, con, self.name, tf_tables, validate=validate)

    def register(self, db, frame: pl.DataFrame, name: str):
        return db.register(frame.to_arrow(), table_name=name)

    def read(self, table, columns: list[str] | None = None) -> pl.DataFrame:
        out = table.as_duckdbpyrelation().pl()
        return out.select(columns) if columns is not None else out

    def canonical(self, trained: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        return trained


class SparkEngine:
    """Splink's Spark backend (``SparkAPI``) on the process's SparkSession
    (:func:`spark_session`: ``master`` defaults to ``local[*]``, ``conf`` adds Spark settings,
    ``checkpoint_dir`` is where Spark checkpoints, by default a temporary folder).

    The model's level SQL is rendered for Spark (:func:`render_settings`), with idweave's own
    Jaro-Winkler and Damerau-Levenshtein UDFs in place of the Splink jar's, so a pair reaches
    the level it reaches on DuckDB. Determinism: a fixed number of shuffle partitions and the
    UTC time zone; Spark adds EM's sums per partition, so a model trained here agrees with a
    DuckDB-trained one to rounding (``tests/test_engines.py``), not bit for bit.
    """

    name = "spark"
    dialect = "spark"

    def __init__(self, master: str | None = None, conf: dict[str, str] | None = None,
                 checkpoint_dir: str | os.PathLike | None = None):
        self.master = master
        self.conf = dict(conf or {})
        self.checkpoint_dir = checkpoint_dir

    @contextmanager
    def session(self, what: str, *, deterministic: bool = False) -> Iterator[Any]:
        """A new session of the process's SparkSession (:func:`spark_session`): its own
        temporary views (Splink's tables of one task never meet another's), idweave's UDFs,
        and those of ``conf`` a running session can take; its views are dropped and Spark's
        cache emptied after."""
        with _splink.engine_errors(what):
            spark = spark_session(self.master, self.conf, self.checkpoint_dir).newSession()
            # The project's settings that a running session can take (spark.sql.*) are this
            # session's even where the process's session was made before (a notebook's).
            for k, v in self.conf.items():
                if spark.conf.isModifiable(k):
                    spark.conf.set(k, v)
            spark.conf.set("spark.sql.session.timeZone", "UTC")  # dates parse alike on every cluster
            _register_udfs(spark)
        try:
            with _splink.engine_errors(what):
                yield spark
        finally:
            for t in spark.catalog.listTables():
                if t.isTemporary:
                    spark.catalog.dropTempView(t.name)
            spark.catalog.clearCache()

    def render(self, settings: dict[str, Any]) -> dict[str, Any]:
        return render_settings(settings, self.dialect)

    def linker(self, con, records, settings, tf_tables=None, *, validate=True):
        return _splink.make_linker(records, self.render(settings), con, self.name, tf_tables, validate=validate)

    def register(self, db, frame: pl.DataFrame, name: str):
        return db.register(frame.to_arrow(), table_name=name)

    def read(self, table, columns: list[str] | None = None) -> pl.DataFrame:
        """Only ``columns`` leave Spark (the driver holds what it reads)."""
        df = table.as_spark_dataframe()
        return pl.from_arrow((df.select(*columns) if columns is not None else df).toArrow())

    def canonical(self, trained: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
        """``trained`` with the SQL, dialect and prediction rules of ``reference`` (the
        settings it was rendered from), level by level; its λ, m and u are kept."""
        out = copy.deepcopy(trained)
        out["sql_dialect"] = "duckdb"
        ref_rules = reference.get("blocking_rules_to_generate_predictions", [])
        for i, rule in enumerate(out.get("blocking_rules_to_generate_predictions", [])):
            if isinstance(rule, dict) and i < len(ref_rules):  # as Splink writes them on DuckDB
                want = ref_rules[i]
                rule["blocking_rule"] = want if isinstance(want, str) else want["blocking_rule"]
                rule["sql_dialect"] = "duckdb"
        ref = {c["output_column_name"]: c for c in reference["comparisons"]}
        for c in out["comparisons"]:
            levels = ref[c["output_column_name"]]["comparison_levels"]
            if len(levels) != len(c["comparison_levels"]):
                raise ModelError(f"Spark trained {c['output_column_name']} with {len(c['comparison_levels'])} "
                                 f"levels, the model has {len(levels)}")
            for lv, want in zip(c["comparison_levels"], levels):
                lv["sql_condition"] = want["sql_condition"]
        return out


def get_engine(name: str | Engine, **options: Any) -> Engine:
    """The engine called ``name`` (``duckdb`` or ``spark``; Spark takes ``master`` and ``conf``);
    an engine is returned as it is.

    >>> get_engine("duckdb").name, get_engine("spark", master="local[2]").master
    ('duckdb', 'local[2]')
    >>> get_engine("sqlite")
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.ModelError: engine: must be one of duckdb, spark, got 'sqlite'
    """
    if not isinstance(name, str):
        return name
    if name == "duckdb":
        return DuckDBEngine()
    if name == "spark":
        return SparkEngine(**options)
    raise ModelError(f"must be one of {', '.join(ENGINES)}, got {name!r}", key="engine")


def engine_of(project: Any) -> Engine:
    """The engine a project's runs train and score on: its ``engine`` key, and for Spark its
    ``spark:`` section (master, conf, checkpoint dir).

    >>> from idweave.linkage.project import load_project, project_from_dict
    >>> tiny = load_project("fixtures/tiny/project.yaml")
    >>> engine_of(tiny).name
    'duckdb'
    >>> e = engine_of(project_from_dict({**tiny.raw, "engine": "spark", "spark": {"master": "local[2]"}},
    ...                                 base_dir=tiny.base_dir))
    >>> e.name, e.master, e.conf
    ('spark', 'local[2]', {})
    """
    if project.engine == "spark":
        spark = getattr(project, "spark", None) or {}
        return SparkEngine(spark.get("master"), spark.get("conf"), spark.get("checkpoint_dir"))
    return get_engine(project.engine)


# --------------------------------------------------------------------------------------
# clustering on an engine
# --------------------------------------------------------------------------------------
def cluster_on(engine: str | Engine, links: pl.DataFrame, rids: Any, *, threshold: float,
               method: str = "components", min_average: float = 0.5,
               exclusive: dict[int, str] | None = None) -> pl.DataFrame:
    """:func:`idweave.linkage.cluster.cluster` (``rid``, ``cluster``: the smallest rid of each
    cluster) run on ``engine``. On DuckDB it is that function, on the driver. On Spark, the
    connected components of the links at ``threshold`` are found in Spark (Splink's
    ``cluster_pairwise_predictions_at_threshold``), and every component of more than one
    record is clustered inside an executor by the same function
    (``groupBy(component).cogroup(...).applyInPandas``), on the component's links and
    members: clusters never span two components and links between components never count
    (see ``cluster``), so the result is the driver's exactly (``tests/test_engines.py``).
    Decisions' must- and cannot-links are not taken here; ``links`` come from the driver.

    >>> links = pl.DataFrame({"rid_l": [0, 1], "rid_r": [1, 2], "match_probability": [0.99, 0.97]})
    >>> cluster_on("duckdb", links, [0, 1, 2, 3], threshold=0.9)["cluster"].to_list()
    [0, 0, 0, 3]
    """
    from idweave.linkage.cluster import cluster

    eng = get_engine(engine)
    rid_list = [int(r) for r in rids]
    if eng.name == "duckdb":
        return cluster(links, rid_list, threshold=threshold, exclusive=exclusive, method=method,
                       min_average=min_average).select("rid", "cluster")
    import functools

    from pyspark.sql import functions as F

    nodes = pl.DataFrame({"rid": rid_list, "exclusive": [(exclusive or {}).get(r) for r in rid_list]},
                         schema={"rid": pl.Int64, "exclusive": pl.Utf8})
    edges = links.select(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64),
                         pl.col("match_probability").cast(pl.Float64))
    with eng.session("clustering") as spark:
        db = _splink.db_api(spark, "spark")
        comp = _splink.connected_components(db, eng.register(db, nodes.select("rid"), "idweave_nodes"),
                                            eng.register(db, edges, "idweave_edges"), threshold)
        comp = comp.as_spark_dataframe().select(F.col("rid").cast("long"),
                                                F.col("cluster_id").cast("string").alias("component"))
        members = spark.createDataFrame(nodes.to_arrow()).join(comp, "rid")
        sizes = members.groupBy("component").count()
        members = members.join(sizes, "component")
        ends = comp.withColumnRenamed("rid", "rid_l").withColumnRenamed("component", "c_l").join(
            spark.createDataFrame(edges.to_arrow()), "rid_l")
        inside = ends.join(comp.withColumnRenamed("rid", "rid_r").withColumnRenamed("component", "c_r"), "rid_r") \
            .filter(F.col("c_l") == F.col("c_r")).select(F.col("c_l").alias("component"), "rid_l", "rid_r",
                                                           "match_probability")
        several = members.filter(F.col("count") > 1).select("component", "rid", "exclusive")
        fn = functools.partial(_cluster_component, threshold, method, min_average)
        clustered = inside.groupBy("component").cogroup(several.groupBy("component")).applyInPandas(
            fn, schema="rid long, cluster long")
        alone = members.filter(F.col("count") == 1).select("rid", F.col("rid").alias("cluster"))
        out = pl.from_arrow(clustered.unionByName(alone).toArrow())
    return out.with_columns(pl.col("rid").cast(pl.Int64), pl.col("cluster").cast(pl.Int64)).sort("rid")


def _cluster_component(threshold: float, method: str, min_average: float, links, members):
    """One component's clusters, in an executor: :func:`idweave.linkage.cluster.cluster` on
    its links and members (pandas frames in, a pandas frame of ``rid``, ``cluster`` out)."""
    from idweave.linkage.cluster import cluster

    exclusive = {int(r): s for r, s in zip(members["rid"], members["exclusive"]) if isinstance(s, str)}
    got = cluster(pl.from_pandas(links[["rid_l", "rid_r", "match_probability"]]),
                  [int(r) for r in members["rid"]], threshold=threshold, exclusive=exclusive or None,
                  method=method, min_average=min_average)
    return got.select(pl.col("rid").cast(pl.Int64), pl.col("cluster").cast(pl.Int64)).to_pandas()


# --------------------------------------------------------------------------------------
# the model's SQL in another dialect
# --------------------------------------------------------------------------------------
# DuckDB functions (sqlglot's parse of them) known to mean the same in Spark once rendered,
# beside the ones rewritten in :func:`_to_spark`.
_SAME = frozenset({"Abs", "ArraySort", "Greatest", "Least", "Left", "Length", "Levenshtein", "Right", "Split",
                   "SplitPart", "Substring", "TryCast", "DateDiff", "Concat", "Lower", "Upper", "Coalesce",
                   "ArrayIntersect", "ArraySize", "Anonymous", "And", "Or", "Not"})
_LIST_VALUED = ("ArrayIntersect", "ArraySort", "Split")


def _to_spark(node):
    from sqlglot import exp

    if isinstance(node, exp.JarowinklerSimilarity):
        return exp.Anonymous(this=JW_UDF, expressions=[node.this, node.expression])
    if isinstance(node, exp.ArrayOverlaps):  # list_has_any
        return exp.Anonymous(this="arrays_overlap", expressions=[node.this, node.expression])
    if isinstance(node, exp.Anonymous):
        name = node.name.lower()
        if name == "damerau_levenshtein":
            return exp.Anonymous(this=DL_UDF, expressions=list(node.expressions))
        if name == "list_intersect":
            return exp.ArrayIntersect(expressions=list(node.expressions))
        if name not in (JW_UDF, DL_UDF, "arrays_overlap"):
            raise ModelError(f"the comparison SQL function {node.name}() has no Spark form in idweave")
    return node


def _list_length(node):
    from sqlglot import exp

    if isinstance(node, exp.Length) and type(node.this).__name__ in _LIST_VALUED:  # DuckDB's len(list)
        return exp.ArraySize(this=node.this)
    return node


def render_condition(sql: str, dialect: str) -> str:
    """A comparison level's condition (DuckDB dialect, as models store it) in ``dialect``.

    For Spark: identifiers in backquotes, ``list_has_any`` as ``arrays_overlap``, the length of a
    list as ``size``, ``date_diff`` as Spark's, and Jaro-Winkler and Damerau-Levenshtein as
    idweave's UDFs (:data:`JW_UDF`, :data:`DL_UDF`: DuckDB's definitions, registered by
    :func:`spark_session`).

    >>> render_condition('list_has_any("f_l", "f_r")', "spark")
    'ARRAYS_OVERLAP(`f_l`, `f_r`)'
    >>> render_condition("len(list_intersect(string_split(\\"a_l\\", ' '), string_split(\\"a_r\\", ' '))) >= 1", "spark")
    "SIZE(ARRAY_INTERSECT(SPLIT(`a_l`, CONCAT('\\\\\\\\Q', ' ', '\\\\\\\\E')), SPLIT(`a_r`, CONCAT('\\\\\\\\Q', ' ', '\\\\\\\\E')))) >= 1"
    >>> render_condition('"a_l" = "a_r"', "duckdb")
    '"a_l" = "a_r"'
    """
    if dialect == "duckdb" or sql.strip().upper() == "ELSE":
        return sql
    if dialect != "spark":
        raise ModelError(f"engine: no SQL dialect {dialect!r}", key="engine")
    import sqlglot

    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb").transform(_to_spark).transform(_list_length)
    for node in tree.walk():
        if isinstance(node, exp.Func) and type(node).__name__ not in _SAME:
            raise ModelError(f"the comparison SQL function {node.sql_name()}() has no Spark form in idweave")
    return tree.sql(dialect="spark")


def render_settings(settings: dict[str, Any], dialect: str) -> dict[str, Any]:
    """A copy of a model's settings with every comparison level's SQL in ``dialect``.

    >>> s = {"comparisons": [{"comparison_levels": [{"sql_condition": '"a_l" = "a_r"'},
    ...                                             {"sql_condition": "ELSE"}]}], "sql_dialect": "duckdb"}
    >>> r = render_settings(s, "spark")
    >>> [lv["sql_condition"] for lv in r["comparisons"][0]["comparison_levels"]], r["sql_dialect"]
    (['`a_l` = `a_r`', 'ELSE'], 'spark')
    """
    out = copy.deepcopy(settings)
    for c in out["comparisons"]:
        for lv in c["comparison_levels"]:
            lv["sql_condition"] = render_condition(lv["sql_condition"], dialect)
    if "sql_dialect" in out:
        out["sql_dialect"] = dialect
    return out


# --------------------------------------------------------------------------------------
# the process's SparkSession
# --------------------------------------------------------------------------------------
_SPARK_LOCK = threading.Lock()
_SPARK: dict[str, Any] = {}


def spark_available() -> str | None:
    """Why Spark cannot run here (no pyspark, no Java), or None when it can.

    >>> spark_available() is None or "pyspark" in spark_available() or "java" in spark_available()
    True
    """
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'idweave[spark]')"
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        return "no java on PATH (Spark needs a Java 17 runtime, e.g. Debian's openjdk-17-jre-headless)"
    return None


def spark_session(master: str | None = None, conf: dict[str, str] | None = None,
                  checkpoint_dir: str | os.PathLike | None = None):
    """The process's SparkSession for Splink, made on first use (5-20 s, ~3 GB): Splink's
    similarity jar, no UI, its local and warehouse folders in one temporary folder (and its
    checkpoints, unless ``checkpoint_dir`` is given), few shuffle partitions, UTC, and
    idweave's UDFs registered. Where the process has an active session already (a Databricks
    notebook, ``spark-submit``), that session is used as it is: its master and settings are
    the cluster's. Later calls return the same session (a different ``master``, ``conf`` or
    ``checkpoint_dir`` then is ignored: Spark has one context per process).
    """
    with _SPARK_LOCK:
        got = _SPARK.get("session")
        if got is not None and got.sparkContext._jsc is not None:
            return got
        why = spark_available()
        if why:
            raise ModelError(f"spark is not available here: {why}", key="engine")
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Spark's Python workers must be this interpreter (with pyarrow, pandas and idweave).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        tmp = tempfile.mkdtemp(prefix="idweave-spark-")
        settings = {
            "spark.jars": _splink.spark_jar(),
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.local.dir": os.path.join(tmp, "local"),
            "spark.sql.warehouse.dir": os.path.join(tmp, "warehouse"),
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.sql.session.timeZone": "UTC",
            "spark.driver.memory": "3g",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.python.worker.reuse": "true",
            **(conf or {}),
        }
        spark = SparkSession.getActiveSession()
        if spark is None:
            builder = SparkSession.builder.appName("idweave")
            # Under spark-submit the JVM is running already, with the master it was given.
            if master or "PYSPARK_GATEWAY_PORT" not in os.environ:
                builder = builder.master(master or "local[*]")
            for k, v in settings.items():
                builder = builder.config(k, v)
            spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        spark.sparkContext.setCheckpointDir(str(checkpoint_dir or os.path.join(tmp, "checkpoint")))
        _register_udfs(spark)
        _SPARK["session"] = spark
        _SPARK["dir"] = tmp
        return spark


def jaro_winkler(p: str, t: str) -> float:
    """DuckDB's ``jaro_winkler_similarity`` bit for bit, fast: what the Spark UDF
    (:data:`JW_UDF`) computes. The Jaro part is rapidfuzz's (DuckDB's own comes from the same
    C++ library); the Winkler bonus is added as DuckDB adds it, with one rounding where its
    build fuses the multiply-add (:func:`idweave.linkage._levels.duckdb_fuses`), computed
    exactly in integers. A twelfth of the time of the pure-Python port
    (:func:`idweave.linkage._levels.duckdb_jaro_winkler`), which gives the same values
    (``tests/test_engines.py`` checks both against DuckDB).

    >>> round(jaro_winkler("elltiot", "elliot"), 4), jaro_winkler("", ""), jaro_winkler("a", "")
    (0.9278, 0.0, 0.0)
    """
    from rapidfuzz.distance import Jaro

    from idweave.linkage._levels import duckdb_fuses

    if p == t:
        return 1.0 if p else 0.0
    if not p or not t:
        return 0.0
    sim = Jaro.similarity(p, t)
    if sim > 0.7:
        prefix = len(os.path.commonprefix((p[:4], t[:4])))  # the Winkler prefix: at most 4
        if prefix:
            w = prefix * 0.1
            if duckdb_fuses():  # round(w * (1 - sim) + sim) once: exact rationals, one division
                wn, wd = w.as_integer_ratio()
                cn, cd = (1.0 - sim).as_integer_ratio()
                sn, sd = sim.as_integer_ratio()
                sim = (wn * cn * sd + sn * wd * cd) / (wd * cd * sd)
            else:
                sim = sim + w * (1.0 - sim)
    return sim


def _pairwise(fn, a, b):
    """``fn`` over two columns of strings (NULL gives NULL), each distinct pair computed once."""
    memo: dict[tuple[str, str], Any] = {}
    out = []
    for x, y in zip(a, b):
        if not isinstance(x, str) or not isinstance(y, str):
            out.append(None)
            continue
        v = memo.get((x, y))
        if v is None:
            v = memo[x, y] = fn(x, y)
        out.append(v)
    return out


def _register_udfs(spark) -> None:
    """idweave's similarity functions on Spark, as vectorised (Arrow) UDFs."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def jaro_winkler_udf(a, b):
        return pd.Series(_pairwise(jaro_winkler, a.tolist(), b.tolist()), dtype="float64")

    def damerau_levenshtein(a, b):
        from idweave.linkage._levels import damerau_levenshtein as dl

        return pd.Series(_pairwise(dl, a.tolist(), b.tolist()), dtype="Int32")

    def duckdb_hash(a):
        from decimal import Decimal

        from idweave.linkage._levels import duckdb_hash as h

        return pd.Series([None if x is None or pd.isna(x) else Decimal(h(x if isinstance(x, str) else int(x)))
                          for x in a.tolist()], dtype="object")

    for name, fn, kind in ((JW_UDF, jaro_winkler_udf, "double"), (DL_UDF, damerau_levenshtein, "int"),
                           (HASH_UDF, duckdb_hash, "decimal(20,0)")):
        # pandas_udf reads the kind of UDF from type hints, which must be classes (this
        # module's annotations are strings).
        fn.__annotations__ = {**{p: pd.Series for p in fn.__code__.co_varnames[:fn.__code__.co_argcount]},
                              "return": pd.Series}
        spark.udf.register(name, pandas_udf(fn, kind))
