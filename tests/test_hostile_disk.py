"""A full disk: a run that cannot write leaves the store byte for byte as it was, and says
which store and that the disk is full (exit 2, no traceback).

The disk is a real small tmpfs (the tests are skipped where this process may not mount one:
not root, or a container without the capability). The store is made on the normal disk,
then copied onto a tmpfs only a little larger than it, where a full run (which rewrites
the records and links tables) cannot fit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from conftest import Linked, run_cli


def _mount(folder: Path, kib: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator:
    mounted: list[Path] = []

    def make(kib: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        if not _mount(folder, kib):
            pytest.skip("cannot mount a tmpfs here (needs root and the mount capability)")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _kib(folder: Path) -> int:
    """What the files of ``folder`` (the store and the model beside it) take on a tmpfs, whose
    files use whole 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4 for p in folder.iterdir() if p.is_file())


def _point_store(project: Path, store: Path) -> None:
    text = project.read_text()
    lines = [f"store: {store}" if ln.startswith("store:") else ln for ln in text.splitlines()]
    project.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("margin_kib", [0, 64])
def test_a_full_run_on_a_full_disk_leaves_the_store_as_it_was(linked_tiny: Linked, tmp_path: Path, small_disk,
                                                              margin_kib: int) -> None:
    project = linked_tiny.copy(tmp_path / "tiny")
    store = project.parent / "out" / "tiny.duckdb"
    disk = small_disk(_kib(store.parent) + 16 + margin_kib)
    for f in store.parent.iterdir():
        shutil.copy(f, disk / f.name)
    _point_store(project, disk / "tiny.duckdb")
    before = _digests(disk)
    # --retrain --full rewrites every table: far more than the disk has left.
    result = run_cli("link", "--full", "--retrain", project)
    after = _digests(disk)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert result.error == (f"Error: {disk / 'tiny.duckdb'}: the disk is full (No space left on device): the run "
                            "could not be written and the store is as it was; free some space (or move the "
                            "store) and run again")
    assert after == before  # byte for byte, and no new file (a log) beside it


def test_the_store_reads_the_same_after_a_failed_run(linked_tiny: Linked, tmp_path: Path, small_disk) -> None:
    project = linked_tiny.copy(tmp_path / "tiny")
    store = project.parent / "out" / "tiny.duckdb"
    disk = small_disk(_kib(store.parent) + 16)
    for f in store.parent.iterdir():
        shutil.copy(f, disk / f.name)
    _point_store(project, disk / "tiny.duckdb")
    first = run_cli("export", project, "--out", tmp_path / "before.csv")
    assert first.code == 0, first.err
    assert run_cli("link", "--full", "--retrain", project).code == 2
    again = run_cli("export", project, "--out", tmp_path / "after.csv")
    assert again.code == 0, again.err
    assert (tmp_path / "before.csv").read_bytes() == (tmp_path / "after.csv").read_bytes()


def test_a_first_run_on_a_full_disk_leaves_no_store(tiny: Path, small_disk) -> None:
    disk = small_disk(32)  # the first run of the tiny store writes some 100 kB of log alone
    _point_store(tiny, disk / "new.duckdb")
    result = run_cli("link", tiny)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert str(disk / "new.duckdb") in result.error
    assert "the disk is full (No space left on device)" in result.error
    assert sorted(p.name for p in disk.iterdir()) == []
