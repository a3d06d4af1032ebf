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
           "decisions", "export-labels", "evaluate-labels", "subject-access", "model"]
#: The commands that decide: the busy message names --wait, so they take it too.
DECIDERS = ["merge", "split", "keep-apart", "confirm", "pin", "undo", "forget"]


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
    for name in READERS + DECIDERS:
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


def run_while_held_briefly(store: Path, *args: object):
    """``idweave ARGS`` while another process holds ``store``, which lets go after 1.5 s."""
    holder = hold(store)
    released = threading.Timer(1.5, holder.kill)
    released.start()
    try:
        return run_cli(*args)
    finally:
        released.cancel()
        holder.kill()
        holder.wait()


def test_with_wait_the_command_waits_for_the_run_and_succeeds(linked_copy: Path) -> None:
    t = time.monotonic()
    res = run_while_held_briefly(linked_copy.parent / "out" / "tiny.duckdb", "decisions", linked_copy, "--wait", "30")
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


def test_a_decision_waits_for_the_run_and_is_recorded_once(linked_copy: Path) -> None:
    from idweave.linkage.graph import Store

    store = linked_copy.parent / "out" / "tiny.duckdb"
    with Store.open(store, read_only=True) as st:
        eid = st.record_entities()["entity_id"][0]
        before = st.max_decision_id()
    res = run_while_held_briefly(store, "confirm", linked_copy, eid, "--author", "steward", "--wait", "30")
    assert res.code == 0, res.err
    assert "waiting up to 30s" in res.err
    with Store.open(store, read_only=True) as st:
        assert st.max_decision_id() == before + 1
