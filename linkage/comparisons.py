"""Comparisons: what a model compares and how, before any training.

Each attribute's comparison ladder (Splink comparison levels as plain SQL, so they round-trip
through JSON) follows from its kind, overridable per attribute in the project; with the
household branches of address-like ladders (:func:`_household_branch`), the untrained Splink
settings (:func:`build_settings`), the record columns a model reads and the helper columns
derived for it (:func:`prepare`), and the one mapping from a level's number (Splink's
gamma) to its label (:func:`level_labels`).

>>> from idweave.linkage.project import load_project
>>> settings = build_settings(load_project("fixtures/tiny/project.yaml"))
>>> [c["output_column_name"] for c in settings["comparisons"]][:2]
['first_name', 'last_name']
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterable

import polars as pl

from idweave.linkage.errors import ModelError
from idweave.linkage.kinds import default_comparison
from idweave.linkage.project import Project

__all__ = [
    "FORMAL_SUFFIX", "HOUSEHOLD_SUFFIX", "HOUSEHOLD_METHODS", "HASHED_NEAR", "input_columns", "prepare", "model_attributes",
    "comparison_columns", "build_settings", "tf_columns", "is_branch", "without_households", "level_labels",
]

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


def _one_typo(c: str) -> str:
    """At most one insertion, deletion, substitution or swap apart. The length test first is
    the same condition (the distance is at least the difference in length) and lets the engine
    skip the distance for most pairs: on historical_50k x4 it took the city and postcode
    levels from 1.0 s to a fraction of that per 600k pairs."""
    return f"abs(length({_l(c)}) - length({_r(c)})) <= 1 AND damerau_levenshtein({_l(c)}, {_r(c)}) <= 1"


# Helper columns the model derives from records before Splink sees them.
FORMAL_SUFFIX = "__formal"


# An address shared by two records with one family name is what a household looks like, not
# one person: the levels of such pairs form their own branch of the ladder (see
# :func:`_household_branch` and :func:`is_branch`), labelled with this suffix.
HOUSEHOLD_SUFFIX = ", same family name"
# What members of one household share besides the family name: an address, a landline, and
# (borrowed, or mistyped by a clerk) an identifier. Not a postcode: it holds many households,
# and on historical_50k (no households) conditioning it cost 0.004 F1 (BENCHMARKS.md).
HOUSEHOLD_METHODS = ("address", "phone", "identifier")
# The near level of a pseudonymised attribute (:func:`_hashed_ladder`).
HASHED_NEAR = "one edit apart (hashed variants in common)"


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
        levels.append(_lvl(_one_typo(c), "one typo"))
        if m == "phone":
            levels.append(_lvl(f"right({_l(c)}, 7) = right({_r(c)}, 7)", "last 7 digits agree"))
    elif m == "postcode":
        levels.append(_exact(c, tf))
        levels.append(_lvl(_one_typo(c), "one typo"))
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
            levels.append(_lvl(_one_typo(c), "one typo"))
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


def _hashed_ladder(c: str, spec: dict[str, Any], others: dict[str, str]) -> list[dict]:
    """The ladder of a pseudonymised attribute (``privacy: {pseudonymise: [...]}``), whose
    stored value is its keyed hash followed by the keyed hashes of its one-deletion
    neighbourhood (``privacy.Pseudonymiser.encode``): exact (equal strings: equal values),
    then one edit apart (a hashed variant in common: one substitution, insertion, deletion or
    swap of neighbours), then else. Levels that read characters (edit distances, the last
    digits of a phone, the user name of an e-mail) cannot work on hashes and are left out.

    >>> [lv["label_for_charts"] for lv in _hashed_ladder("ssn", {"method": "identifier"}, {})]
    ['null', 'exact', 'one edit apart (hashed variants in common)', 'else']
    """
    levels = [_null(c), _exact(c, bool(spec.get("term_frequency", False))),
              _lvl(f"list_has_any(string_split({_l(c)}, ' '), string_split({_r(c)}, ' '))", HASHED_NEAR)]
    family = next((a for a, k in others.items() if k == "family_name"), None)
    if spec["method"] in HOUSEHOLD_METHODS and family and family != c and spec.get("household", True):
        levels[1:] = [*_household_branch(levels[1:], family), *levels[1:]]
    levels.append(_else())
    return levels


def _pseudonymised(project: Project) -> set[str]:
    """The attributes the project pseudonymises (see linkage/privacy.py)."""
    priv = (getattr(project, "raw", None) or {}).get("privacy") or {}
    return set(priv.get("pseudonymise") or []) if isinstance(priv, dict) else set()


def model_attributes(project: Project) -> dict[str, dict[str, Any]]:
    """Attribute -> comparison spec actually used (overrides applied, 'off' removed).

    A full name is only compared when the project has no separate given and family names:
    otherwise it only fills them in (see sources.derive_names) and comparing it again would
    count the same evidence twice.

    >>> from idweave.linkage.project import load_project
    >>> model_attributes(load_project("fixtures/tiny/project.yaml"))["first_name"]["method"]
    'name'
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
    """Columns the model reads from records.

    >>> from idweave.linkage.project import load_project
    >>> comparison_columns(load_project("fixtures/tiny/project.yaml"))[:2]
    ['first_name', 'last_name']
    """
    return list(model_attributes(project))


