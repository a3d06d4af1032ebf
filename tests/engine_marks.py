"""Tests over every engine, the way Splink's ``mark_with_dialects_excluding`` runs a test on
each backend: ``@pytest.mark.parametrize("engine", engines())`` runs the test once per engine
(:data:`idweave.linkage.engine.ENGINES`), the Spark case marked ``spark`` (deselect it with
``-m "not spark"``) and skipped, saying why, where pyspark or Java is missing.
"""

from __future__ import annotations

import pytest

from idweave.linkage import engine as engine_mod


def engines(*excluding: str) -> list:
    """One pytest parameter per engine but those ``excluding`` names, each with its marks."""
    out = []
    for name in engine_mod.ENGINES:
        if name in excluding:
            continue
        marks = [pytest.mark.spark] if name == "spark" else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def require(name: str) -> None:
    """Skip the running test, saying why, if engine ``name`` cannot run here."""
    if name == "spark":
        pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[test]')")
        why = engine_mod.spark_available()
        if why:
            pytest.skip(why)
