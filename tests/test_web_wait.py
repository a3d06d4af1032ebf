"""`--wait SECONDS` on the commands that read the store (the busy message names it): they
wait for a run that holds the store, and say so, instead of failing at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path


from conftest import run_cli

from idweave.cli.app import _register, app

READERS = ["export", "count-pairs", "explain", "evaluate", "lookup", "history", "diff", "review", "show",
           "decisions", "export-labels", "evaluate-labels"]


def hold(store: Path) -> subprocess.Popen:
    """Another process holding the store for writing, as a running `idweave link` does."""
    p = subprocess.Popen([sys.executable, "-c", "import duckdb, time\n"
                          f"con = duckdb.connect({str(store)!r})\nprint('held', flush=True)\ntime.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_every_reading_command_takes_wait() -> None:
    import typer.main

    _register()
    group = typer.main.get_command(app)
    for name in READERS:
        opts = {o for p in group.commands[name].params for o in p.opts}
        assert "--wait" in opts, name


def test_without_wait_a_held_store_fails_at_once_naming_the_option(linked_copy: Path) -> None:
    holder = hold(linked_copy.parent / "out" / "tiny.duckdb")
    try:
        res = run_cli("decisions", linked_copy)
    finally:
        holder.kill()
        holder.wait()
    assert res.code == 2 and "--wait SECONDS" in res.error


def test_with_wait_the_command_waits_for_the_run_and_succeeds(linked_copy: Path) -> None:
    holder = hold(linked_copy.parent / "out" / "tiny.duckdb")
    released = threading.Timer(1.5, holder.kill)
    released.start()
    t = time.monotonic()
    try:
        res = run_cli("decisions", linked_copy, "--wait", "30")
    finally:
        released.cancel()
        holder.kill()
        holder.wait()
    assert res.code == 0, res.err
    assert "waiting up to 30s for the run that holds the store" in res.err
    assert time.monotonic() - t >= 1.0


def test_wait_gives_up_after_its_seconds(linked_copy: Path) -> None:
    holder = hold(linked_copy.parent / "out" / "tiny.duckdb")
    try:
        res = run_cli("export", linked_copy, "--out", linked_copy.parent / "e.csv", "--wait", "1")
    finally:
        holder.kill()
        holder.wait()
    assert res.code == 2 and "in use by another idweave run" in res.error
