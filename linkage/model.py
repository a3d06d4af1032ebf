"""The matching model: the only module that imports splink.

Comparisons are derived from attribute kinds (overridable per attribute), trained without
labels on Splink 5 (u by random sampling, the prior from deterministic rules, then EM over
several blocking passes so every comparison is trained), and applied to the candidate pairs
that :mod:`idweave.blocking` made. A trained model is a Splink 5 model JSON
(``splink.Linker(df, "model.json")`` loads it) plus the term-frequency tables it was trained
with, so that later runs and lookups score exactly as the training run did.

>>> from idweave.linkage.project import load_project
>>> from idweave.linkage.sources import load_records
>>> p = load_project("fixtures/tiny/project.yaml")
>>> settings = build_settings(p)
>>> [c["output_column_name"] for c in settings["comparisons"]][:2]
['first_name', 'last_name']
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import polars as pl

from idweave.linkage._db import query_pl

from idweave.linkage.errors import ModelError
from idweave.linkage.kinds import NAME_KINDS, default_comparison
from idweave.linkage.project import Project

__all__ = [
    "TrainedModel", "build_settings", "train", "score_pairs", "comparison_columns",
    "model_attributes", "splink_version", "compile_key", "compiled_text", "adopt_compiled",
]

log = logging.getLogger("idweave.model")


def splink_version() -> str:
    """The installed Splink's version, read from its package metadata: no ``import splink``
    (a third of a second), so a run that reuses a stored model never loads Splink.

    >>> splink_version().split(".")[0]
    '5'
    """
    return _dist_version("splink")


@lru_cache(maxsize=None)
def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# --------------------------------------------------------------------------------------
# comparison ladders (Splink comparison dicts: plain SQL, so they round-trip through JSON)
# --------------------------------------------------------------------------------------
def _q(c: str) -> str:
    return f'"{c}"'


def _l(c: str) -> str:
    return _q(f"{c}_l")


def _r(c: str) -> str:
    return _q(f"{c}_r")


def _null(c: str) -> dict:
    return {"sql_condition": f"{_l(c)} IS NULL OR {_r(c)} IS NULL", "label_for_charts": "null",
            "is_null_level": True}


def _exact(c: str, tf: bool, label: str = "exact") -> dict:
    lvl: dict[str, Any] = {"sql_condition": f"{_l(c)} = {_r(c)}", "label_for_charts": label}
    if tf:
        lvl["tf_adjustment_column"] = c
        lvl["tf_adjustment_weight"] = 1.0
    return lvl


def _else() -> dict:
    return {"sql_condition": "ELSE", "label_for_charts": "else"}


def _lvl(sql: str, label: str) -> dict:
    return {"sql_condition": sql, "label_for_charts": label}


def _jw(c: str, t: float) -> str:
    return f"jaro_winkler_similarity({_l(c)}, {_r(c)}) >= {t}"


# Random pairs sampled to estimate u, unless the project says otherwise.
U_MAX_PAIRS = 1e6

# Helper columns the model derives from records before Splink sees them.
FORMAL_SUFFIX = "__formal"


# An address shared by two records with one family name is what a household looks like, not
# one person: the levels of such pairs form their own branch of the ladder (see
# :func:`_household_branch` and :func:`condition_households`), labelled with this suffix.
HOUSEHOLD_SUFFIX = ", same family name"
# What members of one household share besides the family name: an address, a landline, and
# (borrowed, or mistyped by a clerk) an identifier. Not a postcode: it holds many households,
# and on historical_50k (no households) conditioning it cost 0.004 F1 (BENCHMARKS.md).
HOUSEHOLD_METHODS = ("address", "phone", "identifier")


def _family_agrees(family: str) -> str:
    return f"({_l(family)} = {_r(family)} OR {_jw(family, 0.92)})"


def _household_branch(steps: list[dict], family: str) -> list[dict]:
    """The levels of ``steps`` again for pairs whose family names agree, most similar first,
    ending in their own ``else``: these come first in the ladder, so the plain levels after
    them only see pairs whose family names differ (or are missing).

    Fellegi-Sunter counts each comparison as independent evidence. Among non-matches in a
    population register, a shared family name and a shared address are not independent: a
    household shares both. Splitting the address ladder by family-name agreement lets the
    model learn P(address level | family names agree, non-match) apart from
    P(address level | family names differ, non-match), so a household's shared address is
    not counted as if it were a coincidence on top of its shared name.

    >>> [lv["label_for_charts"] for lv in _household_branch([_exact("a", False)], "b")]
    ['exact, same family name', 'else, same family name']
    """
    agree = _family_agrees(family)
    branch = []
    for st in steps:
        lv = {"sql_condition": f"({st['sql_condition']}) AND {agree}",
              "label_for_charts": st["label_for_charts"] + HOUSEHOLD_SUFFIX}
        # No term-frequency adjustment inside the branch: it would put back the rarity of the
        # address value that the branch's conditional u takes out.
        branch.append(lv)
    branch.append({"sql_condition": agree, "label_for_charts": "else" + HOUSEHOLD_SUFFIX})
    return branch


def _partner(kind: str, kinds: dict[str, str]) -> str | None:
    """For a given name, the family-name attribute (and the reverse), if the project has one."""
    want = {"given_name": "family_name", "family_name": "given_name"}.get(kind)
    return next((a for a, k in kinds.items() if k == want), None) if want else None


def input_columns(settings: dict[str, Any]) -> list[str]:
    """Every record column the comparisons of a model read (attributes and helper columns).

    >>> input_columns({"comparisons": [{"comparison_levels": [
    ...     {"sql_condition": 'list_has_any("a__formal_l", "a__formal_r") OR "a_l" = "b_r"'}]}]})
    ['a__formal', 'a', 'b']
    """
    cols: list[str] = []
    for c in settings["comparisons"]:
        for lv in c["comparison_levels"]:
            for name in re.findall(r'"([A-Za-z0-9_]+)_[lr]"', lv["sql_condition"]):
                if name not in cols:
                    cols.append(name)
    return cols


def prepare(records: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """``rid`` and the columns a model reads, deriving helper columns (formal names).

    >>> recs = pl.DataFrame({"rid": [0, 1, 2], "first_name": ["bob", None, "zebedee"], "x": [1, 2, 3]})
    >>> prepare(recs, ["first_name", "first_name__formal"])["first_name__formal"].to_list()
    [['robert'], None, ['zebedee']]
    """
    import pyarrow as pa

    from idweave.blocking.keys import canonical_names

    out = records.select("rid", *[c for c in columns if c in records.columns])
    for c in columns:
        if c.endswith(FORMAL_SUFFIX) and c not in out.columns:
            base = c[: -len(FORMAL_SUFFIX)]
            uniq = records[base].drop_nulls().unique()
            # The lists go to polars as one arrow list array (values and offsets): building
            # them one Python list at a time took most of the time of scoring a few pairs.
            # Values and offsets become arrow through polars: pyarrow's own ``pa.array`` of a
            # Python list imports pandas (half a second) to check whether it was given one.
            flat: list[str] = []
            offsets = [0]
            for v in uniq.to_list():
                flat += canonical_names(v)
                offsets.append(len(flat))
            lists = pl.Series(pa.ListArray.from_arrays(pl.Series(offsets, dtype=pl.Int32).to_arrow(),
                                                       pl.Series(flat, dtype=pl.Utf8).to_arrow()))
            table = pl.DataFrame([uniq.alias("value"), lists.alias("formal")])
            formal = records.select(pl.col(base).alias("value")).join(table, on="value", how="left",
                                                                       maintain_order="left")["formal"]
            out = out.with_columns(formal.alias(c))
    return out


def _ladder(c: str, kind: str, spec: dict[str, Any], others: dict[str, str]) -> list[dict]:
    """The levels of one comparison, most to least similar, null first."""
    m = spec["method"]
    tf = bool(spec.get("term_frequency", False))
    th = spec.get("thresholds")
    levels = [_null(c)]
    if m == "name":
        levels.append(_exact(c, tf))
        if kind == "given_name":
            # "bob" and "robert" are one name: their sets of formal names meet.
            f = f"{c}{FORMAL_SUFFIX}"
            levels.append(_lvl(f"list_has_any({_l(f)}, {_r(f)})", "nickname or variant"))
        for t in th or [0.92, 0.8]:
            levels.append(_lvl(_jw(c, t), f"jaro-winkler >= {t}"))
        # Multi-part and hyphenated names: "garcia lopez" and "garcia", "mary ann" and "ann".
        levels.append(_lvl(f"len(list_intersect(string_split({_l(c)}, ' '), string_split({_r(c)}, ' '))) >= 1",
                           "a word in common"))
        if kind == "given_name":
            # An initial stands for a name: "j" agrees with "john" more than "mary" does.
            levels.append(_lvl(f"(length({_l(c)}) = 1 OR length({_r(c)}) = 1) AND "
                               f"substr({_l(c)}, 1, 1) = substr({_r(c)}, 1, 1)", "initial agrees"))
        partner = _partner(kind, others)
        if partner:
            # Registries swap given and family names, or put a surname in the first field.
            levels.append(_lvl(f"{_l(c)} = {_r(partner)} OR {_r(c)} = {_l(partner)}",
                               "found in the other name field"))
    elif m == "full_name":
        levels.append(_exact(c, tf))
        levels.append(_lvl(f"list_sort(string_split({_l(c)}, ' ')) = list_sort(string_split({_r(c)}, ' '))",
                           "same tokens, other order"))
        for t in th or [0.92, 0.8]:
            levels.append(_lvl(_jw(c, t), f"jaro-winkler >= {t}"))
        levels.append(_lvl(f"len(list_intersect(string_split({_l(c)}, ' '), string_split({_r(c)}, ' '))) >= 1",
                           "a token in common"))
    elif m == "date":
        dl, dr = f"try_cast({_l(c)} AS DATE)", f"try_cast({_r(c)} AS DATE)"
        levels.append(_exact(c, False))
        levels.append(_lvl(f"damerau_levenshtein({_l(c)}, {_r(c)}) <= 1 OR "
                           f"(substr({_l(c)}, 1, 4) = substr({_r(c)}, 1, 4) AND substr({_l(c)}, 6, 2) = substr({_r(c)}, 9, 2)"
                           f" AND substr({_l(c)}, 9, 2) = substr({_r(c)}, 6, 2))",
                           "one typo or day/month swapped"))
        levels.append(_lvl(f"abs(date_diff('day', {dl}, {dr})) <= 31", "within a month"))
        levels.append(_lvl(f"abs(date_diff('day', {dl}, {dr})) <= 366", "within a year"))
        levels.append(_lvl(f"abs(date_diff('day', {dl}, {dr})) <= 3653", "within ten years"))
    elif m in ("identifier", "phone"):
        levels.append(_exact(c, tf))
        levels.append(_lvl(f"damerau_levenshtein({_l(c)}, {_r(c)}) <= 1", "one typo"))
        if m == "phone":
            levels.append(_lvl(f"right({_l(c)}, 7) = right({_r(c)}, 7)", "last 7 digits agree"))
    elif m == "postcode":
        levels.append(_exact(c, tf))
        levels.append(_lvl(f"damerau_levenshtein({_l(c)}, {_r(c)}) <= 1", "one typo"))
        levels.append(_lvl(f"length({_l(c)}) > 4 AND length({_r(c)}) > 4 AND "
                           f"left({_l(c)}, length({_l(c)}) - 3) = left({_r(c)}, length({_r(c)}) - 3)",
                           "same district"))
        levels.append(_lvl(f"substr({_l(c)}, 1, 2) = substr({_r(c)}, 1, 2)", "same area"))
    elif m == "email":
        levels.append(_exact(c, tf))
        levels.append(_lvl(f"split_part({_l(c)}, '@', 1) = split_part({_r(c)}, '@', 1)", "same user name"))
        levels.append(_lvl(_jw(c, 0.88), "jaro-winkler >= 0.88"))
    elif m == "address":
        levels.append(_exact(c, tf))
        levels.append(_lvl(_jw(c, 0.9), "jaro-winkler >= 0.9"))
        levels.append(_lvl(f"len(list_intersect(string_split({_l(c)}, ' '), string_split({_r(c)}, ' '))) >= 2",
                           "two words in common"))
    elif m == "exact":
        levels.append(_exact(c, tf))
        if kind == "city":
            levels.append(_lvl(f"damerau_levenshtein({_l(c)}, {_r(c)}) <= 1", "one typo"))
    elif m == "jaro_winkler":
        levels.append(_exact(c, tf))
        for t in th or [0.92, 0.8]:
            levels.append(_lvl(_jw(c, t), f"jaro-winkler >= {t}"))
    elif m in ("levenshtein", "damerau_levenshtein"):
        levels.append(_exact(c, tf))
        for t in th or [1, 2]:
            levels.append(_lvl(f"{m}({_l(c)}, {_r(c)}) <= {int(t)}", f"{m} <= {int(t)}"))
    elif m == "numeric":
        levels.append(_exact(c, False))
        for t in th or [0.01, 0.1]:
            levels.append(_lvl(f"abs({_l(c)} - {_r(c)}) <= {t} * greatest(abs({_l(c)}), abs({_r(c)}))",
                               f"within {t:.0%}"))
    else:  # pragma: no cover - validated in project.py
        raise ModelError(f"unknown comparison method {m!r}")
    family = next((a for a, k in others.items() if k == "family_name"), None)
    if m in HOUSEHOLD_METHODS and family and family != c and spec.get("household", True):
        levels[1:] = [*_household_branch(levels[1:], family), *levels[1:]]
    levels.append(_else())
    return levels


def model_attributes(project: Project) -> dict[str, dict[str, Any]]:
    """Attribute -> comparison spec actually used (overrides applied, 'off' removed).

    A full name is only compared when the project has no separate given and family names:
    otherwise it only fills them in (see sources.derive_names) and comparing it again would
    count the same evidence twice.
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}
    has_parts = any(k == "given_name" for k in kinds.values()) and any(k == "family_name" for k in kinds.values())
    overrides = project.comparisons or {}
    out: dict[str, dict[str, Any]] = {}
    for attr, kind in kinds.items():
        spec: Any = overrides.get(attr)
        if spec is False or spec == "off" or (isinstance(spec, dict) and spec.get("method") == "off"):
            continue
        if spec is None:
            if kind == "full_name" and has_parts:
                continue
            spec = default_comparison(kind)
        elif isinstance(spec, str):
            spec = {"method": spec}
        out[attr] = dict(spec)
    return out


