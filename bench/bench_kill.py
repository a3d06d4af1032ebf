"""SIGKILL at N points of a historical_50k ``idweave link``: a first run and a rerun.

Usage (from the repository root; reads /work/shared/datasets, so it is a benchmark, not a test):

    python bench/bench_kill.py [--points 10] [--workdir /tmp/idweave-kill] [--json OUT]

The project is the one ``/work/shared/checks/score.py hist50k`` builds (seven attributes, one
Parquet source ``people``). Two series, each killed at ``--points`` moments spread evenly over
one uninterrupted run of the same kind (measured first, on this machine, just before):

* **first run**: no store yet. After each kill the store must hold no run (or not exist), or
  hold the whole run; then ``idweave link`` runs to the end and its partition of the records
  into entities must equal the uninterrupted run's (entity ids are random, so partitions are
  compared, not ids).
* **rerun**: a store made by linking 80 % of the records (every fifth record left out), then
  the full file. Before each kill the seeded store is restored from a copy. After the kill the
  ``.duckdb`` file must have the sha256 it had before, and if DuckDB left a ``.wal`` behind,
  the tables read from a copy of both files must equal the seeded store's (the README's
  promise: "killed at any moment, the store is exactly as it was, or holds the whole run").
  Then ``idweave link`` runs to the end: its records -> entity ids must equal the
  uninterrupted rerun's exactly (the seeded ids persist; new entities compared by partition).

Each kill also records which stages had reported done (the stage lines ``link`` prints on
stderr without a terminal), to show where it landed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import yaml

DATA = Path("/work/shared/datasets/historical_figures_with_errors_50k.parquet")
ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date", "birth_place": "city",
         "postcode_fake": "postcode", "gender": "sex", "occupation": "category"}
CLI = [sys.executable, "-c", "from idweave.cli.app import main; main()"]


def sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(work: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The full frame and the 80 % seed (unique_id as text, as score.py exports it)."""
    work.mkdir(parents=True, exist_ok=True)
    df = pl.read_parquet(DATA)
    seed = df.with_row_index("_i").filter(pl.col("_i") % 5 != 0).drop("_i")
    return df, seed


def write_project(d: Path, frame: pl.DataFrame) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(d / "hist.parquet")
    proj = {"store": "store.duckdb", "attributes": ATTRS,
            "sources": {"people": {"path": "hist.parquet", "id": "unique_id", "columns": {a: a for a in ATTRS}}}}
    (d / "project.yaml").write_text(yaml.safe_dump(proj, sort_keys=False))
    return d / "project.yaml"


