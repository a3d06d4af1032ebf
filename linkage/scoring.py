"""Scoring candidate pairs with a trained model, and the compiled form of a model.

:func:`score_pairs` scores pairs with one DuckDB query made of Splink's own prediction SQL
for the model; what Splink makes of a model (its level CASE statements, weights and tf
adjustments) is made once per model and process (:func:`_compiled`) and kept in the store
(``model_sql``) under a key this module gives it (:func:`compiled_key`): a process that reads
a model from a store (:func:`stored_model`) scores with it without loading Splink.

>>> from idweave.linkage.comparisons import build_settings
>>> from idweave.linkage.project import load_project
>>> scoring_parts(build_settings(load_project("fixtures/tiny/project.yaml"))).comparisons[0]["name"]
'first_name'
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator

import duckdb
import polars as pl

from idweave.linkage import _splink
from idweave.linkage._db import query_pl
from idweave.linkage._splink import scoring_reading, splink_version
from idweave.linkage.comparisons import input_columns, prepare, tf_columns
from idweave.linkage.engine import Engine, get_engine
from idweave.linkage.fingerprint import code_fingerprint
from idweave.linkage.model import TrainedModel

__all__ = [
    "score_pairs", "ScoringParts", "scoring_parts", "compile_key", "compiled_text", "adopt_compiled",
    "compiled_key", "stored_model", "save_compiled", "splink_version",
]


@contextmanager
def _scoring_engine() -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`~idweave.linkage._splink.engine` for :func:`score_pairs`' one query: a cursor
    of the process's scratch DuckDB (:func:`idweave.linkage._db.scratch`; a new database
    costs ~20 ms a call, a cursor well under one), default threads as that engine."""
    from idweave.linkage._db import scratch

    with scratch() as con, _splink.engine_errors("scoring"):
        yield con


def score_pairs(records: pl.DataFrame, pairs: pl.DataFrame, model: TrainedModel, *,
                engine: str | Engine = "duckdb") -> pl.DataFrame:
    """Score candidate pairs (``rid_l``, ``rid_r``, ``rule``) with a trained model.

    Returns one row per pair, ordered by ``rid_l``, ``rid_r``: ``rid_l``, ``rid_r``, ``rule``,
    ``match_weight``, ``match_probability`` and, per comparison ``c``, ``level_c`` (the level's
    label index, Splink's gamma) and ``w_c`` (its weight in bits, term-frequency adjustment
    included).

    On DuckDB the pairs are scored by one query made of Splink's own prediction SQL for the
    model (its level CASE statements, match weights and term-frequency adjustments), which
    Splink writes once per model and this process and the store keep (:func:`_compiled`; a
    process scoring with a model read from a store runs no Splink at all): the same numbers
    as a Splink linker's ``predict``, bit for bit, without building a linker each call
    (``tests/test_scoring.py`` checks it against :func:`_score_pairs_splink`).

    >>> from idweave.linkage.project import load_project
    >>> from idweave.linkage.sources import load_records
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> recs = load_records(p).sort("source", "record_id").with_row_index("rid")
    >>> from idweave.linkage.training import train
    >>> m = train(recs, p)
    >>> pairs = pl.DataFrame({"rid_l": [0, 0], "rid_r": [2, 1], "rule": [3, 3]})
    >>> out = score_pairs(recs, pairs, m)
    >>> out["rid_r"].to_list(), out["level_first_name"].dtype, out.columns[:5]
    ([1, 2], Int32, ['rid_l', 'rid_r', 'rule', 'match_weight', 'match_probability'])
    """
    comps = [c["output_column_name"] for c in model.comparisons()]
    if pairs.height == 0:
        schema = {"rid_l": pl.Int64, "rid_r": pl.Int64, "rule": pl.Int32, "match_weight": pl.Float64,
                  "match_probability": pl.Float64}
        for c in comps:
            schema[f"level_{c}"] = pl.Int32
            schema[f"w_{c}"] = pl.Float64
        return pl.DataFrame(schema=schema)
    if get_engine(engine).name != "duckdb":
        return _score_pairs_splink(records, pairs, model, engine=engine)
    compiled = _compiled(model.settings)
    if not {*tf_columns(model.settings), *compiled.tf_columns} <= set(model.tf_tables):
        # A term-frequency column without its table: a linker computes one from the
        # records it is given, so scores then depend on them; only a linker does that.
        return _score_pairs_splink(records, pairs, model, engine=engine)
    recs = prepare(records, input_columns(model.settings))
    with _scoring_engine() as con:
        con.register("idweave_records", recs.to_arrow())
        for i, col in enumerate(compiled.tf_columns):
            con.register(f"idweave_tf_{i}", model.tf_tables[col].to_arrow())
        con.register("idweave_blocked", pairs.select(
            pl.col("rid_l").alias("join_key_l"), pl.col("rid_r").alias("join_key_r"),
            pl.col("rule").alias("match_key")).to_arrow())
        out = query_pl(con, compiled.sql(frozenset(model.tf_tables)))
    return out.with_columns(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64))


