"""What pseudonymised identifiers cost: pairwise F1 and link time, plain vs keyed hashes.

    python bench/bench_privacy.py [--datasets febrl3,febrl4,demo,town0,town1] [--repeat 3] [--json-out FILE]

For every dataset the same project is linked into fresh stores (each run a full run that
trains its own model), ``--repeat`` times each, the two forms alternated: once as it is, once with ``privacy: {pseudonymise: [...]}``
(FEBRL: ``soc_sec_id``; the demo: ``ssn``, ``email``, ``phone``; ``townN``: the SSN of the
four pseudopeople registers of ``registries.py`` at seed N, default noise) and a key in
``IDWEAVE_BENCH_KEY``. It prints the cluster pairwise precision / recall / F1 and B-cubed F1
of both (scored with /work/shared/checks/metrics.py, FEBRL4 link-only), the F1 change, and
the median and spread (max - min) of the link wall time (and the ratio of median CPU
seconds of the process, less noisy on a shared machine), then one JSON line with
everything.

The hashed form keeps exact comparison (equal cleaned values give equal hashes) and replaces
the "one typo" level (Damerau-Levenshtein <= 1) by "one edit apart": a keyed hash of the
one-deletion neighbourhood in common (``privacy.Pseudonymiser.encode``). What the F1 change
measures is what is lost besides: the phone's "last 7 digits" and the e-mail's user-name and
Jaro-Winkler levels, and any blocking key read from the identifier's characters. Each run's
stage timings are kept (``timings``: where the time goes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from datasets import CHECKS_DIR, load  # noqa: E402

KEY_ENV = "IDWEAVE_BENCH_KEY"
PSEUDO = {"febrl3": ["soc_sec_id"], "febrl4": ["soc_sec_id"], "demo": ["ssn", "email", "phone"], "town": ["ssn"]}


def _metrics():
    spec = importlib.util.spec_from_file_location("_idweave_metrics", CHECKS_DIR / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _demo(folder: Path) -> tuple[dict, pd.DataFrame, bool]:
    """The demo project (as a dict, sources in ``folder``) and its truth."""
    import shutil

    import polars as pl
    import yaml

    src = ROOT / "fixtures" / "demo"
    shutil.copytree(src, folder, dirs_exist_ok=True)
    project = yaml.safe_load((src / "project.yaml").read_text())
    truth = []
    for name, s in project["sources"].items():
        path = src / s["path"]
        df = (pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else
              pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path))
        truth.append(pd.DataFrame({"source": name, "record_id": df[s["id"]].cast(pl.Utf8).to_list(),
                                   "person": df["true_person"].cast(pl.Utf8).to_list()}))
    return project, pd.concat(truth, ignore_index=True), False


def _dataset(name: str, folder: Path) -> tuple[dict, pd.DataFrame, bool]:
    if name == "demo":
        return _demo(folder)
    if name.startswith("town"):  # the pseudopeople registers (registries.py), seed N, default noise
        from registries import build

        town = build(seed=int(name[4:] or 0), noise=1.0)
        town.write_files(folder)
        return dict(town.project), town.truth[["source", "record_id", "person"]], False
    ds = load(name)
    ds.write_files(folder)
    return dict(ds.project), ds.truth, ds.link_only


def _run(project: dict, folder: Path, store: str) -> tuple[float, float, pd.DataFrame, dict]:
    from idweave.linkage import link, project_from_dict

    p = dict(project, store=store)
    proj = project_from_dict(p, base_dir=folder)
    for f in (proj.store, proj.store.with_name(proj.store.name + ".wal"), proj.model_file):
        f.unlink(missing_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    r = link(proj)
    # CPU seconds of the process (every thread): on a shared machine, less noisy than wall time
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, r.entities.to_pandas(), {k: round(float(v), 2) for k, v in r.timings.items()}


def _score(metrics, entities: pd.DataFrame, truth: pd.DataFrame, link_only: bool) -> dict:
    m = truth.merge(entities, on=["source", "record_id"], how="left")
    pred = m["entity_id"].fillna("single:" + m["source"] + ":" + m["record_id"])
    out = metrics.cluster_metrics(pred.to_numpy(), m["person"].to_numpy(), source=m["source"].to_numpy(),
                                  link_only=link_only)
    return {k: out[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_f1") if k in out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="febrl3,febrl4,demo")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    metrics = _metrics()
    os.environ[KEY_ENV] = "bench key: not a secret, never stored"
    results = []
    for name in args.datasets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            project, truth, link_only = _dataset(name, folder)
            private = dict(project, privacy={"pseudonymise": PSEUDO.get(name) or PSEUDO["town"], "key_env": KEY_ENV})
            row = {"dataset": name, "records": int(len(truth)), "pseudonymised": private["privacy"]["pseudonymise"]}
            times: dict[str, list[float]] = {"plain": [], "hashed": []}
            cpus: dict[str, list[float]] = {"plain": [], "hashed": []}
            stages: dict[str, list[dict]] = {"plain": [], "hashed": []}
            ents: dict[str, pd.DataFrame] = {}
            for _ in range(args.repeat):  # alternated, so that the machine's drift hits both alike
                for label, proj in (("plain", project), ("hashed", private)):
                    t, cpu, ents[label], timing = _run(proj, folder, f"out/{label}.duckdb")
                    times[label].append(t)
                    cpus[label].append(cpu)
                    stages[label].append(timing)
            for label in ("plain", "hashed"):
                ts = times[label]
                row[label] = {**_score(metrics, ents[label], truth, link_only), "seconds": ts, "timings": stages[label],
                              "cpu_s": cpus[label], "median_cpu_s": statistics.median(cpus[label]),
                              "median_s": statistics.median(ts), "spread_s": max(ts) - min(ts)}
            row["f1_change"] = row["hashed"]["pairwise_f1"] - row["plain"]["pairwise_f1"]
            row["time_ratio"] = row["hashed"]["median_s"] / row["plain"]["median_s"]
            row["cpu_ratio"] = row["hashed"]["median_cpu_s"] / row["plain"]["median_cpu_s"]
            results.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(f"{'dataset':<8} {'records':>7} {'F1 plain':>9} {'F1 hashed':>9} {'change':>8} "
          f"{'t plain (s)':>12} {'t hashed (s)':>13} {'ratio':>6} {'cpu ratio':>9}")
    for r in results:
        print(f"{r['dataset']:<8} {r['records']:>7} {r['plain']['pairwise_f1']:>9.4f} {r['hashed']['pairwise_f1']:>9.4f} "
              f"{r['f1_change']:>+8.4f} {r['plain']['median_s']:>6.2f} ±{r['plain']['spread_s']:<4.2f} "
              f"{r['hashed']['median_s']:>7.2f} ±{r['hashed']['spread_s']:<4.2f} {r['time_ratio']:>6.2f} {r['cpu_ratio']:>9.2f}")
    import platform

    out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(sys.argv), "machine": {"nproc": os.cpu_count(),
                                                                   "platform": platform.platform()},
           "results": results}
    print(json.dumps(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
