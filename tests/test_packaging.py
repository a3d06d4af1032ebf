"""Packaging: one import namespace `idweave` over the top-level folders.

setuptools only installs the packages pyproject.toml lists, so a new sub-package (a folder
with an __init__.py) or a data file left out of the lists works in an editable install and
is missing from a real one. These tests catch that.
"""

from __future__ import annotations

import fnmatch
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
TOP = {"linkage": "idweave.linkage", "blocking": "idweave.blocking", "cli": "idweave.cli", "web": "idweave.web"}


def package_folders() -> dict[str, Path]:
    """Import name -> folder, for every folder with an __init__.py under the top folders."""
    found = {}
    for folder, name in TOP.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def folder_of(package: str) -> Path | None:
    """Where setuptools looks for ``package``: its own package-dir entry or its nearest
    parent's, plus the rest of the name as folders."""
    mapping = SETUPTOOLS.get("package-dir", {})
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in mapping:
            return ROOT / mapping[head] / Path(*parts[i:]) if parts[i:] else ROOT / mapping[head]
    return None


def test_the_top_level_folders_are_packages() -> None:
    for folder in TOP:
        assert (ROOT / folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("package", sorted(package_folders()))
def test_every_package_folder_is_listed_with_its_folder(package: str) -> None:
    assert package in SETUPTOOLS["packages"], f"add {package!r} to [tool.setuptools] packages"
    assert folder_of(package) == package_folders()[package], f"package-dir does not map {package!r} to its folder"


def test_every_listed_package_exists() -> None:
    assert sorted(SETUPTOOLS["packages"]) == sorted(package_folders())


def test_every_data_file_is_in_package_data() -> None:
    # Anything in a package folder that is not Python must be matched by package-data.
    package_data = SETUPTOOLS.get("package-data", {})
    missing = []
    for package, folder in package_folders().items():
        subpackages = [f for p, f in package_folders().items() if p != package and p.startswith(package + ".")]
        for f in folder.rglob("*"):
            if not f.is_file() or "__pycache__" in f.parts or f.suffix in (".py", ".pyc"):
                continue
            if any(sub in f.parents for sub in subpackages):
                continue  # belongs to the sub-package
            rel = f.relative_to(folder).as_posix()
            if not any(fnmatch.fnmatch(rel, pat) for pat in package_data.get(package, [])):
                missing.append(f"{package}: {rel}")
    assert missing == [], "add these to [tool.setuptools.package-data]"


def test_the_namespace_imports() -> None:
    for name in ("idweave.linkage", "idweave.blocking", "idweave.cli", "idweave.cli.app"):
        assert importlib.import_module(name).__name__ == name


@pytest.mark.parametrize("package", ["idweave.linkage", "idweave.blocking"])
def test_public_packages_say_what_they_export(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


def test_console_script() -> None:
    target = PYPROJECT["project"]["scripts"]["idweave"]
    assert target == "idweave.cli.app:main"
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_metadata() -> None:
    project = PYPROJECT["project"]
    assert project["name"] == "idweave"
    assert project["requires-python"] == ">=3.11"
    assert (ROOT / project["readme"]).is_file()  # a missing README breaks `pip install .`
    names = {d.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert {"splink", "duckdb", "polars", "typer", "rich", "pyyaml"} <= names
    assert any(d.startswith("splink>=5") for d in project["dependencies"])
    assert "pytest" in " ".join(project["optional-dependencies"]["test"])