def _score_pairs_splink(records: pl.DataFrame, pairs: pl.DataFrame, model: TrainedModel, *,
                        engine: str | Engine = "duckdb") -> pl.DataFrame:
    """:func:`score_pairs` through a Splink linker's ``predict`` (non-empty ``pairs``): the
    reference the fast path is tested against, and the path for other engines."""
    comps = [c["output_column_name"] for c in model.comparisons()]
    recs = prepare(records, input_columns(model.settings))
    eng = get_engine(engine)
    with eng.session("scoring") as con:
        linker, db = eng.linker(con, recs, model.settings, model.tf_tables, validate=False)
        blocked = pairs.select(
            pl.col("rid_l").alias("join_key_l"), pl.col("rid_r").alias("join_key_r"),
            pl.col("rule").cast(pl.Utf8).alias("match_key"))
        linker.table_management.register_blocked_pairs_for_predict(eng.register(db, blocked, "idweave_blocked"))
        wanted = ["rid_l", "rid_r", "match_key", "match_weight", "match_probability"]
        for c in comps:
            wanted += [f"gamma_{c}", f"mw_{c}"] + ([f"mw_tf_adj_{c}"] if c in model.tf_tables else [])
        pred = eng.read(linker.inference.predict(warning_mode="never"), wanted)
    sel = [pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64),
           pl.col("match_key").cast(pl.Int32).alias("rule"), "match_weight", "match_probability"]
    for c in comps:
        w = pl.col(f"mw_{c}")
        if c in model.tf_tables:
            w = w + pl.col(f"mw_tf_adj_{c}").fill_null(0.0)
        sel += [pl.col(f"gamma_{c}").cast(pl.Int32).alias(f"level_{c}"), w.cast(pl.Float64).alias(f"w_{c}")]
    return pred.select(sel).sort("rid_l", "rid_r")


@dataclass
class ScoringParts:
    """A model taken apart for scoring a few pairs fast (see :func:`scoring_parts`)."""

    gamma_sql: list[str]          # select expressions: Splink's CASE giving each comparison's level
    columns: list[str]            # record columns the comparisons read (``c`` -> ``c_l``, ``c_r``)
    tf_columns: list[str]         # columns with term-frequency adjustment (``tf_c_l``, ``tf_c_r``)
    comparisons: list[dict[str, Any]]  # name, weight per level, tf adjustment per level
    prior: float

    def weight(self, comparison: dict[str, Any], gamma: int, tf_l: float | None, tf_r: float | None) -> float:
        """A comparison's weight in bits at level ``gamma``: Splink's match weight of the
        level plus its term-frequency adjustment, computed as Splink's SQL computes them."""
        mw = comparison["weights"].get(gamma, 0.0)
        adj = comparison["tf"].get(gamma)
        if adj is None:
            return mw + 0.0
        tf_weight, log2_u, min_u = adj
        a = tf_l if tf_l is not None else tf_r
        b = tf_r if tf_r is not None else tf_l
        if a is None:
            return mw + 0.0
        return mw + tf_weight * (log2_u - math.log2(max(a, b, min_u)))