class Run:
    """``idweave link`` in a subprocess; stage lines on stderr collected with their times."""

    def __init__(self, project: Path) -> None:
        env = {**os.environ, "COLUMNS": "200"}
        env.pop("IDWEAVE_PROGRESS", None)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([*CLI, "link", str(project)], cwd=project.parent, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.stages: list[tuple[float, str]] = []
        self.err: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("  ") and ":" in line:
                self.stages.append((time.monotonic() - self.t0, line.split(":")[0].strip()))

    def wait(self) -> tuple[int, float]:
        rc = self.proc.wait()
        self.reader.join()
        return rc, time.monotonic() - self.t0

    def kill(self, after: str | None, delay: float) -> tuple[bool, list[str]]:
        """SIGKILL ``delay`` seconds after the stage ``after`` reports done (after the start
        for None); (was it still running, stages done by then)."""
        while after is not None and after not in [st for _, st in self.stages] and self.proc.poll() is None:
            time.sleep(0.002)
        t = time.monotonic() + delay
        while time.monotonic() < t and self.proc.poll() is None:
            time.sleep(0.002)
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()
        return alive, [st for _, st in self.stages]


def read(store: Path, tables_too: bool = False) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """(source, record_id, entity_id) of every record, and with ``tables_too`` every table
    sorted, read from a copy of the store and its log (so reading never replays into it)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "s.duckdb"
        shutil.copy(store, copy)
        if Path(str(store) + ".wal").exists():
            shutil.copy(str(store) + ".wal", str(copy) + ".wal")
        con = duckdb.connect(str(copy), read_only=True)
        try:
            names = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
            every = {n: pl.from_arrow(con.sql(f'select * from "{n}" order by all').to_arrow_table())
                     for n in sorted(names)} if tables_too else {}
            ents = (pl.from_arrow(con.sql("select source, record_id, entity_id from records order by all")
                                  .to_arrow_table()) if "records" in names else pl.DataFrame())
            return ents, every
        finally:
            con.close()


def entities(store: Path) -> pl.DataFrame:
    return read(store)[0]


def tables(store: Path) -> dict[str, pl.DataFrame]:
    return read(store, tables_too=True)[1]


def same_tables(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> bool:
    return set(a) == set(b) and all(a[t].equals(b[t]) for t in a)


def partition(ents: pl.DataFrame) -> set[frozenset[str]]:
    groups = ents.group_by("entity_id").agg(pl.col("record_id"))
    return {frozenset(r) for r in groups["record_id"].to_list()}


def n_runs(store: Path) -> int:
    if not store.exists():
        return 0
    t = tables(store)
    return t["runs"].height if "runs" in t else 0


def clean(d: Path) -> None:
    for p in d.iterdir():
        if p.name not in ("project.yaml", "hist.parquet"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def complete(project: Path) -> tuple[float, Run]:
    """An uninterrupted ``link``: its time and the run (for its stage lines)."""
    run = Run(project)
    rc, secs = run.wait()
    assert rc == 0, "".join(run.err)[-2000:]
    return secs, run


def points(ref: Run, n: int) -> list[tuple[str | None, float]]:
    """Where to kill: halfway through each stage of the uninterrupted run ``ref`` (timed
    from the line of the stage before, so that a faster or slower machine still lands in
    the same stage), then at the start of the last stage (the write) and spread over it."""
    marks = [(0.0, None)] + [(t, st) for t, st in ref.stages]
    mids = [(prev, round((t - t0) / 2, 2)) for (t0, prev), (t, _) in zip(marks[:-2], marks[1:-1])]
    (t0, prev), (t1, _) = marks[-2], marks[-1]
    write = [(prev, round((t1 - t0) * f, 2)) for f in (0.0, 0.25, 0.5, 0.75)][:max(n - 1, 1)]
    k = n - len(write)
    if k < len(mids):  # an even choice of the stages before the write
        mids = [mids[round(i * (len(mids) - 1) / max(k - 1, 1))] for i in range(k)] if k > 0 else []
    return mids + write


def first_series(work: Path, full: pl.DataFrame, n: int) -> dict:
    d = work / "first"
    project = write_project(d, full)
    clean(d)
    secs, ref = complete(project)
    store = d / "store.duckdb"
    want = partition(entities(store))
    stage_times = [(round(t, 2), s) for t, s in ref.stages]
    out = {"uninterrupted_s": round(secs, 2), "stages": stage_times, "kills": []}
    for after, delay in points(ref, n):
        clean(d)
        alive, done = Run(project).kill(after, delay)
        left = {"store": store.exists(), "wal": Path(str(store) + ".wal").exists(),
                "model": (d / "store.model.json").exists()}
        runs = n_runs(store)
        state = "no store" if not left["store"] else ("empty store" if runs == 0 else f"{runs} run committed")
        rerun = Run(project)
        rc, rsecs = rerun.wait()
        ok = rc == 0 and partition(entities(store)) == want and n_runs(store) == 1
        out["kills"].append({"after": after, "delay_s": delay, "killed": alive, "stages_done": done, "left": left, "state": state,
                             "next_link_rc": rc, "next_link_s": round(rsecs, 2), "same_entities": ok})
        print(json.dumps({"series": "first", **out["kills"][-1]}), flush=True)
    return out


def rerun_series(work: Path, full: pl.DataFrame, seed: pl.DataFrame, n: int) -> dict:
    d = work / "rerun"
    project = write_project(d, seed)
    clean(d)
    complete(project)
    store = d / "store.duckdb"
    pristine = work / "pristine"
    shutil.rmtree(pristine, ignore_errors=True)
    pristine.mkdir()
    for p in d.iterdir():
        if p.name not in ("project.yaml", "hist.parquet"):
            shutil.copy(p, pristine / p.name)
    assert not (pristine / "store.duckdb.wal").exists()
    before_sha = sha256(store)
    before = tables(store)
    write_project(d, full)

    def restore() -> None:
        clean(d)
        for p in pristine.iterdir():
            shutil.copy(p, d / p.name)

    restore()
    secs, ref = complete(project)
    want = entities(store)
    seeded = set(before["entities"]["entity_id"].to_list())

    def same(got: pl.DataFrame) -> bool:
        """The same partition, and every record the seeded ids hold holds the same id (new
        entities' ids are random)."""
        old = pl.col("entity_id").is_in(list(seeded))
        return partition(got) == partition(want) and got.filter(old).equals(want.filter(old))
    out = {"seed_records": seed.height, "records": full.height, "uninterrupted_s": round(secs, 2),
           "stages": [(round(t, 2), s) for t, s in ref.stages], "kills": []}
    for after, delay in points(ref, n):
        restore()
        alive, done = Run(project).kill(after, delay)
        wal = Path(str(store) + ".wal")
        after_sha = sha256(store)
        after_tables = tables(store)
        if same_tables(after_tables, before):
            state = "as it was"
        elif after_tables["runs"].height == before["runs"].height + 1:
            state = "whole run committed"
        else:
            state = "IN BETWEEN"
        others = {p.name: sha256(d / p.name) == sha256(p) for p in pristine.iterdir() if p.name != "store.duckdb"}
        rerun = Run(project)
        rc, rsecs = rerun.wait()
        got = entities(store)
        ok = rc == 0 and same(got)
        out["kills"].append({"after": after, "delay_s": delay, "killed": alive, "stages_done": done, "state": state,
                             "duckdb_sha256_unchanged": after_sha == before_sha, "wal_left": wal.exists(),
                             "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                             "other_files_unchanged": others, "next_link_rc": rc, "next_link_s": round(rsecs, 2),
                             "same_entities_and_ids": ok})
        print(json.dumps({"series": "rerun", **out["kills"][-1]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "idweave-kill"))
    ap.add_argument("--series", choices=["first", "rerun", "both"], default="both")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    work = Path(a.workdir)
    full, seed = prepare(work)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res: dict = {"started": started, "machine": f"{os.uname().nodename}, {os.cpu_count()} cores",
                 "python": sys.version.split()[0], "points": a.points}
    if a.series in ("first", "both"):
        res["first"] = first_series(work, full, a.points)
    if a.series in ("rerun", "both"):
        res["rerun"] = rerun_series(work, full, seed, a.points)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("first", "rerun")}))


if __name__ == "__main__":
    main()