def comparison_columns(project: Project) -> list[str]:
    """Columns the model reads from records."""
    return list(model_attributes(project))


def build_settings(project: Project, *, rules_sql: Iterable[str] = (), prior: float = 1e-4) -> dict[str, Any]:
    """The Splink settings dict (untrained) that the project's kinds and overrides imply."""
    kinds = {a.name: a.kind for a in project.attributes.values()}
    comps = []
    for attr, spec in model_attributes(project).items():
        comps.append({
            "output_column_name": attr,
            "comparison_description": f"{attr} ({kinds[attr]}, {spec['method']})",
            "comparison_levels": _ladder(attr, kinds[attr], spec, kinds),
        })
    if not comps:
        raise ModelError("no attribute is compared: declare at least one attribute a source maps")
    return {
        "link_type": "dedupe_only",
        "unique_id_column_name": "rid",
        "probability_two_random_records_match": prior,
        "blocking_rules_to_generate_predictions": list(rules_sql) or ["1 = 0"],
        "comparisons": comps,
        # Needed for the gamma (level) columns, which are the per-attribute evidence.
        "retain_matching_columns": True,
        "retain_intermediate_calculation_columns": True,
        "max_iterations": 25,
        "em_convergence": 0.0001,
    }


# --------------------------------------------------------------------------------------
# trained model
# --------------------------------------------------------------------------------------
@dataclass
class TrainedModel:
    """A Splink model JSON (``settings``) plus the term-frequency tables it scores with."""

    settings: dict[str, Any]
    tf_tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    training_log: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        """Content hash of the model: changes exactly when scores could change."""
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for k in sorted(self.tf_tables):
            h.update(k.encode())
            h.update(self.tf_tables[k].sort(k).write_csv().encode())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(self.settings, indent=2, default=str)

    def save(self, path: Path) -> None:
        """Write the Splink model JSON atomically (a temp file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text(self.to_json())
            tmp.replace(path)
        except BaseException:  # a full disk must not leave half a model beside the store
            tmp.unlink(missing_ok=True)
            raise

    @property
    def prior(self) -> float:
        return float(self.settings["probability_two_random_records_match"])

    def comparisons(self) -> list[dict[str, Any]]:
        return self.settings["comparisons"]

    def weights_table(self) -> pl.DataFrame:
        """One row per comparison level: m, u and the match weight log2(m/u)."""
        rows = []
        for c in self.comparisons():
            for i, lvl in enumerate(c["comparison_levels"]):
                if lvl.get("is_null_level"):
                    continue
                m, u = lvl.get("m_probability"), lvl.get("u_probability")
                w = math.log2(m / u) if m and u else None
                rows.append({"comparison": c["output_column_name"], "level": lvl.get("label_for_charts", str(i)),
                             "m": m, "u": u, "weight": w})
        return pl.DataFrame(rows, schema={"comparison": pl.Utf8, "level": pl.Utf8, "m": pl.Float64,
                                          "u": pl.Float64, "weight": pl.Float64})


@contextmanager
def _engine(what: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A private in-memory DuckDB for Splink's work tables (never the store), closed after;
    engine failures become a ModelError saying what failed."""
    con = duckdb.connect()
    try:
        with _engine_errors(what):
            yield con
    finally:
        con.close()


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Engine failures inside the block become a ModelError saying what failed."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{what} failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:300]}") from exc