def scoring_parts(settings: dict[str, Any]) -> ScoringParts:
    """Splink's own level SQL for each comparison, and the numbers its scoring SQL embeds
    (match weight per level; term-frequency weight, log2 of the exact level's u and minimum
    u per adjusted level), so that a few pairs can be scored without building a linker.

    Evaluating ``gamma_sql`` in DuckDB over pairs with ``c_l``/``c_r`` (and ``tf_c_l``/``tf_c_r``)
    columns and :meth:`ScoringParts.weight` per comparison gives the ``level_c`` and ``w_c`` of
    :func:`score_pairs` bit for bit (``tests/test_lookup.py`` checks it). Splink reads a model's
    settings once per process (:func:`_compiled`); each call returns a fresh copy.

    >>> from idweave.linkage.comparisons import build_settings
    >>> from idweave.linkage.project import load_project
    >>> parts = scoring_parts(build_settings(load_project("fixtures/tiny/project.yaml")))
    >>> parts.columns[:2], parts.comparisons[0]["name"]
    (['first_name', 'first_name__formal'], 'first_name')
    """
    return copy.deepcopy(_compiled(settings).parts)


@dataclass(frozen=True)
class _Compiled:
    """What Splink makes of a model's settings, kept so that scoring skips Splink's parsing:
    the :class:`ScoringParts`, and the pieces of Splink's prediction SQL (as a linker's
    ``predict`` runs it on registered blocked pairs) from which :meth:`sql` makes one query."""

    parts: ScoringParts
    tf_columns: tuple[str, ...]             # tf columns; table ``idweave_tf_<i>`` holds the i-th
    tf_joins: tuple[tuple[str, str], ...]   # (quoted column, quoted tf column) per tf column
    uid: str                                # the quoted unique id column (``"rid"``)
    blocking_columns: tuple[str, ...]       # ``"l"."c" AS "c_l"``, ... (tf columns included)
    vector_columns: tuple[str, ...]         # ``"c_l"``, ..., each comparison's CASE as gamma_c
    predict_sql: tuple[str, str]            # match weight parts, then match weight and probability
    outputs: tuple[tuple[str, str, str, str | None], ...]  # name, gamma, mw, tf-adjustment column
    _sql: dict[frozenset[str], str] = field(default_factory=dict, compare=False)

    def sql(self, tf_tables: frozenset[str]) -> str:
        """The query scoring ``idweave_blocked`` (``join_key_l``, ``join_key_r``,
        ``match_key``) against ``idweave_records`` and the tf tables: :func:`score_pairs`'s
        columns, in its order. ``tf_tables`` names the model's tf tables: as in a linker's
        scoring, ``w_c`` holds a tf adjustment only when comparison ``c`` has a tf table."""
        got = self._sql.get(tf_tables)
        if got is not None:
            return got
        tf_sel = "".join(f", t{i}.{tf}" for i, (_, tf) in enumerate(self.tf_joins))
        tf_join = "".join(f" left join idweave_tf_{i} as t{i} on rec.{col} = t{i}.{col}"
                          for i, (col, _) in enumerate(self.tf_joins))
        sel = ["rid_l", "rid_r", "cast(match_key as integer) as rule", "match_weight", "match_probability"]
        for name, gamma, mw, adj in self.outputs:
            tf = f" + coalesce({adj}, 0)" if adj is not None and name in tf_tables else ""
            sel.append(f"cast({gamma} as integer) as level_{name}")
            sel.append(f"{mw}{tf} as w_{name}")
        nl = ",\n"
        got = f"""
with idweave_in as (select rec.*{tf_sel} from idweave_records as rec{tf_join}),
blocked_with_cols as (
select {nl.join(self.blocking_columns)}, b.match_key
from idweave_blocked as b
inner join idweave_in as l on l.{self.uid} = b.join_key_l
inner join idweave_in as r on r.{self.uid} = b.join_key_r),
__splink__df_comparison_vectors as (select {nl.join(self.vector_columns)} from blocked_with_cols),
__splink__df_match_weight_parts as ({self.predict_sql[0]}),
__splink__df_predict as ({self.predict_sql[1]})
select {', '.join(sel)} from __splink__df_predict order by rid_l, rid_r"""
        self._sql[tf_tables] = got
        return got


