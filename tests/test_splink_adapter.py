"""The Splink adapter (``linkage/_splink.py``): the only module that imports splink, and every
Splink internal it relies on still there, with the shape it expects.

A new Splink that renames or moves one of them fails here, one test per internal, naming it
(``test_splink_internal[ComparisonLevel._match_weight]``), instead of as a wrong score or a
traceback deep inside a run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import tomllib
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest

from conftest import FIXTURES, ROOT
from idweave.linkage import _splink
from idweave.linkage.comparisons import build_settings, input_columns, prepare
from idweave.linkage.project import load_project, with_rids
from idweave.linkage.sources import load_records

ADAPTER = ROOT / "linkage" / "_splink.py"


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


def _tf_columns_shape(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(c.input_name, str) and isinstance(c.name, str) and isinstance(c.tf_name, str) for c in v)


def _params(n: int) -> Callable[[Any], bool]:
    return lambda f: callable(f) and len(inspect.signature(f).parameters) == n


# What each internal must look like (on the tiny project's settings, one tf-adjusted level).
SHAPES: dict[tuple[str, str], Callable[[Any], bool]] = {
    ("Linker", "_settings_obj"): lambda v: hasattr(v, "_probability_two_random_records_match"),
    ("Settings", "_probability_two_random_records_match"): lambda v: isinstance(v, float) and 0 < v < 1,
    ("Settings", "core_model_settings"): lambda v: callable(getattr(v, "copy", None)),
    ("Settings", "comparisons"): lambda v: isinstance(v, list) and len(v) > 1,
    ("Settings", "column_info_settings"): lambda v: v.unique_id_input_columns[0].name == '"rid"',
    ("Settings", "_term_frequency_columns"): _tf_columns_shape,
    ("Settings", "_columns_to_select_for_blocking"): _is_str_list,
    ("Settings", "_columns_to_select_for_comparison_vector_values"): _is_str_list,
    ("Comparison", "comparison_levels"): lambda v: isinstance(v, list) and len(v) > 2,
    ("Comparison", "output_column_name"): lambda v: isinstance(v, str) and v,
    ("Comparison", "_case_statement"): lambda v: isinstance(v, str) and v.upper().startswith("CASE"),
    ("Comparison", "_gamma_column_name"): lambda v: isinstance(v, str) and "gamma_" in v,
    ("Comparison", "_mw_column_name"): lambda v: isinstance(v, str) and "mw_" in v,
    ("Comparison", "_mw_tf_adj_column_name"): lambda v: isinstance(v, str) and "mw_tf_adj_" in v,
    ("Comparison", "_has_tf_adjustments"): lambda v: v is True,
    ("ComparisonLevel", "comparison_vector_value"): lambda v: isinstance(v, int) and v >= 0,
    ("ComparisonLevel", "is_null_level"): lambda v: v is False,
    ("ComparisonLevel", "_match_weight"): lambda v: isinstance(float(v), float),
    ("ComparisonLevel", "_has_tf_adjustments"): lambda v: v is True,
    ("ComparisonLevel", "_tf_adjustment_weight"): lambda v: float(v) == 1.0,
    ("ComparisonLevel", "_is_else_level"): lambda v: not v,  # falsy (None) on a level that is not else
    ("ComparisonLevel", "_u_probability_corresponding_to_exact_match"): _params(1),
    ("ComparisonLevel", "_tf_minimum_u_value"): lambda v: isinstance(float(v), float),
    ("ComparisonLevel", "_tf_adjustment_input_column"): lambda v: isinstance(v.input_name, str),
    ("splink.internals.settings_creator", "SettingsCreator"):
        lambda v: callable(getattr(v, "from_path_or_dict", None)) and callable(getattr(v, "get_settings", None)),
    ("splink.internals.predict", "predict_from_comparison_vectors_sqls_using_settings"):
        lambda f: callable(f) and next(iter(inspect.signature(f).parameters)) == "settings_obj",
    ("splink.internals.expectation_maximisation", "compute_proportions_for_new_parameters"): _params(1),
    ("splink.internals.exceptions", "EMTrainingException"): lambda v: isinstance(v, type) and issubclass(v, Exception),
    ("splink.internals.dialects", "SparkDialect"): lambda v: isinstance(v, type) and v().sql_dialect_str == "spark",
    ("SparkDialect", "hash_function_name"): lambda v: isinstance(v, property),
    ("SparkDialect", "hash_bucket_expression"): _params(3),
}


@pytest.fixture(scope="module")
def owners() -> dict[str, Any]:
    """A real linker, its settings, a tf-adjusted comparison and level (tiny fixture)."""
    from splink.internals.settings_creator import SettingsCreator

    p = load_project(FIXTURES / "tiny" / "project.yaml")
    s = build_settings(p)
    for c in s["comparisons"]:
        for lv in c["comparison_levels"]:
            if not lv.get("is_null_level"):
                lv["m_probability"], lv["u_probability"] = 0.5, 0.25
    settings = SettingsCreator.from_path_or_dict(s).get_settings("duckdb")
    cc = next(c for c in settings.comparisons if getattr(c, "_has_tf_adjustments", False))
    lv = next(x for x in cc.comparison_levels if getattr(x, "_has_tf_adjustments", False))
    con = duckdb.connect()
    linker, _ = _splink.make_linker(prepare(with_rids(load_records(p)), input_columns(s)), s, con, "duckdb")
    from splink.internals.dialects import SparkDialect

    yield {"Linker": linker, "Settings": settings, "Comparison": cc, "ComparisonLevel": lv,
           "SparkDialect": SparkDialect}
    con.close()


@pytest.mark.parametrize("where,attr", list(_splink.INTERNALS), ids=[f"{w}.{a}" for w, a in _splink.INTERNALS])
def test_splink_internal(where: str, attr: str, owners: dict[str, Any]) -> None:
    version = _splink.splink_version()
    if where.startswith("splink."):
        try:
            owner = importlib.import_module(where)
        except ImportError as exc:
            pytest.fail(f"Splink {version} has no module {where} (for {where}.{attr}): {exc}")
    else:
        owner = owners[where]
    assert hasattr(owner, attr), (f"Splink {version} no longer has {where}.{attr}, which the adapter "
                                  f"(linkage/_splink.py) uses for: {_splink.INTERNALS[where, attr]}")
    value = getattr(owner, attr)
    assert SHAPES[where, attr](value), (f"Splink {version}: {where}.{attr} is no longer what the adapter "
                                        f"expects ({type(value).__name__}: {value!r:.200})")


def test_every_internal_has_a_shape() -> None:
    assert set(SHAPES) == set(_splink.INTERNALS)


def _private_uses(tree: ast.AST) -> set[str]:
    """``x._name`` attributes and ``from splink.... import name`` names used in a module."""
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
            and not n.attr.startswith("__")}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("splink.internals"):
            used |= {a.name for a in n.names}
    return used


def test_the_adapter_lists_every_internal_it_uses() -> None:
    used = _private_uses(ast.parse(ADAPTER.read_text()))
    listed = {a for _, a in _splink.INTERNALS} | {w.rsplit(".", 1)[1] for w, _ in _splink.INTERNALS if "." in w}
    own = {n for n in used if hasattr(_splink, n)}  # the adapter's own private helpers
    assert used - listed - own == set(), "Splink internals the adapter uses but INTERNALS does not list"


def _package_modules() -> list[Path]:
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return sorted(f for d in dirs.values() for f in (ROOT / d).rglob("*.py"))


def _imports_splink(tree: ast.AST) -> list[int]:
    lines = []
    for n in ast.walk(tree):
        names = ([a.name for a in n.names] if isinstance(n, ast.Import)
                 else [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else [])
        if any(x == "splink" or x.startswith("splink.") for x in names):
            lines.append(n.lineno)
    return lines


def test_only_the_adapter_imports_splink() -> None:
    files = _package_modules()
    assert ADAPTER in files and len(files) > 20
    offenders = {str(f.relative_to(ROOT)): lines for f in files if f != ADAPTER
                 and (lines := _imports_splink(ast.parse(f.read_text())))}
    assert offenders == {}, "only linkage/_splink.py may import splink"
    assert _imports_splink(ast.parse(ADAPTER.read_text()))


def test_no_other_module_touches_splink_internals() -> None:
    """The adapter's internals are read nowhere else (training, scoring call the adapter)."""
    internal = {a for _, a in _splink.INTERNALS if a.startswith("_")}
    offenders = {}
    for f in _package_modules():
        if f == ADAPTER:
            continue
        hit = internal & _private_uses(ast.parse(f.read_text()))
        if hit:
            offenders[str(f.relative_to(ROOT))] = sorted(hit)
    assert offenders == {}


def test_a_moved_internal_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from idweave.linkage.errors import ModelError

    class Settings:  # a Splink whose settings object lost the prior
        pass

    class Linker:
        _settings_obj = Settings()

    with pytest.raises(ModelError, match="_probability_two_random_records_match"):
        _splink.linker_prior(Linker())
