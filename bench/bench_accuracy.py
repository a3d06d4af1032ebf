"""Accuracy benchmark: idweave vs Splink (its own demo settings) vs recordlinkage, same data,
one process.

    python bench/bench_accuracy.py [--datasets febrl3,febrl4,fake1000,hist50k]
                                   [--tools idweave,splink,recordlinkage] [--json-out FILE]

For every (tool, dataset) it prints one JSON line, then a table, then one JSON line with
everything (also written to ``--json-out``, default ``bench/out/accuracy_<date>.json``).

What is measured, identically for every tool (scored with /work/shared/checks/metrics.py, the
tool-independent scorer the project is judged with):

* cluster pairwise precision / recall / F1 and B-cubed F1 of the tool's own clusters (records a
  tool does not return count as singletons). FEBRL4 is link-only: only cross-source pairs count
  in the pairwise figures.
* candidate pairs (unique unordered pairs the tool's blocking produced), pairs per record, and
  blocking pair recall (share of all true pairs among the candidates).
* wall seconds per stage (blocking / training / scoring / clustering, plus tool-specific extras
  such as loading or writing the store) and in total.
* memory: the process's peak resident set size sampled every 10 ms in a thread while the tool
  runs, and that peak minus the RSS when the tool started (see ``_harness.PeakRSS`` for what this
  does and does not capture; ``--isolate`` runs each pair in a fresh process).
* diagnostics: pairwise P/R/F1 of the tool's scored pairs at its own threshold (before transitive
  closure), the best pairwise F1 over the tool's pair scores at any threshold, and the cluster
  metrics the bench gets by taking connected components of the tool's pairs at fixed thresholds
  (independent of the tool's own clustering, only where the tool kept the scores).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules (this folder is not a package)

from _harness import STAGES, PeakRSS, ToolRun, machine  # noqa: E402
from datasets import CHECKS_DIR, DATASETS, BenchDataset, check_against_score_py, load  # noqa: E402


def _load_metrics():
    """Import /work/shared/checks/metrics.py by path: it must be the judged scorer, not a copy."""
    spec = importlib.util.spec_from_file_location("_idweave_metrics", CHECKS_DIR / "metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


metrics = _load_metrics()

TOOLS = ("idweave", "splink", "recordlinkage")
#: thresholds at which the bench re-clusters each tool's pairs (connected components) as a diagnostic
DIAG_THRESHOLDS = (0.2, 0.5, 0.9, 0.95, 0.99)
_SEP = "\x1f"  # joins source and record id into one key; cannot occur in either


class NotAvailable(Exception):
    """A tool cannot run in this environment (e.g. idweave not importable yet)."""


# ---------------------------------------------------------------------------------------------
# adapters: (dataset, options) -> ToolRun
# ---------------------------------------------------------------------------------------------
# idweave's stage names -> the bench's; the others (load, store) are kept under their own names
_IDWEAVE_STAGES = {"block": "blocking", "train": "training", "score": "scoring", "cluster": "clustering"}


def run_idweave(ds: BenchDataset, opts: argparse.Namespace) -> ToolRun:
    """idweave with only attributes and kinds written (the project dict of score.py).

    Contract: ``link(project, *, sources, store, ...)`` returns ``entities`` (source, record_id,
    entity_id), ``pairs`` (every scored candidate pair), ``timings`` and ``summary``. The source
    files are also written into a temporary directory (``base_dir``) so that the project is valid
    as a file-based project too; ``--idweave-input files`` reads them instead of the frames.
    """
    try:
        from idweave.linkage import link
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        raise NotAvailable(f"{type(exc).__name__}: {exc}") from exc
    import polars as pl

    with tempfile.TemporaryDirectory(prefix=f"idweave-bench-{ds.name}-") as tmp:
        t0 = time.perf_counter()
        work = ds.write_files(Path(tmp))
        # bench overhead inside the measured window: reported so "total" can be read without it
        write_seconds = time.perf_counter() - t0
        store = work / "store.duckdb"
        project = copy.deepcopy(ds.project)
        project["store"] = str(store)
        project["base_dir"] = str(work)
        frames = None
        if opts.idweave_input == "frames":
            frames = {name: pl.from_pandas(frame) for name, frame in ds.frames.items()}
        result = link(project, sources=frames, store=store)
        entities = result.entities.to_pandas()
        pairs = result.pairs.to_pandas()
    timings = {_IDWEAVE_STAGES.get(k, k): float(v) for k, v in result.timings.items()}
    timings["bench_write_files"] = write_seconds
    summary = result.summary
    config = {k: summary.get(k) for k in ("rules", "pairs_per_rule", "candidate_pairs", "threshold",
                                          "threshold_chosen", "clustering", "model_version",
                                          "training_log") if k in summary}
    config["pairs_rows_returned"] = len(pairs)  # contract: one row per scored candidate pair
    config["input"] = opts.idweave_input
    return ToolRun(
        entities=pd.DataFrame({"source": entities["source"].astype(str),
                               "record_id": entities["record_id"].astype(str),
                               "cluster_id": entities["entity_id"].astype(str)}),
        pairs=pairs[["source_l", "record_id_l", "source_r", "record_id_r", "match_probability"]],
        timings=timings, threshold=summary.get("threshold"), config=config)


def run_splink(ds: BenchDataset, opts: argparse.Namespace) -> ToolRun:
    """Splink 5 with the settings of Splink's own demo for the dataset (see splink_demos.py)."""
    import splink_demos

    return splink_demos.run(ds, u_seed=opts.splink_seed)