# Settings JSON -> what Splink made of it (the few models a process scores with, latest last).
_COMPILED: OrderedDict[str, _Compiled] = OrderedDict()
_COMPILED_MAX = 8
_COMPILED_LOCK = threading.Lock()


def _settings_key(settings: dict[str, Any]) -> str:
    """The in-process cache's key: the settings JSON, which holds every trained parameter."""
    return json.dumps(settings, sort_keys=True, default=str)


def _cached(key: str) -> _Compiled | None:
    with _COMPILED_LOCK:
        hit = _COMPILED.get(key)
        if hit is not None:
            _COMPILED.move_to_end(key)
        return hit


def _remember(key: str, compiled: _Compiled) -> _Compiled:
    """Keep ``compiled`` for ``key`` (one already kept wins: both are the same); returns the kept one."""
    with _COMPILED_LOCK:
        kept = _COMPILED.setdefault(key, compiled)
        _COMPILED.move_to_end(key)
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
        return kept


def _compiled(settings: dict[str, Any]) -> _Compiled:
    """Splink's reading of a model's settings (comparisons parsed, levels numbered, weights
    and tf adjustments written as its prediction SQL writes them), made once per model in
    this process: the key is the settings JSON, which holds every trained parameter.

    A store keeps what was made for each model (``model_sql``): reading the model from it
    (:func:`stored_model`) puts it here (:func:`adopt_compiled`),
    so a process scoring with a stored model neither imports nor runs Splink."""
    key = _settings_key(settings)
    hit = _cached(key)
    if hit is not None:
        return hit
    return _remember(key, _compile(settings))


def _compile(settings: dict[str, Any]) -> _Compiled:
    """What :func:`_compiled` keeps, made by Splink (this imports it). The output is a pure
    function of the settings, Splink's (and sqlglot's) version and this code: see
    :func:`compile_key`."""
    r = scoring_reading(settings)
    comps, gammas = [], []
    for cc in r["comparisons"]:
        gammas.append(cc["case"])
        weights, tf = {}, {}
        for lv in cc["levels"]:
            weights[lv["gamma"]] = lv["match_weight"]
            if lv["tf"] is not None:
                tf_weight, u, min_u, column = lv["tf"]
                tf[lv["gamma"]] = (tf_weight, math.log2(u), min_u, column)
        comps.append({"name": cc["name"], "weights": weights,
                      "tf": {g: v[:3] for g, v in tf.items()},
                      "tf_column": next((v[3] for v in tf.values()), None)})
    parts = ScoringParts(gamma_sql=gammas, columns=input_columns(settings), tf_columns=tf_columns(settings),
                         comparisons=comps, prior=float(settings["probability_two_random_records_match"]))
    out = _Compiled(
        parts=parts,
        tf_columns=tuple(name for name, _, _ in r["tf_columns"]),
        tf_joins=tuple((quoted, tf_name) for _, quoted, tf_name in r["tf_columns"]),
        uid=r["uid"],
        blocking_columns=tuple(r["blocking_columns"]),
        vector_columns=tuple(r["vector_columns"]),
        predict_sql=(r["predict_sql"][0], r["predict_sql"][1]),
        outputs=tuple((cc["name"], cc["gamma"], cc["mw"], cc["tf_adj"]) for cc in r["comparisons"]))
    return out


