"""Full runs at scale, kinds only, side by side with Splink's historical_50k demo configuration
(issue 14's targets): wall time, peak RSS of the whole process, candidate pairs and cluster
pairwise F1, per size.

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_scale.py --copies 4,20 --repeats 3 --work /tmp/bscale

The data is ``../shared/datasets/scale_historical.py COPIES`` (x4 ~ 202k, x20 ~ 1.01M records;
made once per size in WORK). Each tool run is a new process, timed from outside, its peak RSS
the child's ``ru_maxrss`` (``RUSAGE_CHILDREN`` of a wrapper process whose only child it is):

* **idweave**: ``idweave link PROJECT --json`` on a fresh store (so a full run that trains),
  the project holding only the attributes and kinds of ``../shared/checks/score.py hist50k``;
  then ``idweave export`` (not timed) for the entities.
* **Splink**: this script with ``--child splink``: Splink 5 on DuckDB with the configuration of
  its own historical_50k demo (``bench/splink_demos.py``: its blocking rules, comparisons and
  training; predict everything, cluster at the demo's 0.95), reading the same Parquet file.

Within a repeat the tools run one after the other (the order alternates between repeats), so
both see the same machine load; the table gives medians and spreads (max - min) of the
repeats. Prints the table and one JSON line (also written to ``WORK/scale.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date", "birth_place": "city",
         "postcode_fake": "postcode", "gender": "sex", "occupation": "category"}


def data(work: Path, copies: int) -> Path:
    out = work / f"x{copies}.parquet"
    if not out.exists():
        subprocess.run([sys.executable, str(SHARED / "datasets" / "scale_historical.py"), str(copies), str(out)],
                       check=True, capture_output=True)
    return out


def run_tool(tool: str, parquet: Path, folder: Path) -> dict:
    """One run of ``tool`` in a wrapper process that reports its child's wall time and peak RSS."""
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, __file__, "--wrap", tool, str(parquet), str(folder)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"failed": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def wrap(tool: str, parquet: Path, folder: Path) -> dict:
    """Run the tool as this process's only child (its peak RSS is then the children's maximum) and score its entities."""
    import pandas as pd

    sys.path.insert(0, str(SHARED / "checks"))
    from metrics import cluster_metrics

    if tool == "idweave":
        import shutil

        import yaml
        shutil.rmtree(folder / "out", ignore_errors=True)  # a fresh store: a full run that trains
        project = folder / "project.yaml"
        project.write_text(yaml.safe_dump({
            "store": "out/scale.duckdb", "attributes": ATTRS,
            "sources": {"people": {"path": str(parquet), "id": "unique_id", "columns": {a: a for a in ATTRS}}}}))
        cmd = [str(Path(sys.executable).with_name("idweave")), "link", str(project), "--json"]
    else:
        cmd = [sys.executable, __file__, "--child", tool, str(parquet), str(folder)]
    t0 = time.perf_counter()
    cap = float(os.environ.get("BENCH_SCALE_MEMORY_GB", "0"))

    def limit() -> None:  # an address-space cap, so a run that would swamp the shared machine fails
        import resource
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (int(cap * 1024 ** 3),) * 2)

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        lines = err.strip().splitlines() or ["?"]
        said = [x for x in lines if any(w in x for w in ("rror", "panicked", "memory", "Killed"))] or lines
        raise SystemExit(f"{tool} exit {p.returncode}: {said[-1][:300]}")
    import resource
    # This wrapper's only child so far is the tool: the children's maximum is the tool's peak.
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2  # KB -> GB
    row: dict = {"wall_s": round(wall, 2), "peak_rss_gb": round(rss_gb, 2)}
    if tool == "idweave":
        summary = json.loads(out)
        row["pairs"] = summary.get("candidate_pairs")
        row["stages"] = {k: round(v, 2) for k, v in summary.get("timings", {}).items()}
        ent = folder / "entities.csv"
        subprocess.run([str(Path(sys.executable).with_name("idweave")), "export", str(folder / "project.yaml"),
                        "--out", str(ent)], check=True, capture_output=True)
        pred = pd.read_csv(ent, dtype=str)
    else:
        child = json.loads(out.strip().splitlines()[-1])
        row["pairs"] = child["pairs"]
        row["stages"] = child["stages"]
        pred = pd.read_parquet(folder / "splink_entities.parquet")
    truth = pd.read_parquet(parquet, columns=["unique_id", "cluster"])
    truth["record_id"] = truth["unique_id"].astype(str)
    label = "entity_id" if tool == "idweave" else "cluster_id"
    m = truth.merge(pred[["record_id", label]], on="record_id")
    assert len(m) == len(truth), (len(m), len(truth))
    cm = cluster_metrics(m[label].to_numpy(), m["cluster"].to_numpy())
    row["records"] = len(truth)
    row["f1"] = round(cm["pairwise_f1"], 4)
    row["precision"] = round(cm["pairwise_precision"], 4)
    row["recall"] = round(cm["pairwise_recall"], 4)
    return row


