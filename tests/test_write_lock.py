"""A run holds the store's write lock only while it writes (the workbench issue, item 3):
its stages read the store read-only, so readers go on meanwhile; a decision made between the
run's reading and its write is kept (the run starts again from the new state); a reader that
holds the store when the run wants to write only delays it.

The run is another process (as an ``idweave link`` is), paused at a stage through its
``progress`` callback until the test lets it go on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from conftest import run_cli

from idweave.linkage import review
from idweave.linkage.graph import Store

RUN = r"""
import json, sys, time
from pathlib import Path
from idweave.linkage import link
project, pause_at, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
seen = []
def progress(stage, state):
    seen.append([stage, state])
    if [stage, state] == pause_at.split(":") and not (folder / "paused").exists():
        (folder / "paused").write_text("")
        while not (folder / "go").exists():
            time.sleep(0.05)
r = link(project, full=True, progress=progress)
print(json.dumps({"seen": seen, "run_id": r.summary["run_id"], "timings": r.summary["timings"],
                  "entities": sorted(map(list, r.entities.select("source", "record_id", "entity_id").rows()))}))
"""


def start_run(project: Path, pause_at: str, folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", RUN, str(project), pause_at, str(folder)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "paused").exists():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline, "the run never reached its pause"
        time.sleep(0.05)
    return p


def finish(p: subprocess.Popen, folder: Path) -> dict:
    (folder / "go").write_text("")
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_readers_go_on_while_a_run_computes(linked_copy: Path, tmp_path: Path) -> None:
    store = linked_copy.parent / "out" / "tiny.duckdb"
    with Store.open(store, read_only=True) as st:
        before_run = st.last_run_info()["run_id"]
    run = start_run(linked_copy, "cluster:start", tmp_path)  # deep in the run, store open read-only
    try:
        exported = run_cli("export", linked_copy, "--out", tmp_path / "e.csv")
        shown = run_cli("decisions", linked_copy)
        with Store.open(store, read_only=True) as st:
            during = st.last_run_info()["run_id"]
    finally:
        res = finish(run, tmp_path)
    assert exported.code == 0, exported.err
    assert shown.code == 0, shown.err
    assert pl.read_csv(tmp_path / "e.csv").height == len(res["entities"])
    assert during == before_run  # the readers saw the last committed state
    assert res["run_id"] == before_run + 1


def test_a_decision_made_while_a_run_reads_is_kept(linked_copy: Path, tmp_path: Path) -> None:
    store = linked_copy.parent / "out" / "tiny.duckdb"
    with Store.open(store, read_only=True) as st:
        ents = st.record_entities()
    multi = ents.group_by("entity_id").len().filter(pl.col("len") >= 2).sort("entity_id")["entity_id"][0]
    rec = ents.filter(pl.col("entity_id") == multi).sort("source", "record_id").row(0, named=True)
    leaving = f"{rec['source']}:{rec['record_id']}"

    run = start_run(linked_copy, "lock:start", tmp_path)  # done reading, not yet writing
    try:
        decided = review.split(linked_copy, multi, [leaving], author="steward", reason="two people")
    finally:
        res = finish(run, tmp_path)
    assert decided.decision_id >= 1
    # The run saw the store change and started again: it read the store twice.
    assert [s for s in res["seen"] if s == ["compare", "start"]] == [["compare", "start"]] * 2
    entity_of = {(s, r): e for s, r, e in res["entities"]}
    rest = [(s, r) for s, r in ents.filter(pl.col("entity_id") == multi).select("source", "record_id").rows()
            if (s, r) != (rec["source"], rec["record_id"])]
    assert all(entity_of[k] != entity_of[(rec["source"], rec["record_id"])] for k in rest)
    with Store.open(store, read_only=True) as st:
        assert st.max_decision_id() == decided.decision_id  # nothing lost, nothing applied twice


def test_a_reader_holding_the_store_only_delays_the_write(linked_copy: Path, tmp_path: Path) -> None:
    store = linked_copy.parent / "out" / "tiny.duckdb"
    run = start_run(linked_copy, "lock:start", tmp_path)
    reader = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"con = duckdb.connect({str(store)!r}, read_only=True)\n"
                               "print('held', flush=True)\ntime.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "held"
        res = finish(run, tmp_path)
    finally:
        reader.kill()
        reader.wait()
    assert res["timings"]["lock"] >= 0.5  # it waited for the reader, then wrote
    with Store.open(store, read_only=True) as st:
        assert st.last_run_info()["run_id"] == res["run_id"]