# The stored form of a compiled model (``model_sql``): bump it when what the stored JSON means
# changes in a way the code fingerprint of :func:`compile_key` would not catch.
_COMPILE_FORMAT = 2


@lru_cache(maxsize=1)
def compile_key() -> str | None:
    """What a compiled model depends on besides the model itself and Splink's version: the
    format of its stored form and the one code fingerprint
    (:func:`~idweave.linkage.fingerprint.code_fingerprint`: the source of every module that
    decides stored state, this one, comparisons and _splink among them, and the versions of
    the libraries that compute it, sqlglot, through which Splink writes its SQL, too). A store
    keeps compiled models under (model version, Splink version, this key), so a change to any
    of them compiles again instead of reusing stale SQL. None when this code's source cannot
    be read (a frozen or byte-code-only install): then nothing is stored or reused.

    >>> len(compile_key()), compile_key() == compile_key()
    (16, True)
    """
    import inspect

    try:
        inspect.getsource(_compile)
    except (OSError, TypeError):  # no source (a frozen or byte-code-only install)
        return None
    return hashlib.sha256(f"format {_COMPILE_FORMAT}\n{code_fingerprint()}\n".encode()).hexdigest()[:16]


def _compiled_to_json(c: _Compiled) -> str:
    """A compiled model as JSON text. Floats are written as their repr, which reads back to
    the same bits (infinities as ``Infinity``); tuples become lists, int keys pairs."""
    p = c.parts
    return json.dumps({
        "parts": {"gamma_sql": p.gamma_sql, "columns": p.columns, "tf_columns": p.tf_columns,
                  "comparisons": [{"name": x["name"], "weights": [[g, w] for g, w in x["weights"].items()],
                                   "tf": [[g, *v] for g, v in x["tf"].items()], "tf_column": x["tf_column"]}
                                  for x in p.comparisons],
                  "prior": p.prior},
        "tf_columns": c.tf_columns, "tf_joins": c.tf_joins, "uid": c.uid, "blocking_columns": c.blocking_columns,
        "vector_columns": c.vector_columns, "predict_sql": c.predict_sql, "outputs": c.outputs,
    })


def _compiled_from_json(text: str) -> _Compiled:
    """:func:`_compiled_to_json` read back: equal to what was written."""
    d = json.loads(text)
    p = d["parts"]
    comps = [{"name": x["name"], "weights": {int(g): float(w) for g, w in x["weights"]},
              "tf": {int(g): (float(a), float(b), float(m)) for g, a, b, m in x["tf"]}, "tf_column": x["tf_column"]}
             for x in p["comparisons"]]
    parts = ScoringParts(gamma_sql=list(p["gamma_sql"]), columns=list(p["columns"]),
                         tf_columns=list(p["tf_columns"]), comparisons=comps, prior=float(p["prior"]))
    return _Compiled(
        parts=parts, tf_columns=tuple(d["tf_columns"]), tf_joins=tuple((a, b) for a, b in d["tf_joins"]),
        uid=d["uid"], blocking_columns=tuple(d["blocking_columns"]), vector_columns=tuple(d["vector_columns"]),
        predict_sql=(d["predict_sql"][0], d["predict_sql"][1]),
        outputs=tuple((n, g, mw, adj) for n, g, mw, adj in d["outputs"]))


def compiled_text(settings: dict[str, Any], *, compile: bool = False) -> str | None:
    """What Splink makes of a model's settings (:func:`_compiled`) as JSON text, as a store
    keeps it (``model_sql``): the one this process holds, or, with ``compile``, one made
    now (which imports Splink); else None. :func:`adopt_compiled` reads it back, bit for bit.

    >>> from idweave.linkage.comparisons import build_settings
    >>> from idweave.linkage.project import load_project
    >>> s = build_settings(load_project("fixtures/tiny/project.yaml"))
    >>> text = compiled_text(s, compile=True)
    >>> compiled_text(s) == text, json.loads(text)["uid"]
    (True, '"rid"')
    """
    hit = _cached(_settings_key(settings))
    if hit is None:
        if not compile:
            return None
        hit = _compiled(settings)
    return _compiled_to_json(hit)