def build_settings(project: Project, *, rules_sql: Iterable[str] = (), prior: float = 1e-4) -> dict[str, Any]:
    """The Splink settings dict (untrained) that the project's kinds and overrides imply.

    >>> from idweave.linkage.project import load_project
    >>> s = build_settings(load_project("fixtures/tiny/project.yaml"))
    >>> s["link_type"], s["comparisons"][0]["comparison_levels"][0]["label_for_charts"]
    ('dedupe_only', 'null')
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}
    hashed = _pseudonymised(project)
    comps = []
    for attr, spec in model_attributes(project).items():
        comps.append({
            "output_column_name": attr,
            "comparison_description": f"{attr} ({kinds[attr]}, {spec['method']}{', pseudonymised' if attr in hashed else ''})",
            "comparison_levels": (_hashed_ladder(attr, spec, kinds) if attr in hashed
                                  else _ladder(attr, kinds[attr], spec, kinds)),
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




def tf_columns(settings: dict[str, Any]) -> list[str]:
    """The columns whose levels adjust for term frequency, in the order they first appear.

    >>> tf_columns({"comparisons": [{"comparison_levels": [{"tf_adjustment_column": "a"}, {}]}]})
    ['a']
    """
    cols = []
    for c in settings["comparisons"]:
        for lvl in c["comparison_levels"]:
            if lvl.get("tf_adjustment_column") and lvl["tf_adjustment_column"] not in cols:
                cols.append(lvl["tf_adjustment_column"])
    return cols


def is_branch(lv: dict[str, Any]) -> bool:
    """Whether a comparison level belongs to a household branch (:func:`_household_branch`).

    >>> is_branch({"label_for_charts": "exact, same family name"}), is_branch({"label_for_charts": "exact"})
    (True, False)
    """
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
        c["comparison_levels"] = [lv for lv in c["comparison_levels"] if not is_branch(lv)]
    return out




def level_labels(settings: dict[str, Any]) -> dict[str, dict[int, str]]:
    """comparison -> level number -> label: the one reading of Splink's numbering, which
    counts the levels after the null level down to 0 (the ``else`` level); null is -1.

    >>> s = {"comparisons": [{"output_column_name": "x", "comparison_levels": [
    ...     {"is_null_level": True}, {"label_for_charts": "exact"}, {"label_for_charts": "else"}]}]}
    >>> level_labels(s)
    {'x': {-1: 'null', 0: 'else', 1: 'exact'}}
    """
    out: dict[str, dict[int, str]] = {}
    for c in settings.get("comparisons", []):
        levels = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        labels = {-1: "null"}
        for g in range(len(levels)):
            labels[g] = levels[len(levels) - 1 - g].get("label_for_charts", str(g))
        out[c["output_column_name"]] = labels
    return out
