"""Derived blocking as the data grow: pairs per record, blocking recall, time and memory of
idweave's derived rules (kinds only) at 50k, ~202k and ~1M records, beside the pairs of
Splink's historical_50k demo blocking rules on the same data (issue 14, item 1).

Blocking only: the records are loaded and cleaned as ``idweave link`` does, the rules are
derived for the number of records (``project_rules``), and the candidate pairs are made
with ``generate_pairs``; nothing is trained, scored or stored, so a million records stay
within a few GB. The data are historical_50k scaled with
``/work/shared/datasets/scale_historical.py COPIES`` (1, 4, 20 copies), which keeps every
record's true cluster, so blocking recall (true pairs among the candidate pairs, over all
true pairs) is exact. ``copy-0 recall`` is the recall of the original 50k records' true
pairs inside the larger data: the same records and truth as at 50k, so any loss there is
the blocking's, not the synthetic copies'.

``--before DIR`` runs the same measurement on another checkout of idweave (e.g. a
``git worktree add /tmp/before HEAD~1``) by putting it first on the import path; each
measurement runs in its own process, one at a time, with an address-space limit
(``--memory-gb``) so that a run that would not fit fails alone instead of the machine.

    python bench/bench_blocking_scale.py --copies 1,4,20 --repeats 3 --before /tmp/h4-before \\
        --data-dir /tmp/h4 --json-out /tmp/h4/blocking_scale.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("IDWEAVE_SHARED", "/work/shared"))
SCALER = SHARED / "datasets" / "scale_historical.py"
ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date", "birth_place": "city",
         "postcode_fake": "postcode", "gender": "sex", "occupation": "category"}


def data_file(copies: int, data_dir: Path) -> Path:
    """historical_50k scaled to ``copies`` copies (made once, kept in ``data_dir``)."""
    out = data_dir / f"hist_x{copies}.parquet"
    if not out.exists():
        subprocess.run([sys.executable, str(SCALER), str(copies), str(out)], check=True)
    return out


def _recall(pairs, cl, pl) -> tuple[float, int]:
    sizes = cl.group_by("cluster").len()
    total = int((sizes["len"] * (sizes["len"] - 1) // 2).sum())
    hit = (pairs.join(cl.rename({"rid": "rid_l", "cluster": "c_l"}), on="rid_l")
           .join(cl.rename({"rid": "rid_r", "cluster": "c_r"}), on="rid_r").filter(pl.col("c_l") == pl.col("c_r")).height)
    return hit / total, total


def _project(path: str):
    """The project ``score.py hist50k`` builds (attributes and kinds only) over ``path``."""
    from idweave.linkage.project import project_from_dict

    return project_from_dict({"attributes": ATTRS, "store": str(Path(tempfile.gettempdir()) / "unused.duckdb"),
                              "sources": {"people": {"path": path, "id": "unique_id",
                                                     "columns": {a: a for a in ATTRS}}}})


def measure_idweave(path: str) -> dict:
    """One measurement in this process: load, derive rules, make the pairs, score them."""
    import polars as pl

    from idweave.blocking import PairStats, generate_pairs
    from idweave.linkage.project import project_rules, with_rids
    from idweave.linkage.sources import load_records

    proj = _project(path)
    t0 = time.perf_counter()
    records = with_rids(load_records(proj))
    t1 = time.perf_counter()
    rules = project_rules(proj, records)
    stats = PairStats()
    pairs = generate_pairs(records, rules, stats=stats)
    t2 = time.perf_counter()
    truth = pl.read_parquet(path, columns=["unique_id", "cluster", "copy"]).with_columns(pl.col("unique_id").cast(pl.Utf8))
    cl = records.select("rid", "record_id").join(truth, left_on="record_id", right_on="unique_id")
    recall, true_pairs = _recall(pairs, cl.select("rid", "cluster"), pl)
    recall0, _ = _recall(pairs, cl.filter(pl.col("copy") == 0).select("rid", "cluster"), pl)
    n = records.height
    return {"records": n, "rules": len(rules), "sharpening_rules": sum(getattr(r, "sharpens", None) is not None
                                                                       for r in rules),
            "pairs": pairs.height, "pairs_per_record": pairs.height / n, "pairs_made": sum(stats.raw),
            "true_pairs": true_pairs, "recall": recall, "copy0_recall": recall0,
            "load_s": t1 - t0, "block_s": t2 - t1,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def measure_per_copy(path: str) -> dict:
    """The 50k figure of the same kind of data: each copy of the scaled file blocked on its
    own (its ~50k records, the rules derived for that size), recall and pairs per record
    averaged over the copies. The copies other than the original are harder to block than
    historical_50k itself (re-drawn values, more distinct surnames), so the recall of the
    larger data is compared with this, and copy-0 recall with the original's."""
    import polars as pl

    from idweave.blocking import generate_pairs
    from idweave.linkage.project import project_rules, with_rids
    from idweave.linkage.sources import load_records

    proj = _project(path)
    records = with_rids(load_records(proj))
    truth = pl.read_parquet(path, columns=["unique_id", "cluster", "copy"]).with_columns(pl.col("unique_id").cast(pl.Utf8))
    records = records.join(truth, left_on="record_id", right_on="unique_id")
    recalls, pprs, total = [], [], 0
    for c in sorted(records["copy"].unique().to_list()):
        one = (records.filter(pl.col("copy") == c).sort("rid").drop("rid").with_row_index("rid")
               .with_columns(pl.col("rid").cast(pl.Int64)))
        pairs = generate_pairs(one.drop("cluster", "copy"), project_rules(proj, one.drop("cluster", "copy")))
        recalls.append(_recall(pairs, one.select("rid", "cluster"), pl)[0])
        pprs.append(pairs.height / one.height)
        total += pairs.height
    return {"records": records.height, "copies": len(recalls), "pairs": total, "pairs_per_record": statistics.mean(pprs),
            "recall": statistics.mean(recalls), "recall_min": min(recalls), "recall_max": max(recalls),
            "block_s": 0.0, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def measure_splink(path: str) -> dict:
    """The pairs of Splink's historical_50k demo blocking rules, made by Splink itself."""
    import duckdb
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator

    sys.path.insert(0, str(HERE))
    from splink_demos import HIST50K_BLOCKING

    df = pd.read_parquet(path, columns=["unique_id", "cluster", "first_name", "surname", "dob", "birth_place",
                                        "postcode_fake"])
    df["unique_id"] = df["unique_id"].astype(str)
    t0 = time.perf_counter()
    con = duckdb.connect()
    db = DuckDBAPI(connection=con)
    linker = Linker(db.register(df.drop(columns=["cluster"])),
                    SettingsCreator(link_type="dedupe_only", blocking_rules_to_generate_predictions=HIST50K_BLOCKING,
                                    comparisons=[cl.ExactMatch("surname")]))
    blocked = linker.inference.compute_blocked_pairs_for_predict().as_duckdbpyrelation()
    n_pairs = blocked.count("*").fetchall()[0][0]
    t1 = time.perf_counter()
    truth = df[["unique_id", "cluster"]]
    con.register("_truth", truth)
    blocked.create_view("_blocked")
    # join keys are the record ids, prefixed by the input's name and "-__-" when Splink adds it
    hit = con.execute("""
        select count(*) from _blocked b
        join _truth l on l.unique_id = regexp_replace(cast(b.join_key_l as varchar), '^.*-__-', '')
        join _truth r on r.unique_id = regexp_replace(cast(b.join_key_r as varchar), '^.*-__-', '')
        where l.cluster = r.cluster""").fetchall()[0][0]
    sizes = df.groupby("cluster").size()
    total = int((sizes * (sizes - 1) // 2).sum())
    return {"records": len(df), "pairs": int(n_pairs), "pairs_per_record": n_pairs / len(df),
            "recall": hit / total, "block_s": t1 - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def _child(tool: str, path: str, code: str | None, memory_gb: float) -> dict:
    """Run one measurement in a fresh process (limited to ``memory_gb`` of address space)."""
    env = dict(os.environ)
    if code:
        # Put the other checkout's packages first: idweave is a namespace of four folders.
        shim = Path(tempfile.mkdtemp(prefix="idweave-before-")) / "idweave"
        shim.mkdir()
        for sub in ("linkage", "blocking", "cli", "web"):
            (shim / sub).symlink_to(Path(code).resolve() / sub)
        env["PYTHONPATH"] = str(shim.parent) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", tool, path]
    limit = int(memory_gb * 1024 ** 3)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    p = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=cap)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"failed": f"exit {p.returncode}: {tail}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals) if vals else None


def table(results: list[dict]) -> str:
    """The Markdown table of a run's results (rows as ``main`` collects them)."""
    lines = ["| records | tool | pairs | pairs/record | blocking recall | copy-0 recall | rules (sharpening) "
             "| block s (median, spread) | peak RSS GB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "failed" in r:
            lines.append(f"| x{r['copies']} | {r['tool']} | failed: {r['failed']} | | | | | | |")
            continue
        rules = (f"{r['rules']} ({r['sharpening_rules']})" if "rules" in r else
                 f"{r['copies']} x 50k (recall {r['recall_min']:.4f}-{r['recall_max']:.4f})" if "recall_min" in r else "10")
        c0 = f"{r['copy0_recall']:.4f}" if "copy0_recall" in r else ""
        lines.append(f"| {r['records']:,} | {r['tool']} | {r['pairs']:,} | {r['pairs_per_record']:.1f} | {r['recall']:.4f} "
                     f"| {c0} | {rules} | {r['block_s_median']:.1f} ({r['block_s_spread']:.1f}) "
                     f"| {r['peak_rss_gb_median']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--copies", default="1,4,20", help="sizes, as copies of historical_50k (default 1,4,20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per size and tool (medians reported)")
    ap.add_argument("--before", help="another idweave checkout to measure the same way (the code before a change)")
    ap.add_argument("--no-splink", action="store_true", help="leave out Splink's demo rules")
    ap.add_argument("--per-copy", action="store_true",
                    help="also each copy blocked on its own (the 50k figure of the same kind of data)")
    ap.add_argument("--memory-gb", type=float, default=17.0, help="address-space limit of each measurement")
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "idweave-blocking-scale"))
    ap.add_argument("--json-out")
    a = ap.parse_args(argv)
    if a.child:
        tool, path = a.child
        measure = {"splink": measure_splink, "per-copy": measure_per_copy}.get(tool, measure_idweave)
        print(json.dumps(measure(path)))
        return 0
    data_dir = Path(a.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tools = [("idweave", None)] + ([("idweave before", a.before)] if a.before else []) + \
        ([] if a.no_splink else [("splink demo rules", None)]) + ([("each copy alone", None)] if a.per_copy else [])
    results = []
    for copies in [int(c) for c in a.copies.split(",")]:
        path = str(data_file(copies, data_dir))
        for name, code in tools:
            runs = []
            for _ in range(1 if name == "each copy alone" else a.repeats):
                tool = "splink" if name.startswith("splink") else "per-copy" if name == "each copy alone" else "idweave"
                r = _child(tool, path, code, a.memory_gb)
                runs.append(r)
                if "failed" in r:
                    break
                print(f"  {name} x{copies}: {json.dumps(r)}", file=sys.stderr, flush=True)
            ok = [r for r in runs if "failed" not in r]
            row = {"copies": copies, "tool": name, "runs": runs}
            if ok:
                row.update({k: ok[0][k] for k in ok[0] if k not in ("block_s", "load_s", "peak_rss_gb")})
                row["block_s_median"] = _median(ok, "block_s")
                row["block_s_spread"] = max(r["block_s"] for r in ok) - min(r["block_s"] for r in ok)
                row["peak_rss_gb_median"] = _median(ok, "peak_rss_gb")
            else:
                row["failed"] = runs[0]["failed"]
            results.append(row)
    print(table(results))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