def adopt_compiled(settings: dict[str, Any], text: str) -> None:
    """Take ``text`` (:func:`compiled_text` of these very settings, made by this Splink with
    this :func:`compile_key`, as a store keeps it) as this process's compiled form of
    ``settings``: scoring with them (:func:`score_pairs`, :func:`scoring_parts`) then runs
    no Splink. Nothing checks that the text belongs to the settings: the caller's key does.

    >>> from idweave.linkage.comparisons import build_settings
    >>> from idweave.linkage.project import load_project
    >>> s = build_settings(load_project("fixtures/tiny/project.yaml"))
    >>> adopt_compiled(s, compiled_text(s, compile=True))
    >>> scoring_parts(s).comparisons[0]["name"]
    'first_name'
    """
    _remember(_settings_key(settings), _compiled_from_json(text))


# --------------------------------------------------------------------------------------
# the compiled form in a store (``model_sql``): the store keeps text under the key given here
# --------------------------------------------------------------------------------------
def compiled_key(version: str) -> list[str] | None:
    """The ``model_sql`` key of model ``version`` compiled in this process: the model
    version, the installed Splink's version and :func:`compile_key` (None: nothing is kept
    or reused).

    >>> key = compiled_key("v1")
    >>> key[0], key[1] == splink_version(), key[2] == compile_key()
    ('v1', True, True)
    """
    key = compile_key()
    return None if key is None else [version, splink_version(), key]


def stored_model(st) -> tuple[dict[str, Any], dict[str, pl.DataFrame], str] | None:
    """The store's latest model (:meth:`~idweave.linkage.graph.Store.latest_model`: settings,
    tf tables, version), and, if the store holds what Splink made of it under this process's
    :func:`compiled_key`, that compiled form taken (:func:`adopt_compiled`): scoring with the
    model then neither imports nor runs Splink. An unreadable stored form is ignored (the
    model is compiled again when needed).

    >>> from idweave.linkage.graph import Store
    >>> store = Store.open("out/doctest.duckdb")
    >>> got = stored_model(store)
    >>> got is None or got[2] == store.last_run_info()["model_version"]
    True
    >>> store.close()
    """
    got = st.latest_model()
    if got is None:
        return None
    settings, _tf, version = got
    key = compiled_key(version)
    text = st.compiled_model(key) if key is not None else None
    if text is not None:
        try:
            adopt_compiled(settings, text)
        except (ValueError, KeyError, TypeError, IndexError):  # unreadable: compiled again when needed
            pass
    return got


def save_compiled(st, version: str, settings: dict[str, Any], run_id: int) -> None:
    """Keep in the store (inside the caller's transaction) what Splink made of model
    ``version`` for scoring, under :func:`compiled_key`, unless it holds it already.

    The compiled form is the one this process scored with; if it did not (no pair was
    scored), it is made now only when Splink is loaded already (a run that trained), so
    that a run reusing a stored model still never imports Splink. A later run stores it.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from idweave.linkage.comparisons import build_settings
    >>> from idweave.linkage.graph import Store
    >>> from idweave.linkage.project import load_project
    >>> s = build_settings(load_project("fixtures/tiny/project.yaml"))
    >>> _ = compiled_text(s, compile=True)  # as scoring with it does
    >>> store = Store.open(Path(tempfile.mkdtemp()) / "store.duckdb")
    >>> store.begin(); save_compiled(store, "v1", s, 1); store.commit()
    >>> store.compiled_model(compiled_key("v1")) == compiled_text(s)
    True
    >>> store.close()
    """
    key = compiled_key(version)
    if key is None or st.compiled_model(key) is not None:
        return
    text = compiled_text(settings, compile="splink" in sys.modules)
    if text is not None:
        st.save_compiled(key, run_id, text)
