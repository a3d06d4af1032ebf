"""Population registers with households: idweave (kinds only) beside Splink 5 (demo-style).

Builds four registries of pseudopeople's sample town (``registries.py``: census, social
security, W-2/1099, 1040; each with its own ids, column names and date format) for every seed
and noise level asked for, then in one process per setting:

* idweave with only attributes and kinds written (``registries.ATTRIBUTES``), at the threshold
  it chooses itself;
* Splink 5 with a configuration in the style of Splink's pseudopeople demo
  (``docs/demos/examples/duckdb_no_test/pseudopeople-acs.nb.py``: exact-field blocking rules,
  NameComparison with Jaro-Winkler 0.9 and term frequencies, exact middle initial,
  Damerau-Levenshtein date of birth and address, exact sex; u by random sampling, EM blocked on
  date of birth then last name; clusters at the demo's 0.99), plus an SSN comparison and rule as
  an expert would add for these registers; Splink's F1 is reported at 0.99 and at the best
  threshold of a sweep (connected components, as Splink clusters).

Scores: cluster pairwise precision / recall / F1 and B-cubed F1 (``shared/checks/metrics.py``),
and household false merges: pairs of different people of one household placed in one entity,
as a share of all predicted pairs. Prints a table and writes a JSON file.

    python bench/bench_households.py --seeds 0,1,2 --noise 1,2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "shared" / "checks"))

import metrics  # noqa: E402  (shared/checks/metrics.py)
from _harness import PeakRSS, machine  # noqa: E402
from registries import Town, build  # noqa: E402

SWEEP = (0.5, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 0.99999, 0.999999)
DEMO_THRESHOLD = 0.99


def household_merges(entity: np.ndarray, person: np.ndarray, household: np.ndarray) -> dict[str, int]:
    """Predicted pairs, and those joining two different people of one household."""
    df = pd.DataFrame({"e": pd.factorize(entity)[0], "p": pd.factorize(person)[0],
                       "h": pd.factorize(household)[0]})
    c2 = lambda n: n * (n - 1) // 2  # noqa: E731
    pred = int(c2(df.groupby("e").size()).sum())
    same_h = int(c2(df.groupby(["e", "h"]).size()).sum())
    same_p = int(c2(df.groupby(["e", "h", "p"]).size()).sum())
    return {"predicted_pairs": pred, "household_false_pairs": same_h - same_p}


def score(town: Town, keys: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    """Cluster metrics of one partition (``keys`` "source|record_id" -> cluster)."""
    truth = town.truth
    tkeys = (truth.source + "|" + truth.record_id).to_numpy()
    pred = pd.Series(clusters, index=keys).reindex(tkeys)
    pred = pred.fillna(pd.Series("single|" + tkeys, index=tkeys)).astype(str).to_numpy()
    m = metrics.cluster_metrics(pred, truth.person.to_numpy())
    h = household_merges(pred, truth.person.to_numpy(), truth.household.to_numpy())
    out = {k: m[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1", "bcubed_f1")}
    out["household_false_share"] = h["household_false_pairs"] / max(h["predicted_pairs"], 1)
    out["household_false_pairs"] = h["household_false_pairs"]
    out["predicted_pairs"] = h["predicted_pairs"]
    return out


# ---------------------------------------------------------------------------------------------
# idweave
# ---------------------------------------------------------------------------------------------
def run_idweave(town: Town) -> dict[str, Any]:
    import polars as pl

    from idweave.linkage import link

    with tempfile.TemporaryDirectory(prefix="idweave-hh-") as tmp:
        work = town.write_files(Path(tmp))
        project = dict(town.project, store=str(work / "store.duckdb"), base_dir=str(work))
        t0 = time.perf_counter()
        with PeakRSS() as rss:
            result = link(project)
        seconds = time.perf_counter() - t0
    ent = result.entities.to_pandas()
    keys = (ent.source.astype(str) + "|" + ent.record_id.astype(str)).to_numpy()
    out = score(town, keys, ent.entity_id.astype(str).to_numpy())
    out.update(tool="idweave", seconds=seconds, threshold=result.summary.get("threshold"),
               candidate_pairs=result.summary.get("candidate_pairs"), peak_rss_mb=round(rss.peak_bytes / 2**20),
               single_listing=result.summary.get("single_listing"),
               timings={k: round(float(v), 2) for k, v in result.timings.items()})
    return out


# ---------------------------------------------------------------------------------------------
# Splink, demo style
# ---------------------------------------------------------------------------------------------
def _splink_frame(town: Town) -> pd.DataFrame:
    """One table of every record in canonical columns (the demo's own preparation: trimmed text)."""
    rows = []
    for src, frame in town.frames.items():
        spec = town.project["sources"][src]
        cols = spec["columns"]
        df = pd.DataFrame({"unique_id": src + "|" + frame[spec["id"]].astype(str)})
        for attr in ("first_name", "middle_name", "last_name", "birth_date", "sex", "ssn", "address"):
            df[attr] = frame[cols[attr]].astype("string").str.strip().str.lower() if attr in cols else None
        if "birth_date" in cols:
            df["birth_date"] = pd.to_datetime(frame[cols["birth_date"]], format=spec["date_format"],
                                              errors="coerce").dt.strftime("%Y-%m-%d")
        rows.append(df)
    out = pd.concat(rows, ignore_index=True)
    out["middle_initial"] = out["middle_name"].str[:1]
    out["birth_year"] = out["birth_date"].str[:4]
    return out.drop(columns=["middle_name"]).astype(object).where(out.drop(columns=["middle_name"]).notna(), None)


def run_splink(town: Town) -> dict[str, Any]:
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    df = _splink_frame(town)
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        rules = [block_on("first_name"), block_on("last_name"), block_on("birth_date"),
                 block_on("address"), block_on("ssn"), block_on("birth_year", "sex"),
                 block_on("birth_year", "middle_initial")]
        settings = SettingsCreator(
            unique_id_column_name="unique_id", link_type="dedupe_only",
            blocking_rules_to_generate_predictions=rules,
            comparisons=[
                cl.NameComparison("first_name", jaro_winkler_thresholds=[0.9]).configure(
                    term_frequency_adjustments=True),
                cl.ExactMatch("middle_initial").configure(term_frequency_adjustments=True),
                cl.NameComparison("last_name", jaro_winkler_thresholds=[0.9]).configure(
                    term_frequency_adjustments=True),
                cl.DamerauLevenshteinAtThresholds("birth_date", distance_threshold_or_thresholds=[1]),
                cl.DamerauLevenshteinAtThresholds("address").configure(term_frequency_adjustments=True),
                cl.ExactMatch("sex"),
                cl.DamerauLevenshteinAtThresholds("ssn", distance_threshold_or_thresholds=[1]),
            ],
            retain_intermediate_calculation_columns=False)
        db_api = DuckDBAPI()
        linker = Linker(db_api.register(df), settings, log_level=logging.WARNING)
        linker.training.estimate_probability_two_random_records_match(
            [block_on("ssn"), block_on("first_name", "last_name", "birth_date")], recall=0.8)
        linker.training.estimate_u_using_random_sampling(max_pairs=1e6, seed=1)
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on("birth_date"), estimate_without_term_frequencies=True)
        linker.training.estimate_parameters_using_expectation_maximisation(
            block_on("last_name"), estimate_without_term_frequencies=True)
        predictions = linker.inference.predict()
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=DEMO_THRESHOLD).as_pandas_dataframe()
    seconds = time.perf_counter() - t0
    pairs = predictions.as_duckdbpyrelation().select("unique_id_l, unique_id_r, match_probability").df()
    db_api.duckdb_con.close()
    out = score(town, clusters.unique_id.astype(str).to_numpy(), clusters.cluster_id.astype(str).to_numpy())
    keys = df.unique_id.to_numpy()
    sweep = {}
    for t in SWEEP:
        keep = pairs.match_probability.to_numpy() >= t
        labels = metrics.connected_components(keys, pairs.unique_id_l.to_numpy()[keep],
                                              pairs.unique_id_r.to_numpy()[keep])
        sweep[str(t)] = score(town, keys, labels.astype(str))
    best_t = max(sweep, key=lambda t: sweep[t]["pairwise_f1"])
    out.update(tool="splink", seconds=seconds, threshold=DEMO_THRESHOLD, candidate_pairs=len(pairs),
               peak_rss_mb=round(rss.peak_bytes / 2**20), best_threshold=float(best_t), best=sweep[best_t],
               sweep={t: {k: round(v, 4) for k, v in s.items() if k in ("pairwise_f1", "pairwise_precision")}
                      for t, s in sweep.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--noise", default="1,2", help="cell-noise multipliers of pseudopeople's defaults")
    ap.add_argument("--tools", default="idweave,splink")
    ap.add_argument("--json-out", default=None)
    opts = ap.parse_args(argv)
    seeds = [int(s) for s in opts.seeds.split(",")]
    noises = [float(n) for n in opts.noise.split(",")]
    tools = opts.tools.split(",")
    started = dt.datetime.now(dt.timezone.utc)
    rows = []
    for noise in noises:
        for seed in seeds:
            town = build(seed=seed, noise=noise)
            for tool in tools:
                r = run_idweave(town) if tool == "idweave" else run_splink(town)
                r.update(seed=seed, noise=noise, records=town.n_records,
                         people=int(town.truth.person.nunique()))
                rows.append(r)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                  if k not in ("sweep", "timings")}), flush=True)
    print()
    print("| noise | seed | tool | threshold | pairwise P | pairwise R | pairwise F1 | B-cubed F1 | "
          "household false share | best-sweep F1 (t) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = f"{r['best']['pairwise_f1']:.4f} ({r['best_threshold']:g})" if "best" in r else ""
        print(f"| {r['noise']:g} | {r['seed']} | {r['tool']} | {r['threshold']:.4g} | {r['pairwise_precision']:.4f} | "
              f"{r['pairwise_recall']:.4f} | {r['pairwise_f1']:.4f} | {r['bcubed_f1']:.4f} | "
              f"{r['household_false_share']:.2%} | {best} | {r['seconds']:.1f} |")
    cmd = "python " + " ".join([os.path.relpath(__file__), *(argv if argv is not None else sys.argv[1:])])
    doc = {"benchmark": "households", "started": started.isoformat(timespec="seconds"), "command": cmd,
           "machine": machine(), "results": rows}
    out = Path(opts.json_out) if opts.json_out else HERE / "out" / f"households_{started:%Y-%m-%dT%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
