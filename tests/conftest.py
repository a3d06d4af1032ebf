"""Shared helpers and fixtures for the test suite.

Nothing here writes into the repository: every project is copied into a temporary folder
first and its store is pointed inside that folder. The tiny fixture is linked (and its model
trained) once per session; tests that change a store work on a copy of that linked folder.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

# Rich reads the width once, when a console is made: wide enough that no table cell or
# message is wrapped or cut in the captured output. Set before idweave.cli is imported.
os.environ["COLUMNS"] = "200"
os.environ.pop("IDWEAVE_DEBUG", None)
os.environ.pop("IDWEAVE_PROGRESS", None)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of every rich table in ``text``."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("│") and line.endswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


def copy_fixture(name: str, dest: Path) -> Path:
    """Copy ``fixtures/<name>`` to ``dest`` with its store moved to ``dest/out``.

    Returns the copied project file. The committed project files point their store at the
    repository's ``out/`` (``store: ../../out/tiny.duckdb``); the copy must not.
    """
    shutil.copytree(FIXTURES / name, dest, ignore=shutil.ignore_patterns("out"))
    project = dest / "project.yaml"
    text = project.read_text()
    text, n = re.subn(r"(?m)^store: .*$", f"store: out/{name}.duckdb", text)
    assert n == 1, "the fixture's project file has no store line"
    project.write_text(text)
    return project


@dataclass
class CliResult:
    """What one in-process run of the ``idweave`` command produced."""

    code: int
    out: str
    err: str

    @property
    def error(self) -> str:
        """The ``Error: ...`` message (stage timings printed before it are dropped)."""
        i = self.err.find("Error: ")
        assert i >= 0, f"no error message in stderr: {self.err!r}"
        return self.err[i:].strip()


def run_cli(*args: object) -> CliResult:
    """Run ``idweave ARGS...`` in this process through the console script's entry point
    (``idweave.cli.app.main``), so errors are translated exactly as for a user."""
    from idweave.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def store_files(folder: Path) -> list[Path]:
    """Every store-like file under ``folder`` (database, write-ahead log, model JSON)."""
    return sorted(p for p in folder.rglob("*") if p.name.endswith((".duckdb", ".duckdb.wal", ".model.json")))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Bytes of every store file under ``folder``, to check a failed run changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in store_files(folder)}


@dataclass
class Linked:
    """The tiny fixture, copied and linked once by ``idweave link`` (a trained store)."""

    folder: Path
    project: Path
    link: CliResult

    @property
    def store(self) -> Path:
        return self.folder / "out" / "tiny.duckdb"

    def copy(self, dest: Path) -> Path:
        """A private copy of the linked folder (store and model included); returns its
        project file. Tests that write to a store use this, never the shared folder."""
        shutil.copytree(self.folder, dest)
        return dest / "project.yaml"


@pytest.fixture(scope="session")
def linked_tiny(tmp_path_factory: pytest.TempPathFactory) -> Linked:
    """fixtures/tiny linked once per session with the CLI (this trains the model)."""
    folder = tmp_path_factory.mktemp("linked") / "tiny"
    project = copy_fixture("tiny", folder)
    result = run_cli("link", project)
    assert result.code == 0, result.err
    return Linked(folder, project, result)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A fresh, never-linked copy of fixtures/tiny; returns its project file."""
    return copy_fixture("tiny", tmp_path / "tiny")


@pytest.fixture
def linked_copy(linked_tiny: Linked, tmp_path: Path) -> Path:
    """A private copy of the linked tiny folder; returns its project file."""
    return linked_tiny.copy(tmp_path / "tiny")
