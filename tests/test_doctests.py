"""Every docstring example of every module under linkage/ and blocking/ runs.

The examples use paths relative to the repository root (``fixtures/tiny/project.yaml``) and
some write a store (``out/...``). They run here in a temporary folder holding a copy of the
fixtures and an empty ``out/``, so nothing is written into the repository. The folder is
shared by all modules: the first example that links trains the tiny model, later ones reuse it.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT

PACKAGES = ("idweave.linkage", "idweave.blocking")


def modules() -> list[str]:
    """Every module of the packages, sub-packages included, in a fixed order."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        names += sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."))
    return names


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("doctests")
    shutil.copytree(FIXTURES, folder / "fixtures", ignore=shutil.ignore_patterns("out", "__pycache__"))
    (folder / "out").mkdir()
    return folder


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    before = sorted(p.relative_to(ROOT) for p in (ROOT / "fixtures").rglob("*"))
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert sorted(p.relative_to(ROOT) for p in (ROOT / "fixtures").rglob("*")) == before


def test_every_module_is_found() -> None:
    found = set(modules())
    for package in PACKAGES:
        folder = ROOT / package.split(".")[1]
        for f in folder.glob("*.py"):
            if f.name != "__init__.py":
                assert f"{package}.{f.stem}" in found