def _db_api(con: duckdb.DuckDBPyConnection, engine: str):
    if engine != "duckdb":
        raise ModelError(f"engine {engine!r} is not available in this version of idweave; use duckdb",
                         key="engine")
    from splink import DuckDBAPI

    return DuckDBAPI(connection=con)


def _linker(records: pl.DataFrame, settings: dict[str, Any], con: duckdb.DuckDBPyConnection, engine: str,
            tf_tables: dict[str, pl.DataFrame] | None = None, *, validate: bool = True):
    from splink import Linker

    db = _db_api(con, engine)
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


def _tf_columns(settings: dict[str, Any]) -> list[str]:
    cols = []
    for c in settings["comparisons"]:
        for lvl in c["comparison_levels"]:
            if lvl.get("tf_adjustment_column") and lvl["tf_adjustment_column"] not in cols:
                cols.append(lvl["tf_adjustment_column"])
    return cols


def _em_rules(project: Project, present: set[str]) -> list[tuple[str, str]]:
    """EM blocking passes (name, SQL) so that every compared attribute is trained in at
    least one pass that does not block on it."""
    kinds = {a.name: a.kind for a in project.attributes.values()}
    compared = [a for a in model_attributes(project) if a in present]
    by_kind: dict[str, list[str]] = {}
    for a in compared:
        by_kind.setdefault(kinds[a], []).append(a)
    cands: list[list[str]] = []
    for k in ("date",):
        cands += [[a] for a in by_kind.get(k, [])]
    names = [by_kind[k][0] for k in NAME_KINDS if k in by_kind]
    if "given_name" in by_kind and "family_name" in by_kind:
        cands.append([by_kind["given_name"][0], by_kind["family_name"][0]])
    elif names:
        cands.append(names[:1])
    for k in ("national_id", "email", "phone", "postcode", "address", "city", "full_name", "family_name",
              "given_name", "category", "text", "number", "sex"):
        cands += [[a] for a in by_kind.get(k, [])]
    chosen: list[list[str]] = []
    trained: set[str] = set()
    for cand in cands:
        gain = set(compared) - set(cand) - trained
        if gain:
            chosen.append(cand)
            trained |= gain
        if trained >= set(compared):
            break
    return [(" & ".join(c), " AND ".join(f'l."{a}" = r."{a}"' for a in c)) for c in chosen]


