"""Start-up and incremental cost of ``idweave link`` as a user runs it (issue 14, items 3 and 4).

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_startup.py --data-1m /tmp/b14/x20.parquet --work /tmp/b14/bench \\
        --model-store-50k STORE --model-store-1m STORE [--before /tmp/b14/before] [--repeats 3]

Every figure is one ``idweave link PROJECT --json`` command, a new process (Python start-up,
imports, reading Parquet and the store included), timed from outside; peak RSS is the child's
``ru_maxrss`` (``os.wait4``). Per graph (historical_50k, attributes and kinds of
``../shared/checks/score.py hist50k``; and historical_50k scaled x20 to ~1M records with
``../shared/datasets/scale_historical.py``, whose project states five blocking rules to keep a
full run's memory near 5 GB on this shared machine; ``--data-200k``: historical_50k scaled x4,
~202k records, with the same rules):

1. **base**: a store holding 99 % of the records (seeded sample) and a model, made by one
   ``link`` on the 99 % file starting from ``--model-store-*`` (a store of the same data
   whose model the runs reuse: none of them trains).
2. **no-op rerun**: ``link`` again on the same 99 % file, ``--repeats`` times on the same copy.
3. **touched**: the 99 % file rewritten with the same bytes (a new mtime), then ``link``.
4. **+1 % incremental**: ``link`` on the 100 % file, each repeat on a fresh copy of the base.
5. **+1 % full**: ``link --full`` on the 100 % file, each repeat on a fresh copy of the base.
6. **imports**: ``python -X importtime`` of ``idweave --help`` and of the no-op rerun, summed
   per top-level package.

``--before DIR`` measures another checkout (``git worktree add DIR COMMIT``) the same way, put
first on the import path. ``--turns A=DIR B=DIR`` instead runs the no-op, +1 % incremental (and
with ``--turns-full`` +1 % full, at 50k) commands of two checkouts taking turns, on the base
stores earlier runs of this script left in ``WORK/{graph}_A`` and ``WORK/{graph}_B``. Each
command's CPU seconds (user + system, all threads) are reported beside its wall time. Prints a
JSON line (also written to ``WORK/startup.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HIST50K = Path("/work/shared/datasets/historical_figures_with_errors_50k.parquet")
ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date", "birth_place": "city",
         "postcode_fake": "postcode", "gender": "sex", "occupation": "category"}
RULES_1M = [["surname", "dob"], ["first_name", "dob"], ["postcode_fake", "first_name"],
            ["postcode_fake", "surname"], ["dob", "birth_place"]]


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def shim_env(code: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("IDWEAVE_PROGRESS", None)
    if code:
        # idweave is a namespace of four folders: put the other checkout's first.
        shim = Path(tempfile.mkdtemp(prefix="idweave-before-")) / "idweave"
        shim.mkdir()
        for sub in ("linkage", "blocking", "cli", "web"):
            (shim / sub).symlink_to(Path(code).resolve() / sub)
        env["PYTHONPATH"] = str(shim.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """One command: wall seconds, the child's peak RSS, its JSON summary (if any)."""
    t = time.perf_counter()
    with open(cwd / "last.out", "w") as out, open(cwd / "last.err", "w") as err:
        p = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{args} exit {code}: {(cwd / 'last.err').read_text()[-1500:]}")
    text = (cwd / "last.out").read_text()
    summary = json.loads(text) if text.strip().startswith("{") else None
    # CPU seconds (user + system, every thread) beside wall time: what a loaded shared machine
    # still tells (wall time stretches with the other jobs on the two cores).
    return {"s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "rss_gb": round(usage.ru_maxrss / 1e6, 3), "summary": summary}


def link(project: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    r = run(["-m", "idweave.cli.app", "link", str(project), "--json", *extra], env, project.parent)
    s = r.pop("summary")
    r.update(mode=s.get("mode"), timings=s.get("timings"), events=s.get("events"), new=s.get("new_records"),
             entities=s.get("entities"), scored=s.get("scored_pairs"))
    return r


def imports(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """``-X importtime``: the total and the ten most costly top-level packages (ms, cumulative
    over their first imports)."""
    p = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd=cwd, capture_output=True, text=True)
    per: dict[str, int] = {}
    total = 0
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, name = int(m.group(1)), m.group(4)
        total += self_us
        per[name.split(".")[0]] = per.get(name.split(".")[0], 0) + self_us
    top = dict(sorted(((k, round(v / 1000)) for k, v in per.items()), key=lambda kv: -kv[1])[:10])
    return {"total_ms": round(total / 1000), "top_ms": top,
            "splink_imported": "splink" in per, "polars_imported": "polars" in per}


def copy_synced(src: Path, dest: Path) -> None:
    for f in (dest, Path(str(dest) + ".wal")):
        f.unlink(missing_ok=True)
    shutil.copy(src, dest)
    if Path(str(src) + ".wal").exists():
        shutil.copy(Path(str(src) + ".wal"), Path(str(dest) + ".wal"))
    os.sync()


def write_project(folder: Path, data: str, rules: list | None) -> Path:
    import yaml

    spec: dict[str, Any] = {"store": "store.duckdb", "attributes": ATTRS,
                            "sources": {"people": {"path": data, "id": "unique_id",
                                                   "columns": {a: a for a in ATTRS}}}}
    if rules:
        spec["blocking"] = rules
    p = folder / "project.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def split(data: Path, folder: Path) -> None:
    """``all.parquet`` (every record) and ``p99.parquet`` (a seeded 99 % sample) in ``folder``."""
    import polars as pl

    if (folder / "p99.parquet").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    df = pl.read_parquet(data)
    keep = cols = ["unique_id", *ATTRS]
    df = df.select(cols).with_columns(pl.all().cast(pl.Utf8))
    rng = random.Random(23)
    mask = pl.Series([rng.random() < 0.99 for _ in range(df.height)])
    df.write_parquet(folder / "all.parquet")
    df.filter(mask).select(keep).write_parquet(folder / "p99.parquet")


def med(xs: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(xs), 3), "runs": [round(x, 3) for x in xs],
            "spread": round(max(xs) - min(xs), 3)}


def graph(name: str, data: Path, model_store: Path, rules: list | None, code: str | None, work: Path,
          repeats: int, skip_full: bool) -> dict[str, Any]:
    env = shim_env(code)
    tag = "before" if code else "after"
    folder = work / f"{name}_{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    split(data, work / name)
    for f in ("all.parquet", "p99.parquet"):
        if not (folder / f).exists():
            shutil.copy(work / name / f, folder / f)
    p99, p100 = write_project(folder, "p99.parquet", rules), folder / "p100.yaml"
    p100.write_text(p99.read_text().replace("p99.parquet", "all.parquet"))
    store, base = folder / "store.duckdb", folder / "base.duckdb"
    out: dict[str, Any] = {}
    log(f"{name} {tag}: base (99 %)")
    copy_synced(model_store, store)
    out["base"] = link(p99, env)
    shutil.copy(store, base)
    for f in (Path(str(base) + ".wal"),):
        f.unlink(missing_ok=True)
    noop = []
    for i in range(repeats):
        log(f"{name} {tag}: no-op rerun {i + 1}")
        noop.append(link(p99, env))
    out["noop"] = {"s": med([r["s"] for r in noop]), "cpu_s": med([r["cpu_s"] for r in noop]),
                   "rss_gb": med([r["rss_gb"] for r in noop]),
                   "mode": noop[-1]["mode"], "timings": noop[-1]["timings"], "events": noop[-1]["events"]}
    out["imports_noop"] = imports(["-m", "idweave.cli.app", "link", str(p99), "--json"], env, folder)
    out["imports_help"] = imports(["-m", "idweave.cli.app", "--help"], env, folder)
    touched = []
    for i in range(repeats):
        body = (folder / "p99.parquet").read_bytes()
        (folder / "p99.parquet").write_bytes(body)  # the same bytes, a new mtime
        log(f"{name} {tag}: touched rerun {i + 1}")
        touched.append(link(p99, env))
    out["touched"] = {"s": med([r["s"] for r in touched]), "rss_gb": med([r["rss_gb"] for r in touched]),
                      "mode": touched[-1]["mode"], "events": touched[-1]["events"]}
    for kind, extra in (("incremental", ()), ("full", ("--full",))):
        if kind == "full" and skip_full:
            continue
        rs = []
        for i in range(repeats):
            copy_synced(base, store)
            log(f"{name} {tag}: +1 % {kind} {i + 1}")
            rs.append(link(p100, env, *extra))
        out[kind] = {"s": med([r["s"] for r in rs]), "cpu_s": med([r["cpu_s"] for r in rs]),
                     "rss_gb": med([r["rss_gb"] for r in rs]),
                     "mode": rs[-1]["mode"], "new": rs[-1]["new"], "scored": rs[-1]["scored"],
                     "entities": rs[-1]["entities"], "timings": rs[-1]["timings"]}
    if "full" in out:
        out["ratio"] = round(out["incremental"]["s"]["median"] / out["full"]["s"]["median"], 4)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def interleaved(name: str, work: Path, codes: list[tuple[str, str | None]], repeats: int,
                full: bool) -> dict[str, Any]:
    """The no-op rerun, +1 % incremental (and, with ``full``, +1 % full) commands of two
    checkouts taking turns, A B A B ..., each on the base store an earlier run of this script
    made with that code in ``WORK/{name}_{tag}``: on a shared machine whose load drifts, turns
    compare where two blocks of runs minutes apart do not."""
    out: dict[str, Any] = {tag: {"noop": [], "incremental": [], "full": []} for tag, _ in codes}
    kinds = [("noop", "project.yaml", ()), ("incremental", "p100.yaml", ())]
    if full:
        kinds.append(("full", "p100.yaml", ("--full",)))
    for i in range(repeats):
        for kind, project, extra in kinds:
            for tag, code in codes:
                folder = work / f"{name}_{tag}"
                copy_synced(folder / "base.duckdb", folder / "store.duckdb")
                log(f"{name} {tag}: {kind} turn {i + 1}")
                out[tag][kind].append(link(folder / project, shim_env(code), *extra))
    result: dict[str, Any] = {}
    for tag, runs in out.items():
        result[tag] = {k: {"s": med([r["s"] for r in rs]), "cpu_s": med([r["cpu_s"] for r in rs]),
                           "mode": rs[-1]["mode"], "timings": rs[-1]["timings"]} for k, rs in runs.items() if rs}
        if runs["full"]:
            for m in ("s", "cpu_s"):
                result[tag][f"ratio_{m}"] = round(result[tag]["incremental"][m]["median"]
                                                  / result[tag]["full"][m]["median"], 4)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/idweave-bench-startup")
    ap.add_argument("--data-1m", help="historical_50k scaled x20 (scale_historical.py 20 OUT)")
    ap.add_argument("--model-store-50k", required=True, help="a historical_50k store holding a model")
    ap.add_argument("--model-store-1m", help="a store of the x20 data (project of this script) holding a model")
    ap.add_argument("--data-200k", help="historical_50k scaled x4 (scale_historical.py 4 OUT): run with the 1M rules")
    ap.add_argument("--model-store-200k", help="a store of the x4 data (project of this script) holding a model")
    ap.add_argument("--before", help="another checkout to measure the same way")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["50k", "200k", "1m"], help="one graph only")
    ap.add_argument("--no-after", action="store_true", help="measure only --before")
    ap.add_argument("--skip-full-1m", action="store_true", help="no full runs at 1M (they take minutes)")
    ap.add_argument("--turns", nargs=2, metavar="TAG=CODE",
                    help="instead: two checkouts taking turns (see interleaved) on WORK/{graph}_{TAG}, made by "
                         "earlier runs of this script; CODE '-' is this checkout")
    ap.add_argument("--turns-full", action="store_true", help="with --turns: also +1 %% full runs (50k, 200k)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"bench": "startup", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "machine": {"nproc": os.cpu_count(),
                                          "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                          / 1e9, 1)},
                              "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if a.turns:
        codes = [(t.split("=", 1)[0], None if t.split("=", 1)[1] == "-" else t.split("=", 1)[1]) for t in a.turns]
        for name in ([a.only] if a.only else ["50k", *(["200k"] if a.data_200k else []), "1m"]):
            graph_name = {"50k": "hist50k", "200k": "x4", "1m": "x20"}[name]
            result[f"turns_{graph_name}"] = interleaved(graph_name, work, codes, a.repeats,
                                                        a.turns_full and name in ("50k", "200k"))
            (work / "startup.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
        return
    codes = ([] if a.no_after else [("after", None)]) + ([("before", a.before)] if a.before else [])
    for tag, code in codes:
        if a.only in (None, "50k"):
            result[f"hist50k_{tag}"] = graph("hist50k", HIST50K, Path(a.model_store_50k), None, code, work,
                                             a.repeats, False)
        if a.only in (None, "200k") and a.data_200k:
            result[f"x4_{tag}"] = graph("x4", Path(a.data_200k), Path(a.model_store_200k), RULES_1M, code, work,
                                        a.repeats, False)
        if a.only in (None, "1m") and a.data_1m:
            result[f"x20_{tag}"] = graph("x20", Path(a.data_1m), Path(a.model_store_1m), RULES_1M, code, work,
                                         a.repeats, a.skip_full_1m)
        (work / "startup.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
