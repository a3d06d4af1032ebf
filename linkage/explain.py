"""Why two records are, or are not, one entity: each comparison's level and weight.

>>> from idweave.linkage import link
>>> r = link("fixtures/tiny/project.yaml")
>>> a, b = r.pairs.row(0)[:2], r.pairs.row(0)[2:4]
>>> ex = explain_pair("fixtures/tiny/project.yaml", a, b)
>>> round(ex.match_weight - ex.prior_weight - sum(c.weight for c in ex.comparisons), 6)
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.blocking.keys import apply_transforms
from idweave.linkage import model as model_mod
from idweave.linkage._db import query_pl
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.pipeline import project_rules, resolve_project
from idweave.linkage.project import Project

__all__ = ["explain_pair", "PairExplanation", "ComparisonEvidence", "parse_record_ref"]


@dataclass
class ComparisonEvidence:
    """One comparison of a pair: the values compared, the level reached, its weight in bits."""

    attribute: str
    left: Any
    right: Any
    level: str
    weight: float


@dataclass
class PairExplanation:
    """Everything :func:`explain_pair` found about a pair."""

    left: tuple[str, str]
    right: tuple[str, str]
    comparisons: list[ComparisonEvidence]
    prior_weight: float
    match_weight: float
    match_probability: float
    blocking_rules: list[str]
    candidate_in_last_run: bool
    same_entity: bool
    entity_left: str | None
    entity_right: str | None
    threshold: float | None
    notes: list[str] = field(default_factory=list)


def parse_record_ref(text: str) -> tuple[str, str]:
    """``SOURCE:ID`` -> (source, id).

    >>> parse_record_ref("tax:T0001")
    ('tax', 'T0001')
    """
    if ":" not in text:
        raise IdweaveError(f"record reference {text!r} must be SOURCE:ID")
    s, r = text.split(":", 1)
    return s, r


def explain_pair(project: Project | str | Path | Mapping[str, Any], left: tuple[str, str],
                 right: tuple[str, str]) -> PairExplanation:
    """Score one pair with the stored model and say which blocking rules would find it."""
    proj = resolve_project(project)
    with Store.open(proj.store, read_only=True) as st:
        if not st.has_table("records"):
            raise IdweaveError("the store holds no records yet: run `idweave link` first", file=str(proj.store))
        recs = []
        for s, r in (left, right):
            row = query_pl(st.con, "select * from records where source = ? and record_id = ?", [s, r])
            if row.height == 0:
                raise IdweaveError(f"no record {s}:{r} in the store", row=r)
            recs.append(row)
        stored = st.latest_model()
        if stored is None:
            raise IdweaveError("the store has no model yet: run `idweave link` first", file=str(proj.store))
        settings, tf, _ = stored
        link_row = query_pl(st.con, "select rule, match_probability from links where (source_l = ? and record_id_l = ? "
                                    "and source_r = ? and record_id_r = ?) or (source_l = ? and record_id_l = ? and "
                                    "source_r = ? and record_id_r = ?)", [*left, *right, *right, *left])
        run = query_pl(st.con, "select threshold from runs order by run_id desc limit 1")
    both = pl.concat(recs, how="vertical_relaxed").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    trained = model_mod.TrainedModel(settings, tf)
    scored = model_mod.score_pairs(both, pl.DataFrame({"rid_l": [0], "rid_r": [1], "rule": [-1]},
                                                      schema={"rid_l": pl.Int64, "rid_r": pl.Int64,
                                                              "rule": pl.Int32}), trained, engine=proj.engine)
    row = scored.row(0, named=True)
    comps = []
    for c in settings["comparisons"]:
        name = c["output_column_name"]
        gamma = row[f"level_{name}"]
        # Splink numbers levels from the bottom (else = 0, null = -1).
        levels = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        label = "null" if gamma == -1 else levels[len(levels) - 1 - gamma]["label_for_charts"]
        comps.append(ComparisonEvidence(name, both[name][0], both[name][1], label, float(row[f"w_{name}"] or 0.0)))
    prior = trained.prior
    rules = [rule.name for rule in project_rules(proj) if _rule_agrees(rule, both, 0, 1) or _rule_agrees(rule, both, 1, 0)]
    e_l, e_r = recs[0]["entity_id"][0], recs[1]["entity_id"][0]
    notes = []
    if link_row.height == 0 and rules:
        notes.append("the keys agree but the pair was not scored in the last run: its block was too large "
                     "(a very common value) or an exclusive source forbids it")
    return PairExplanation(
        left=left, right=right, comparisons=comps, prior_weight=math.log2(prior / (1 - prior)),
        match_weight=float(row["match_weight"]), match_probability=float(row["match_probability"]),
        blocking_rules=rules, candidate_in_last_run=link_row.height > 0, same_entity=e_l == e_r,
        entity_left=e_l, entity_right=e_r, threshold=float(run["threshold"][0]) if run.height else None,
        notes=notes)


def _rule_agrees(rule, both: pl.DataFrame, a: int, b: int) -> bool:
    """Does every key of ``rule`` agree with record ``a`` on the left and ``b`` on the right?"""
    for k in rule.keys:
        lv = apply_transforms(both[k.left], k.transforms)[a]
        rv = apply_transforms(both[k.right], k.transforms)[b]
        if lv is None or lv != rv:
            return False
    return True