def _prior_rules(project: Project, present: set[str]) -> list[str]:
    """Deterministic rules that admit almost no false matches, for the prior."""
    kinds = {a.name: a.kind for a in project.attributes.values()}
    by_kind: dict[str, list[str]] = {}
    for a in model_attributes(project):
        if a in present:
            by_kind.setdefault(kinds[a], []).append(a)
    rules = []
    date = by_kind.get("date", [None])[0]
    names = [by_kind[k][0] for k in ("given_name", "family_name") if k in by_kind] or \
        [by_kind[k][0] for k in ("full_name",) if k in by_kind]
    if names and date:
        rules.append(" AND ".join(f'l."{a}" = r."{a}"' for a in [*names, date]))
    for k in ("national_id", "email"):
        for a in by_kind.get(k, []):
            extra = f' AND l."{names[0]}" = r."{names[0]}"' if names else ""
            rules.append(f'l."{a}" = r."{a}"{extra}')
    return rules


def _label_pairs(records: pl.DataFrame, project: Project) -> pl.DataFrame | None:
    """Matching pairs as rids (``rid_l``, ``rid_r``) from the project's
    ``training.m_from_labels`` file or ``training.m_from_column`` truth column, if set."""
    from idweave.linkage.sources import load_records, read_pair_labels

    key = records.select("rid", "source", "record_id")
    if project.training.get("m_from_labels"):
        path = Path(project.training["m_from_labels"])
        path = path if path.is_absolute() else project.base_dir / path
        labels = read_pair_labels(path).filter(pl.col("score") >= 0.5)
        pairs = (labels.join(key.rename({"rid": "unique_id_l", "source": "source_l", "record_id": "record_id_l"}),
                             on=["source_l", "record_id_l"])
                 .join(key.rename({"rid": "unique_id_r", "source": "source_r", "record_id": "record_id_r"}),
                       on=["source_r", "record_id_r"]))
    elif project.training.get("m_from_column"):
        col = str(project.training["m_from_column"])
        truth = load_records(project, extra_columns=[col]).select("source", "record_id", col).drop_nulls(col)
        t = key.join(truth, on=["source", "record_id"])
        pairs = t.join(t, on=col, suffix="_r").filter(pl.col("rid") < pl.col("rid_r")).select(
            pl.col("rid").alias("unique_id_l"), pl.col("rid_r").alias("unique_id_r"))
    else:
        return None
    if pairs.height == 0:
        raise ModelError("the labels name no matching pair of records in the sources", key="training")
    # Splink names label columns after the unique id column (here ``rid``).
    return (pairs.select(pl.col("unique_id_l").alias("rid_l"), pl.col("unique_id_r").alias("rid_r"))
            .unique().sort("rid_l", "rid_r").with_columns(pl.lit(1.0).alias("clerical_match_score")))


def train(records: pl.DataFrame, project: Project, *, seed: int = 42, progress=None) -> TrainedModel:
    """Train a model on records (which need ``rid`` and the compared attributes), no labels.

    Steps: the prior from deterministic rules (recall assumed 0.7); u by random sampling;
    EM over several blocking passes chosen so every comparison is trained in one that does
    not block on it. The term-frequency tables of the training data are kept with the model.

    Training is deterministic: the same records (whatever their row order) give the same
    model, bit for bit, in any process (see :func:`_training_engine`). A pass that EM cannot
    train (no pairs, or every pair looked like a non-match) is skipped and said so in
    ``training_log``; values Splink's EM cannot go on from are held (see :func:`_em_pass`).

    >>> from idweave.linkage.project import load_project
    >>> from idweave.linkage.sources import load_records
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> recs = load_records(p).sort("source", "record_id").with_row_index("rid")
    >>> a, b = train(recs, p), train(recs.reverse(), p)
    >>> a.version == b.version, a.training_log[0]
    (True, 'em pass blocked on birth_date')
    """
    wanted = build_settings(project)
    # Splink trains the ladders without their household branches (add_households puts them
    # back): EM would otherwise take the households among its pairs for matches.
    settings = without_households(wanted)
    # Row order must not matter: Splink's sums run in the order rows arrive.
    recs = prepare(records, input_columns(wanted)).sort("rid")
    present = {c for c in comparison_columns(project) if recs[c].null_count() < recs.height}
    log_lines: list[str] = []
    with _training_engine() as con:
        linker, db = _linker(recs, settings, con, project.engine)
        n = recs.height
        total_pairs = n * (n - 1) / 2
        prior_rules = _prior_rules(project, present)
        if prior_rules:
            try:
                linker.training.estimate_probability_two_random_records_match(prior_rules, recall=0.7)
            except ValueError as exc:  # too many deterministic matches for the recall: keep default
                log_lines.append(f"prior: kept default ({exc})")
            else:
                # (Splink has no public setter for the prior; its settings object holds it.)
                prior = linker._settings_obj._probability_two_random_records_match
                if not 0 < prior < 1:  # no pair met the rules: EM cannot start from a prior of 0
                    linker._settings_obj._probability_two_random_records_match = settings[
                        "probability_two_random_records_match"]
                    log_lines.append(f"prior: kept default {settings['probability_two_random_records_match']:g} "
                                     f"(the deterministic rules gave {prior:g})")
        if progress:
            progress("u")
        # 1e6 sampled pairs gave the same accuracy as 5e6 on all four benchmarks at a third of
        # the time (BENCHMARKS.md); `training: {u_max_pairs: ...}` raises it.
        max_pairs = float(project.training.get("u_max_pairs", min(U_MAX_PAIRS, max(total_pairs, 1))))
        linker.training.estimate_u_using_random_sampling(max_pairs=max_pairs,
                                                         seed=int(project.training.get("seed", seed)))
        labelled = _label_pairs(records, project)
        if labelled is not None:
            # Labels stand in for EM: m is what the labelled matches show, level by level.
            t = db.register(labelled.to_arrow(), table_name="idweave_labels")
            linker.training.estimate_m_from_pairwise_labels(t)
            log_lines.append(f"m estimated from {labelled.height:,} labelled matching pairs")
        for name, sql in ([] if labelled is not None else _em_rules(project, present)):
            if progress:
                progress(f"em: {name}")
            log_lines += _em_pass(linker, settings, name, sql)
        trained = linker.misc.save_model_to_json(None)
        # Splink's random cache id (its table names) is no part of the model.
        trained.pop("linker_uid", None)
        raw = copy.deepcopy(trained)
        log_lines += regularise(trained)
        if any(_is_branch(lv) for c in wanted["comparisons"] for lv in c["comparison_levels"]):
            kinds = {a: k for a, k in ((a.name, a.kind) for a in project.attributes.values()) if a in present}
            log_lines += add_households(trained, wanted, household_shares(con, recs, wanted, kinds), raw)
        tf_tables = {}
        for col in _tf_columns(trained):
            tf = linker.table_management.compute_tf_table(col).as_duckdbpyrelation().pl()
            tf_tables[col] = tf.sort(col)
    model = TrainedModel(trained, tf_tables, log_lines)
    return model


