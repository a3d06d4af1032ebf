"""+1 % incremental against full runs as ``link()`` calls in one process (issue 14, item 3).

Usage (from the repository root, after ``bench_startup.py`` made the base stores)::

    /work/venv/bin/python bench/bench_incremental.py --work WORK --turns before=DIR after=DIR [--repeats 3]

``WORK/{graph}_{tag}`` are folders ``bench/bench_startup.py`` left (``base.duckdb``: a store of
a seeded 99 % made by that checkout's code, ``p100.yaml``: the project on every record). For
each repeat and each checkout in turn (A B A B ...), a new process with that checkout first on
the import path runs, on fresh copies of the base store: one incremental ``link()`` not timed
(imports and the model's compiled scoring SQL: what a warm process has), then one timed
incremental and one timed full (``full=True``; both reuse the stored model). Reported per
checkout: wall and CPU seconds (``time.process_time``, all threads) of each, the stage timings
of the last run, medians of the repeats and their spreads, and the load average. Prints a
JSON line (also written to ``WORK/incremental.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
folder = Path(sys.argv[1])
from idweave.linkage import link

def fresh(name):
    store = folder / name
    for f in (store, Path(str(store) + ".wal")):
        f.unlink(missing_ok=True)
    shutil.copy(folder / "base.duckdb", store)
    return store

link(str(folder / "p100.yaml"), store=fresh("warm.duckdb"))
out = {}
for kind, full in (("incremental", False), ("full", True)):
    store = fresh(f"{kind}.duckdb")
    w, c = time.perf_counter(), time.process_time()
    r = link(str(folder / "p100.yaml"), store=store, full=full)
    out[kind] = {"s": round(time.perf_counter() - w, 3), "cpu_s": round(time.process_time() - c, 3),
                 "mode": r.summary["mode"], "timings": r.timings,
                 "reclustered": r.summary["reclustered_records"], "scored": r.summary["scored_pairs"]}
print(json.dumps(out))
"""


def shim(code: str) -> str:
    """A folder whose ``idweave`` package is the checkout ``code`` (a namespace of four folders)."""
    root = Path(tempfile.mkdtemp(prefix="idweave-inc-")) / "idweave"
    root.mkdir()
    for sub in ("linkage", "blocking", "cli", "web"):
        (root / sub).symlink_to(Path(code).resolve() / sub)
    return str(root.parent)


def med(xs: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(xs), 3), "runs": xs, "spread": round(max(xs) - min(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--turns", nargs=2, metavar="TAG=CODE", required=True)
    ap.add_argument("--graphs", nargs="+", default=["hist50k", "x20"])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    work = Path(a.work)
    codes = [(t.split("=", 1)[0], shim(t.split("=", 1)[1])) for t in a.turns]
    result: dict[str, Any] = {"bench": "incremental", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "nproc": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    for graph in a.graphs:
        runs: dict[str, list[dict[str, Any]]] = {tag: [] for tag, _ in codes}
        for i in range(a.repeats):
            for tag, path in codes:
                folder = work / f"{graph}_{tag}"
                env = dict(os.environ, PYTHONPATH=path)
                env.pop("IDWEAVE_PROGRESS", None)
                print(f"[{datetime.now():%H:%M:%S}] {graph} {tag} repeat {i + 1}", file=sys.stderr, flush=True)
                p = subprocess.run([sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True)
                if p.returncode:
                    raise RuntimeError(p.stderr[-2000:])
                runs[tag].append(json.loads(p.stdout.strip().splitlines()[-1]))
        out: dict[str, Any] = {}
        for tag, rs in runs.items():
            out[tag] = {kind: {"s": med([r[kind]["s"] for r in rs]), "cpu_s": med([r[kind]["cpu_s"] for r in rs]),
                               "mode": rs[-1][kind]["mode"], "timings": rs[-1][kind]["timings"],
                               "reclustered": rs[-1][kind]["reclustered"], "scored": rs[-1][kind]["scored"]}
                        for kind in ("incremental", "full")}
            for m in ("s", "cpu_s"):
                out[tag][f"ratio_{m}"] = round(out[tag]["incremental"][m]["median"] / out[tag]["full"][m]["median"], 4)
        out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result[graph] = out
        (work / "incremental.json").write_text(json.dumps(result, indent=2))
    for _, path in codes:
        shutil.rmtree(path, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