def child_splink(parquet: Path, folder: Path) -> dict:
    """Splink's historical_50k demo on the scaled file (bench/splink_demos.py)."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "bench"))
    import splink_demos
    from datasets import BenchDataset

    df = pd.read_parquet(parquet)
    frame = df[["unique_id", *ATTRS]].astype({"unique_id": str})
    for c in ATTRS:
        frame[c] = frame[c].astype("string").astype(object).where(frame[c].notna(), None)
    truth = pd.DataFrame({"source": "people", "record_id": frame.unique_id, "person": df.cluster.astype(str)})
    ds = BenchDataset(name="hist50k", frames={"people": frame}, id_column="unique_id", truth=truth,
                      link_only=False, project={}, files={})
    run = splink_demos.hist50k(ds)
    run.entities[["record_id", "cluster_id"]].to_parquet(
        folder / "splink_entities.parquet")
    return {"pairs": int(run.config["blocked_pairs"]), "stages": {k: round(v, 2) for k, v in run.timings.items()}}


def med(rows: list[dict], key: str) -> tuple[float, float]:
    xs = [r[key] for r in rows if key in r]
    return (statistics.median(xs), max(xs) - min(xs)) if xs else (float("nan"), 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", default="4,20")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tools", default="idweave,splink")
    ap.add_argument("--work", default="/tmp/idweave-bench-scale")
    ap.add_argument("--memory-gb", type=float, default=0.0, help="address-space cap per tool run (0: none)")
    ap.add_argument("--child", nargs=3, metavar=("TOOL", "PARQUET", "FOLDER"))
    ap.add_argument("--wrap", nargs=3, metavar=("TOOL", "PARQUET", "FOLDER"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child_splink(Path(a.child[1]), Path(a.child[2]))))
        return
    if a.wrap:
        print(json.dumps(wrap(a.wrap[0], Path(a.wrap[1]), Path(a.wrap[2]))))
        return
    os.environ["BENCH_SCALE_MEMORY_GB"] = str(a.memory_gb)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tools = a.tools.split(",")
    results: dict = {"bench": "scale", "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
                     "machine": f"{platform.node()}, {os.cpu_count()} cores", "sizes": {}}
    for copies in [int(c) for c in a.copies.split(",")]:
        parquet = data(work, copies)
        rows: dict[str, list[dict]] = {t: [] for t in tools}
        for rep in range(a.repeats):
            for tool in (tools if rep % 2 == 0 else tools[::-1]):
                load = os.getloadavg()[0]
                r = run_tool(tool, parquet, work / f"x{copies}" / tool)
                r["load"] = round(load, 1)
                rows[tool].append(r)
                print(f"x{copies} {tool} repeat {rep + 1}: {json.dumps(r)}", file=sys.stderr, flush=True)
        results["sizes"][copies] = rows
    results["finished"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"full runs, kinds only, vs Splink's historical_50k demo ({results['started']} - {results['finished']}, "
          f"{results['machine']})")
    print("| records | tool | wall s (spread) | peak RSS GB (spread) | pairs | pairwise F1 | P | R | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for copies, rows in results["sizes"].items():
        for tool, rs in rows.items():
            ok = [r for r in rs if "failed" not in r]
            if not ok:
                print(f"| x{copies} | {tool} | failed: {rs[0]['failed']} | | | | | | |")
                continue
            w, ws = med(ok, "wall_s")
            m, ms = med(ok, "peak_rss_gb")
            print(f"| {ok[0]['records']:,} | {tool} | {w:.1f} ({ws:.1f}) | {m:.2f} ({ms:.2f}) | {ok[0]['pairs']:,} | "
                  f"{ok[0]['f1']:.4f} | {ok[0]['precision']:.4f} | {ok[0]['recall']:.4f} | "
                  f"{'/'.join(str(r['load']) for r in rs)} |")
    (work / "scale.json").write_text(json.dumps(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