@contextmanager
def _scoring_engine() -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`_engine` for :func:`score_pairs`' one query: a cursor of the process's scratch
    DuckDB (:func:`idweave.linkage._db.scratch`; a new database costs ~20 ms a call, a
    cursor well under one), default threads as :func:`_engine`."""
    from idweave.linkage._db import scratch

    with scratch() as con, _engine_errors("scoring"):
        yield con


@contextmanager
def _training_engine() -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`_engine` with one thread: DuckDB's parallel aggregation adds floats in whatever
    order its threads finish (EM's sums of match probabilities differ in the last bits from
    run to run, and so would the model version); one thread adds them in row order."""
    with _engine("training") as con:
        con.execute("SET threads = 1")
        yield con


class _DegenerateEM(ValueError):
    """An EM pass that cannot go on (see :func:`_em_pass`)."""


# Splink refuses m below this (float64 cannot hold it reliably); an EM pass that drives a
# level's m to 0 holds it here instead (regularise then raises it to MIN_M).
M_FLOOR = 1e-300
# An EM pass in which every pair looks like a match drives its match probability to 1, from
# which Splink cannot go on (the prior's weight is infinite); it is held just below.
LAMBDA_CEILING = 1 - 1e-9

_EM_GUARD = threading.Lock()


@contextmanager
def _em_guard(settings: dict[str, Any], held: list[str]) -> Iterator[None]:
    """While it is open, each maximisation step of Splink's EM holds m at :data:`M_FLOOR` at
    least and the pass's match probability at :data:`LAMBDA_CEILING` at most (what was held
    is added to ``held``, once each); a pass in which no pair looks like a match (match
    probability 0, or a comparison's m undefined) raises :class:`_DegenerateEM` instead of
    failing somewhere inside Splink.

    Splink 5 has no option for this: its EM loop looks the step up in its module, where it
    is wrapped while the block is open (one pass at a time, under a lock) and then put back.
    Values Splink accepts pass through unchanged."""
    from splink.internals import expectation_maximisation as em

    original = em.compute_proportions_for_new_parameters

    def note(what: str) -> None:
        if what not in held:
            held.append(what)

    def guarded(df_params):
        records = original(df_params)
        for r in records:
            m = r.get("m_probability")
            if not isinstance(m, (int, float)):  # Splink's "level not observed"
                continue
            if r["output_column_name"] == "_probability_two_random_records_match":
                if not m > 0:
                    raise _DegenerateEM("no pair looked like a match")
                if m > LAMBDA_CEILING:
                    r["m_probability"] = LAMBDA_CEILING
                    note("the match probability below 1 (every pair looked like a match)")
            elif not math.isfinite(m):
                raise _DegenerateEM(f"no pair with a {r['output_column_name']} looked like a match")
            elif m < M_FLOOR:
                r["m_probability"] = M_FLOOR
                note(f"m of {_level_name(settings, r['output_column_name'], int(r['comparison_vector_value']))}"
                     f" at {M_FLOOR:g}")
        return records

    with _EM_GUARD:
        em.compute_proportions_for_new_parameters = guarded
        try:
            yield
        finally:
            em.compute_proportions_for_new_parameters = original


def _level_name(settings: dict[str, Any], comparison: str, gamma: int) -> str:
    """``comparison: label`` of the level Splink numbers ``gamma`` (the levels after the null
    level count down to 0, the ``else`` level).

    >>> s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
    ...     {"is_null_level": True}, {"label_for_charts": "exact"}, {"label_for_charts": "else"}]}]}
    >>> _level_name(s, "x", 1), _level_name(s, "x", 0)
    ('x: exact', 'x: else')
    """
    c = next(c for c in settings["comparisons"] if c["output_column_name"] == comparison)
    levels = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
    return f"{comparison}: {levels[len(levels) - 1 - gamma].get('label_for_charts', gamma)}"


def _em_pass(linker, settings: dict[str, Any], name: str, sql: str) -> list[str]:
    """One EM pass blocked on ``sql``; returns its training-log lines.

    Splink raises when EM drives a level's m below 1e-300 (a level seen only among clear
    non-matches) or when every pair of the pass looks like a match, so on small data whole
    passes used to be lost; here :func:`_em_guard` holds such values and the pass finishes.
    A pass that cannot be trained (no pairs, or no pair looks like a match) is skipped and
    leaves the linker exactly as it was: Splink's session drops the comparisons its rule
    blocks on from the linker's settings and changes their prior before it trains, and puts
    them back only on success (a failed pass used to leave a model without those
    comparisons, which every later run then retrained). The log says what happened.
    """
    from splink.internals.exceptions import EMTrainingException

    # Splink has no public way to keep or restore a linker's settings.
    before = linker._settings_obj.core_model_settings.copy()
    held: list[str] = []
    try:
        with _em_guard(settings, held):
            linker.training.estimate_parameters_using_expectation_maximisation(
                sql, estimate_without_term_frequencies=True)
    except Exception as exc:  # one pass must not sink the whole model
        linker._settings_obj.core_model_settings = before
        if isinstance(exc, EMTrainingException):
            why = f"no pair of records agrees on {name}"
        elif isinstance(exc, _DegenerateEM):
            why = str(exc)
        else:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return [f"em pass blocked on {name} skipped: {why}"]
    lines = [f"em pass blocked on {name}"]
    if held:
        lines.append(f"em pass blocked on {name}: held {', '.join(held)}")
    return lines


# No level may claim that fewer than 1 in 200 true matches reach it: recording errors hit
# every attribute, and EM left alone drives a never-seen level's m to 0, which makes one
# disagreement (a sex typo) veto any match with dozens of negative bits.
MIN_M = 0.005

# Levels that are not a step on the similarity ladder (a name found in the other field):
# they only have to beat the ``else`` level.
SIDE_LEVELS = ("found in the other name field",)


def _lift(lv: dict[str, Any], floor: float) -> None:
    lv["m_probability"] = min(lv["u_probability"] * 2 ** floor, 1.0)


def _is_branch(lv: dict[str, Any]) -> bool:
    return str(lv.get("label_for_charts", "")).endswith(HOUSEHOLD_SUFFIX)