def run_recordlinkage(ds: BenchDataset, opts: argparse.Namespace) -> ToolRun:
    """recordlinkage: three indexing passes, binary comparisons, ECM, connected components."""
    try:
        import recordlinkage_baseline
    except ImportError as exc:
        raise NotAvailable(f"{type(exc).__name__}: {exc}") from exc
    return recordlinkage_baseline.run_baseline(ds)


ADAPTERS: dict[str, Callable[[BenchDataset, argparse.Namespace], ToolRun]] = {
    "idweave": run_idweave, "splink": run_splink, "recordlinkage": run_recordlinkage}


# ---------------------------------------------------------------------------------------------
# scoring: the same code path for every tool
# ---------------------------------------------------------------------------------------------
def _keys(source: pd.Series, record_id: pd.Series) -> np.ndarray:
    return (source.astype(str) + _SEP + record_id.astype(str)).to_numpy()


def evaluate(ds: BenchDataset, run: ToolRun) -> dict[str, Any]:
    """Score one ToolRun against the truth with metrics.py; return a flat dict of figures."""
    truth = ds.truth
    truth_keys = _keys(truth.source, truth.record_id)
    n = len(truth)
    out: dict[str, Any] = {"records": n}

    # --- clusters -----------------------------------------------------------------------------
    ent = run.entities
    ent_keys = pd.Series(ent["cluster_id"].astype(str).to_numpy(), index=_keys(ent.source, ent.record_id))
    out["records_duplicated_in_output"] = int(ent_keys.index.duplicated().sum())
    ent_keys = ent_keys[~ent_keys.index.duplicated()]
    pred = ent_keys.reindex(truth_keys)
    out["records_missing_from_output"] = int(pred.isna().sum())
    out["records_unknown_in_output"] = int((~ent_keys.index.isin(truth_keys)).sum())
    # a record the tool did not return is its own cluster (as score.py scores an export)
    pred = pred.fillna(pd.Series("missing" + _SEP + pd.Series(truth_keys), index=truth_keys))
    cm = metrics.cluster_metrics(pred.to_numpy(), truth.person.to_numpy(),
                                 source=truth.source.to_numpy(), link_only=ds.link_only)
    out.update({f"cluster_{k}" if not k.startswith(("pairwise", "bcubed")) else k: v
                for k, v in cm.items() if k != "n_records"})

    # --- candidate pairs and blocking recall --------------------------------------------------
    n_true = metrics.count_true_pairs(truth.person.to_numpy(), source=truth.source.to_numpy(),
                                      link_only=ds.link_only)
    pairs = run.pairs
    kl = _keys(pairs.source_l, pairs.record_id_l)
    kr = _keys(pairs.source_r, pairs.record_id_r)
    # NaN = not scored by the tool (below its predict threshold): keep the pair, score it -1
    score = pairs["match_probability"].astype(float).fillna(-1.0).to_numpy()
    uniq = metrics.dedupe_pair_frame(kl, kr, score)
    known = pd.Index(truth_keys)
    ok = known.get_indexer(uniq.l) >= 0
    ok &= known.get_indexer(uniq.r) >= 0
    out["pairs_unknown_record"] = int((~ok).sum())
    uniq = uniq[ok]
    is_match = metrics.label_pairs(uniq.l, uniq.r, truth_keys, truth.person.to_numpy())
    if ds.link_only:  # a same-source pair can never be a true pair of a link-only task
        is_match &= uniq.l.str.split(_SEP).str[0].to_numpy() != uniq.r.str.split(_SEP).str[0].to_numpy()
    br = metrics.blocking_recall(is_match, n_true)
    out["candidate_pairs"] = br["candidate_pairs"]
    out["pairs_per_record"] = br["candidate_pairs"] / n
    out["blocking_pair_recall"] = br["blocking_pair_recall"]
    out["true_pairs_in_candidates"] = br["true_pairs_in_candidates"]
    out["true_pairs"] = n_true

    # --- diagnostics: the scores, independent of the tool's clustering ------------------------
    scored = uniq.score.to_numpy() >= 0
    min_scored = float(uniq.score[scored].min()) if scored.any() else None
    best = metrics.pair_sweep(np.where(scored, uniq.score.to_numpy(), 0.0), is_match, n_true)
    out["diag_best_pairwise"] = {k: best[k] for k in ("threshold", "precision", "recall", "f1")}
    if run.threshold is not None:  # the tool's own threshold on the pairs, before transitive closure
        at = metrics.pair_metrics_at(uniq.score.to_numpy(), is_match, n_true, run.threshold)
        out["diag_pairwise_at_threshold"] = {k: at[k] for k in ("precision", "recall", "f1")}
    cc: dict[str, Any] = {}
    thresholds = sorted(set(DIAG_THRESHOLDS) | ({run.threshold} if run.threshold is not None else set()))
    for t in thresholds:
        # a tool that dropped pairs scored below some p cannot be re-clustered below that p
        if min_scored is None or (run.config.get("predict_threshold") or 0.0) > t:
            continue
        keep = uniq.score.to_numpy() >= t
        labels = metrics.connected_components(truth_keys, uniq.l[keep], uniq.r[keep])
        m = metrics.cluster_metrics(labels, truth.person.to_numpy(), source=truth.source.to_numpy(),
                                    link_only=ds.link_only)
        cc[str(t)] = {k: m[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_f1")}
    out["diag_cc_at"] = cc
    return out


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4) if np.isfinite(obj) else None
    if isinstance(obj, (np.floating,)):
        return _round(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def run_one(ds: BenchDataset, tool: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Run and score one tool on one dataset; never raises (errors go into the result)."""
    row: dict[str, Any] = {"tool": tool, "dataset": ds.name}
    proc = psutil.Process()
    try:
        with PeakRSS() as mem:
            cpu0 = proc.cpu_times()
            t0 = time.perf_counter()
            run = ADAPTERS[tool](ds, opts)
            wall = time.perf_counter() - t0
            cpu1 = proc.cpu_times()
    except NotAvailable as exc:
        print(f"{tool}: not available: {exc}", file=sys.stderr)
        row.update(status="not available", reason=str(exc))
        return row
    except Exception as exc:  # noqa: BLE001 - one broken tool must not stop the others
        print(f"{tool} on {ds.name}: failed: {exc!r}", file=sys.stderr)
        row.update(status="failed", reason=repr(exc), traceback=traceback.format_exc(limit=8))
        return row
    row["status"] = "ok"
    row["threshold"] = run.threshold
    row.update(evaluate(ds, run))
    row["seconds"] = {**{s: run.timings.get(s) for s in STAGES},
                      **{k: v for k, v in run.timings.items() if k not in STAGES}, "total": wall}
    # CPU seconds of this process (all threads): less sensitive than wall time to other load on
    # the machine, and shows how much of the wall time a tool spends in parallel work
    row["cpu_seconds"] = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    row["memory"] = mem.as_dict()
    row["config"] = run.config
    return _round(row)


def run_isolated(ds_name: str, tool: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Run one (tool, dataset) in a fresh interpreter so its memory figures stand alone."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--datasets", ds_name, "--tools", tool,
           "--json-out", str(out), "--quiet", "--idweave-input", opts.idweave_input,
           "--splink-seed", str(opts.splink_seed)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.stat().st_size:
            return {"tool": tool, "dataset": ds_name, "status": "failed",
                    "reason": proc.stderr[-2000:]}
        return json.loads(out.read_text())["results"][0]
    finally:
        out.unlink(missing_ok=True)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    """A table per dataset and tool (rich if installed, plain text otherwise)."""
    head = ["dataset", "tool", "thr", "pw P", "pw R", "pw F1", "B3 F1", "pairs", "pairs/rec",
            "block R", "block s", "train s", "score s", "clust s", "total s", "cpu s", "peak MB", "+MB"]
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append([r["dataset"], r["tool"], r.get("status", "?")] + [""] * (len(head) - 3))
            continue
        s, m = r["seconds"], r["memory"]
        body.append([r["dataset"], r["tool"], _fmt(r["threshold"], ".2f"),
                     _fmt(r["pairwise_precision"], ".4f"), _fmt(r["pairwise_recall"], ".4f"),
                     _fmt(r["pairwise_f1"], ".4f"), _fmt(r["bcubed_f1"], ".4f"),
                     _fmt(r["candidate_pairs"], ","), _fmt(r["pairs_per_record"], ".1f"),
                     _fmt(r["blocking_pair_recall"], ".4f"),
                     *[_fmt(s.get(k), ".2f") for k in STAGES], _fmt(s["total"], ".2f"),
                     _fmt(r.get("cpu_seconds"), ".1f"),
                     _fmt(m["rss_peak_mb"], ".0f"), _fmt(m["rss_peak_delta_mb"], ".0f")])
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        for line in [head, *body]:
            print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
        return
    table = Table(title="accuracy benchmark (pw = cluster pairwise, B3 = B-cubed)")
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < 2 else "right")
    for line in body:
        table.add_row(*[str(x) for x in line])
    Console(width=220).print(table)


def _preimport(tools: list[str]) -> None:
    """Import every tool's modules before any measurement: otherwise the first tool run pays
    for importing splink/duckdb/polars (~100 MB of RSS, a second of wall time) and later ones
    do not. A failed import is left for the adapter to report as "not available"."""
    modules = {"idweave": ["idweave.linkage"], "splink": ["splink_demos"],
               "recordlinkage": ["recordlinkage_baseline"]}
    for tool in tools:
        for mod in modules[tool]:
            try:
                importlib.import_module(mod)
            except Exception:  # noqa: BLE001 - reported by the adapter, with the reason
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma list of " + ", ".join(DATASETS))
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of " + ", ".join(TOOLS))
    ap.add_argument("--json-out", default=None,
                    help="where to write all results (default bench/out/accuracy_<date>.json)")
    ap.add_argument("--isolate", action="store_true",
                    help="run each (tool, dataset) in a fresh process (cleaner memory figures)")
    ap.add_argument("--idweave-input", choices=("frames", "files"), default="frames",
                    help="hand idweave in-memory frames (default) or let it read the written files")
    ap.add_argument("--splink-seed", default="demo",
                    help="u-sampling seed: 'demo' = each demo's own (only febrl3 sets one, 2), "
                         "'none', or an integer for all demos")
    ap.add_argument("--quiet", action="store_true", help="no table, no per-run lines (for --isolate)")
    opts = ap.parse_args(argv)
    if opts.splink_seed not in ("demo", "none"):
        opts.splink_seed = int(opts.splink_seed)
    elif opts.splink_seed == "none":
        opts.splink_seed = None
    names = [d.strip() for d in opts.datasets.split(",") if d.strip()]
    tools = [t.strip() for t in opts.tools.split(",") if t.strip()]
    for bad in [d for d in names if d not in DATASETS] + [t for t in tools if t not in TOOLS]:
        ap.error(f"unknown dataset or tool {bad!r}")

    _preimport(tools)
    started = dt.datetime.now()
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    prep: dict[str, list[str]] = {}
    unavailable: set[str] = set()
    for name in names:
        ds = load(name)
        prep[name] = check_against_score_py(ds)
        if prep[name]:
            print(f"{name}: preparation differs from score.py: {prep[name]}", file=sys.stderr)
        if opts.isolate:  # the children load their own copy; keep the parent small
            ds = None
        for tool in tools:
            if tool in unavailable:  # say it once, not once per dataset
                rows.append({"tool": tool, "dataset": name, "status": "not available"})
                continue
            row = run_isolated(name, tool, opts) if opts.isolate else run_one(ds, tool, opts)
            if row.get("status") == "not available":
                unavailable.add(tool)
            rows.append(row)
            if not opts.quiet:
                print(json.dumps(row), flush=True)
        del ds

    cmd = "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    everything = _round({
        "benchmark": "accuracy", "started": started.isoformat(timespec="seconds"),
        "command": cmd, "machine": machine(), "isolated": opts.isolate,
        # other work on the machine inflates wall times; the 1/5/15-minute load averages say how much
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "memory_note": "RSS of this process sampled every 10 ms while the tool ran; "
                       "delta = peak - RSS at start" + ("" if opts.isolate else
                       " (one process: allocator reuse can understate later runs' delta)"),
        "preparation_vs_score_py": prep, "results": rows})
    if not opts.quiet:
        print_table(rows)
        print(json.dumps(everything))
    out = Path(opts.json_out) if opts.json_out else HERE / "out" / f"accuracy_{started:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(everything, indent=1))
    if not opts.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