def without_households(settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` without the household branches (:func:`_household_branch`).

    >>> s = {"comparisons": [{"comparison_levels": [{"label_for_charts": "exact, same family name"},
    ...                                             {"label_for_charts": "exact"}]}]}
    >>> [lv["label_for_charts"] for lv in without_households(s)["comparisons"][0]["comparison_levels"]]
    ['exact']
    """
    out = copy.deepcopy(settings)
    for c in out["comparisons"]:
        c["comparison_levels"] = [lv for lv in c["comparison_levels"] if not _is_branch(lv)]
    return out


# Pairs sampled (at most) to learn what households share; and the fewest likely non-matching
# pairs with agreeing family names below which a branch is not trusted.
HOUSEHOLD_SAMPLE = 2_000_000
HOUSEHOLD_MIN_PAIRS = 200


def _level_case(c: dict[str, Any]) -> str:
    """SQL giving the position of the first level of comparison ``c`` a pair reaches."""
    whens = " ".join(f"WHEN {lv['sql_condition']} THEN {i}" for i, lv in enumerate(c["comparison_levels"])
                     if lv["sql_condition"] != "ELSE")
    return f"CASE {whens} ELSE {len(c['comparison_levels']) - 1} END"


def household_shares(con: duckdb.DuckDBPyConnection, records: pl.DataFrame, settings: dict[str, Any],
                     kinds: dict[str, str]) -> dict[str, tuple[list[float], int]]:
    """What non-matching members of one family share. For each comparison of ``settings``
    that has a household branch: the share of each of its plain levels (null excluded) among
    pairs of records whose family names agree exactly and that are clearly two people, with
    the number of such pairs.

    "Clearly two people" means given names at the given-name comparison's ``else`` level (both
    present): a match keeps its given name in ~97 % of pairs on every benchmark here, so these
    pairs stand for the non-matches inside families, free of the matches that a plain random
    sample of same-family pairs is full of. Records are sampled by a hash of their
    ``rid`` (deterministic) so that at most :data:`HOUSEHOLD_SAMPLE` pairs are formed.
    """
    plain = {c["output_column_name"]: c for c in without_households(settings)["comparisons"]}
    targets = [c["output_column_name"] for c in settings["comparisons"]
               if any(_is_branch(lv) for lv in c["comparison_levels"])]
    first = lambda kind: next((a for a, k in kinds.items() if k == kind and a in plain), None)  # noqa: E731
    family, given = first("family_name"), first("given_name")
    if family is None or given is None or not targets:
        return {}
    sizes = records.group_by(family).len().filter(pl.col(family).is_not_null())["len"].cast(pl.Float64)
    total = float((sizes * (sizes - 1) / 2).sum()) if sizes.len() else 0.0
    if total == 0:
        return {}
    rate = min(1.0, math.sqrt(HOUSEHOLD_SAMPLE / total))
    used = list(dict.fromkeys([*targets, given]))
    cols = sorted({x for a in used for x in input_columns({"comparisons": [plain[a]]})} | {family})
    keep = records.select("rid", *cols).filter(pl.col(family).is_not_null())
    if rate < 1:
        keep = keep.filter((pl.col("rid").hash(seed=7) % 1_000_003) < int(rate * 1_000_003))
    con.register("idweave_household", keep.to_arrow())
    try:
        sel = ", ".join([f'l."{x}" AS "{x}_l", r."{x}" AS "{x}_r"' for x in cols])
        cases = ", ".join(f'{_level_case(plain[a])} AS "{a}"' for a in used)
        rows = query_pl(con, f"""SELECT {cases} FROM (SELECT {sel} FROM idweave_household l
                                 JOIN idweave_household r ON l."{family}" = r."{family}" AND l.rid < r.rid)""")
    finally:
        con.unregister("idweave_household")
    two = rows.filter(pl.col(given) == len(plain[given]["comparison_levels"]) - 1)
    out = {}
    for a in targets:
        levels = plain[a]["comparison_levels"]
        counts = dict(zip(*two[a].value_counts().select(a, "count").to_dict(as_series=False).values()))
        nonnull = [counts.get(i, 0) for i, lv in enumerate(levels) if not lv.get("is_null_level")]
        tot = sum(nonnull)
        out[a] = ([x / tot for x in nonnull] if tot else [], tot)
    return out


def add_households(trained: dict[str, Any], wanted: dict[str, Any],
                   shares: dict[str, tuple[list[float], int]], raw: dict[str, Any] | None = None) -> list[str]:
    """Put the household branches of ``wanted`` (the full settings) into ``trained`` (a model
    trained without them); in place, one note per comparison.

    A branch level means "this similarity, and the family names agree". Its u is what
    :func:`household_shares` measured among non-matching pairs of one family name (never less
    than the plain level's u: a shared family name makes sharing anything else more likely);
    its m is the plain level's, since a match's recording errors in its family name and in its
    address are independent. Fellegi-Sunter then adds the family name's weight and the
    branch's, which is the weight of the two together instead of two independent
    coincidences.

    >>> lv = lambda label, m=None, u=None: {"label_for_charts": label, "sql_condition": label,
    ...                                     "m_probability": m, "u_probability": u}
    >>> wanted = {"comparisons": [{"output_column_name": "address", "comparison_levels": [
    ...     lv("exact, same family name"), lv("else, same family name"), lv("exact"), lv("else")]}]}
    >>> trained = without_households(wanted)
    >>> trained["comparisons"][0]["comparison_levels"] = [lv("exact", 0.9, 0.001), lv("else", 0.1, 0.999)]
    >>> add_households(trained, wanted, {"address": ([0.6, 0.4], 1000)}, raw=copy.deepcopy(trained))
    ['address: household branch from 1,000 pairs of one family name that are clearly two people']
    >>> [(x["label_for_charts"], x["m_probability"], x["u_probability"]) for x in trained["comparisons"][0]["comparison_levels"]][:2]
    [('exact, same family name', 0.9, 0.6), ('else, same family name', 0.1, 0.4)]
    """
    notes = []
    want = {c["output_column_name"]: c for c in wanted["comparisons"]}
    for c in trained["comparisons"]:
        full = want[c["output_column_name"]]["comparison_levels"]
        if not any(_is_branch(lv) for lv in full):
            continue
        levels = {lv.get("label_for_charts"): lv for lv in c["comparison_levels"]}
        plain = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        share, n_pairs = shares.get(c["output_column_name"]) or ([], 0)
        ok = n_pairs >= HOUSEHOLD_MIN_PAIRS and len(share) == len(plain)
        # The branch's m is EM's own (before regularise lifted the plain ladder): the branch
        # is a ladder of its own and is made monotone on its own.
        m_of = {lv.get("label_for_charts"): lv.get("m_probability") for lv in
                next(x for x in raw["comparisons"] if x["output_column_name"] == c["output_column_name"])[
                    "comparison_levels"]} if raw else {}
        u_of = dict(zip([lv.get("label_for_charts") for lv in plain], share)) if ok else {}
        out = []
        for lv in full:
            if not _is_branch(lv):
                out.append(levels[lv.get("label_for_charts")])
                continue
            base = levels[lv["label_for_charts"][: -len(HOUSEHOLD_SUFFIX)]]
            new = {k: v for k, v in lv.items() if k not in ("m_probability", "u_probability")}
            new["m_probability"] = m_of.get(base.get("label_for_charts")) if ok else base.get("m_probability")
            u = u_of.get(base.get("label_for_charts"))
            if u is None or base.get("u_probability") is None:
                u = base.get("u_probability")
            elif base.get("label_for_charts") != "else":
                u = max(u, base["u_probability"])
            new["u_probability"] = u
            out.append(new)
        c["comparison_levels"] = out
        if ok:
            notes.append(f"{c['output_column_name']}: household branch from {n_pairs:,} pairs of one family "
                         f"name that are clearly two people")
            notes += _monotone(c["output_column_name"], [lv for lv in out if _is_branch(lv)], floor_lifts=False)
        else:
            notes.append(f"{c['output_column_name']}: household branch as the plain levels (only {n_pairs:,} "
                         f"pairs of one family name that are clearly two people)")
    return notes


def regularise(settings: dict[str, Any]) -> list[str]:
    """Make each comparison ladder monotone and flag untrained or degenerate levels.

    A level nearer the top of a ladder means more similar values, so it can never be weaker
    evidence than a level below it. EM sometimes says otherwise for a level it rarely saw
    (m near 0 gives tens of negative bits); such a level is lifted to the weight of the
    level below it. An untrained level (no m or u) gets the weight of the level below it
    too. Side levels (:data:`SIDE_LEVELS`) only have to be no weaker than ``else``.
    Changes ``settings`` in place; returns one message per change.

    >>> s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
    ...     {"label_for_charts": "exact", "m_probability": 0.9, "u_probability": 0.01},
    ...     {"label_for_charts": "close", "m_probability": 0.01, "u_probability": 0.9},
    ...     {"label_for_charts": "else", "m_probability": 1e-12, "u_probability": 0.09}]}]}
    >>> for note in regularise(s): print(note)
    level x: else: m 1e-12 raised to 0.005
    degenerate level x: close: -6.5 bits is below the next level's -4.2; lifted
    """
    notes = []
    for c in settings["comparisons"]:
        every = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        # A household branch (see add_households) is a ladder of its own, made monotone as there.
        notes += _monotone(c["output_column_name"], [lv for lv in every if not _is_branch(lv)])
        notes += _monotone(c["output_column_name"], [lv for lv in every if _is_branch(lv)], floor_lifts=False)
    return notes


def _monotone(comparison: str, levels: list[dict[str, Any]], *, floor_lifts: bool = True) -> list[str]:
    """:func:`regularise` for one ladder (its levels most similar first, ``else`` last).

    ``floor_lifts=False``: a level whose m was raised to :data:`MIN_M` does not lift the
    levels above it (a rare level held at the floor can weigh ten bits or more, and lifting
    the whole ladder to it would call a mere "jaro-winkler >= 0.8" strong evidence)."""
    notes = []
    below: float | None = None
    floor: float | None = None  # the else level's weight
    for lv in reversed(levels):
        name = f"{comparison}: {lv.get('label_for_charts')}"
        side = str(lv.get("label_for_charts")).removesuffix(HOUSEHOLD_SUFFIX) in SIDE_LEVELS
        limit = floor if side else below
        m, u = lv.get("m_probability"), lv.get("u_probability")
        if not m or not u:
            if not u:
                lv["u_probability"] = 0.5
            lv["m_probability"] = lv["u_probability"]
            if limit is not None:
                _lift(lv, limit)
            notes.append(f"untrained level {name}: given the weight of the level below"
                         if limit is not None else f"untrained level {name}: neutral weight")
        raised = lv["m_probability"] < MIN_M
        if raised:
            notes.append(f"level {name}: m {lv['m_probability']:.2g} raised to {MIN_M}")
            lv["m_probability"] = MIN_M
        w = math.log2(lv["m_probability"] / lv["u_probability"])
        if limit is not None and w < limit - 1e-9:
            _lift(lv, limit)
            if w < limit - 0.1:  # lifts of a hair are not worth a person's attention
                notes.append(f"degenerate level {name}: {w:.1f} bits is below the next level's {limit:.1f}; lifted")
            w = math.log2(lv["m_probability"] / lv["u_probability"])
        if floor is None:
            floor = w
        if not side and (floor_lifts or not raised or below is None or w <= below):
            below = w
    return notes


def refine_prior(model: TrainedModel, links: pl.DataFrame, total_pairs: float, *,
                 iterations: int = 50) -> tuple[TrainedModel, pl.DataFrame]:
    """Re-estimate the prior (probability two random records match) from the candidate pairs.

    With m and u fixed, the expected number of matches is the sum of the pairs' match
    probabilities, which depends on the prior: iterate prior = sum(p) / all possible pairs
    to its fixed point (EM on the prior alone). Deterministic rules with an assumed recall
    can be far off on noisy data; this uses every scored pair instead. Pairs blocking never
    proposed count as non-matches, so this errs low, never high. Returns the model with the
    new prior and ``links`` with match weight and probability shifted to it. The sum is
    exactly rounded, so the pairs' row order cannot change the prior.

    >>> m = TrainedModel({"probability_two_random_records_match": 0.01})
    >>> links = pl.DataFrame({"match_weight": [20.0, 20.0, -30.0]})
    >>> m2, out = refine_prior(m, links, total_pairs=100)
    >>> round(m2.prior, 4), refine_prior(m, links.reverse(), 100)[0].prior == m2.prior
    (0.02, True)
    """
    if links.height == 0 or total_pairs <= 0:
        return model, links
    old = model.prior
    old_w = math.log2(old / (1 - old))
    base = links["match_weight"] - old_w  # evidence without the prior
    prior = old
    for _ in range(iterations):
        w = math.log2(prior / (1 - prior))
        p = 1.0 / (1.0 + (2.0 ** -(base + w)))
        # fsum: exactly rounded, so the prior (and the model version) cannot depend on the
        # order or chunking of the pairs.
        new = min(max(math.fsum(p.to_list()) / total_pairs, 1e-12), 0.5)
        if abs(new - prior) <= 1e-4 * prior:
            prior = new
            break
        prior = new
    settings = json.loads(json.dumps(model.settings))
    settings["probability_two_random_records_match"] = prior
    new_w = math.log2(prior / (1 - prior))
    mw = base + new_w
    links = links.with_columns(mw.alias("match_weight"), (1.0 / (1.0 + 2.0 ** (-mw))).alias("match_probability"))
    log = [*model.training_log, f"prior re-estimated from {links.height:,} candidate pairs: {old:.3g} -> {prior:.3g}"]
    return TrainedModel(settings, model.tf_tables, log), links


def score_pairs(records: pl.DataFrame, pairs: pl.DataFrame, model: TrainedModel, *,
                engine: str = "duckdb") -> pl.DataFrame:
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
    if engine != "duckdb":
        return _score_pairs_splink(records, pairs, model, engine=engine)
    compiled = _compiled(model.settings)
    if not {*_tf_columns(model.settings), *compiled.tf_columns} <= set(model.tf_tables):
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
                        engine: str = "duckdb") -> pl.DataFrame:
    """:func:`score_pairs` through a Splink linker's ``predict`` (non-empty ``pairs``): the
    reference the fast path is tested against, and the path for other engines."""
    comps = [c["output_column_name"] for c in model.comparisons()]
    recs = prepare(records, input_columns(model.settings))
    with _engine("scoring") as con:
        linker, db = _linker(recs, model.settings, con, engine, model.tf_tables, validate=False)
        blocked = pairs.select(
            pl.col("rid_l").alias("join_key_l"), pl.col("rid_r").alias("join_key_r"),
            pl.col("rule").cast(pl.Utf8).alias("match_key"))
        b = db.register(blocked.to_arrow(), table_name="idweave_blocked")
        linker.table_management.register_blocked_pairs_for_predict(b)
        pred = linker.inference.predict(warning_mode="never").as_duckdbpyrelation()
        sel = ["rid_l", "rid_r", "cast(match_key as integer) as rule", "match_weight", "match_probability"]
        for c in comps:
            tf = f" + coalesce(mw_tf_adj_{c}, 0)" if c in model.tf_tables else ""
            sel.append(f"cast(gamma_{c} as integer) as level_{c}")
            sel.append(f"mw_{c}{tf} as w_{c}")
        con.register("pred_rel", pred)
        out = query_pl(con, f"select {', '.join(sel)} from pred_rel order by rid_l, rid_r")
    return out.with_columns(pl.col("rid_l").cast(pl.Int64), pl.col("rid_r").cast(pl.Int64))


def load_model(path: Path, tf_tables: dict[str, pl.DataFrame] | None = None) -> TrainedModel:
    """Read a model JSON written by :meth:`TrainedModel.save`."""
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model: {exc}", file=str(path)) from None
    return TrainedModel(settings, dict(tf_tables or {}))



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
    (:meth:`~idweave.linkage.graph.Store.latest_model`) puts it here (:func:`adopt_compiled`),
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
    from splink.internals.predict import predict_from_comparison_vectors_sqls_using_settings
    from splink.internals.settings_creator import SettingsCreator

    s = SettingsCreator.from_path_or_dict(json.loads(json.dumps(settings, default=str))).get_settings("duckdb")
    comps, gammas = [], []
    for cc in s.comparisons:
        gammas.append(cc._case_statement)
        weights, tf = {}, {}
        for lv in cc.comparison_levels:
            g = lv.comparison_vector_value
            weights[g] = 0.0 if lv.is_null_level else float(lv._match_weight)
            if (g != -1 and lv._has_tf_adjustments and lv._tf_adjustment_weight != 0 and not lv._is_else_level):
                u = lv._u_probability_corresponding_to_exact_match(cc.comparison_levels)
                tf[g] = (float(lv._tf_adjustment_weight), math.log2(u), float(lv._tf_minimum_u_value),
                         lv._tf_adjustment_input_column.input_name)
        comps.append({"name": cc.output_column_name, "weights": weights,
                      "tf": {g: v[:3] for g, v in tf.items()},
                      "tf_column": next((v[3] for v in tf.values()), None)})
    parts = ScoringParts(gamma_sql=gammas, columns=input_columns(settings), tf_columns=_tf_columns(settings),
                         comparisons=comps, prior=float(settings["probability_two_random_records_match"]))
    tf_cols = sorted(s._term_frequency_columns, key=lambda c: c.input_name)
    mw_parts, predict = predict_from_comparison_vectors_sqls_using_settings(s)
    out = _Compiled(
        parts=parts,
        tf_columns=tuple(c.input_name for c in tf_cols),
        tf_joins=tuple((c.name, c.tf_name) for c in tf_cols),
        uid=s.column_info_settings.unique_id_input_columns[0].name,
        blocking_columns=tuple(s._columns_to_select_for_blocking),
        vector_columns=tuple(s._columns_to_select_for_comparison_vector_values),
        predict_sql=(mw_parts["sql"], predict["sql"]),
        outputs=tuple((cc.output_column_name, cc._gamma_column_name, cc._mw_column_name,
                       cc._mw_tf_adj_column_name if cc._has_tf_adjustments else None) for cc in s.comparisons))
    return out


# The stored form of a compiled model (``model_sql``): bump it when what the stored JSON means
# changes in a way the code hash of :func:`compile_key` would not catch.
_COMPILE_FORMAT = 1
# The functions whose output the stored form is: changing any of them changes compile_key, so
# a store's compiled models from before the change are not reused (they are made again).
_COMPILE_CODE = ("_compile", "_compiled_to_json", "_compiled_from_json", "input_columns", "_tf_columns")


@lru_cache(maxsize=1)
def compile_key() -> str | None:
    """What a compiled model depends on besides the model itself and Splink's version: the
    format of its stored form, the source of the code that makes and reads it, and the
    version of sqlglot (through which Splink writes its SQL). A store keeps compiled models
    under (model version, Splink version, this key), so a change to any of them compiles
    again instead of reusing stale SQL. None when the code's source cannot be read: then
    nothing is stored or reused.

    >>> len(compile_key()), compile_key() == compile_key()
    (16, True)
    """
    import inspect
    from importlib.metadata import PackageNotFoundError

    h = hashlib.sha256(f"format {_COMPILE_FORMAT}\n".encode())
    try:
        h.update(f"sqlglot {_dist_version('sqlglot')}\n".encode())
    except PackageNotFoundError:
        h.update(b"sqlglot ?\n")
    try:
        for name in _COMPILE_CODE:
            h.update(inspect.getsource(globals()[name]).encode())
    except (OSError, TypeError):  # no source (a frozen or byte-code-only install)
        return None
    return h.hexdigest()[:16]


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

    >>> from idweave.linkage.project import load_project
    >>> s = build_settings(load_project("fixtures/tiny/project.yaml"))
    >>> adopt_compiled(s, compiled_text(s, compile=True))
    >>> scoring_parts(s).comparisons[0]["name"]
    'first_name'
    """
    _remember(_settings_key(settings), _compiled_from_json(text))
