"""Scoring throughput of the engines (issue 17): the same model and the same candidate pairs
scored on DuckDB (2 threads, idweave's compiled path), on Spark ``local[2]`` (Splink's
``predict`` with idweave's UDFs, which give DuckDB's levels) and on Spark with Splink's own
jar functions in their place (Splink-on-Spark's own predict; its Jaro-Winkler differs from
DuckDB's, so this is a speed reference only), in pairs scored per second per core.

    python bench/bench_engines.py [--data PARQUET] [--runs 3] [--cores 2]

The data default is historical_50k; the model is trained once on DuckDB; the pairs are
idweave's derived blocking. One Spark session is made before timing (its start-up is reported
apart). Prints one JSON object: per engine each run's seconds, the median and the spread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

DEFAULT = Path("/work/shared/datasets/historical_figures_with_errors_50k.parquet")
ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date", "birth_place": "city",
         "postcode_fake": "postcode", "gender": "sex", "occupation": "category"}


def _timed(fn, runs: int) -> dict:
    secs = []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        secs.append(time.perf_counter() - t)
    return {"runs_s": [round(s, 2) for s in secs], "median_s": round(statistics.median(secs), 2),
            "spread_s": round(max(secs) - min(secs), 2), "rows": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()

    import polars as pl

    from idweave.blocking import generate_pairs
    from idweave.linkage import _splink, engine
    from idweave.linkage.comparisons import input_columns, prepare
    from idweave.linkage.project import project_from_dict, project_rules, with_rids
    from idweave.linkage.scoring import score_pairs
    from idweave.linkage.sources import load_records
    from idweave.linkage.training import train

    proj = project_from_dict({"attributes": ATTRS, "store": str(Path(tempfile.gettempdir()) / "unused.duckdb"),
                              "sources": {"people": {"path": str(args.data), "id": "unique_id",
                                                     "columns": {a: a for a in ATTRS}}}})
    records = with_rids(load_records(proj))
    pairs = generate_pairs(records, project_rules(proj, records))
    t = time.perf_counter()
    model = train(records, proj)
    train_s = time.perf_counter() - t
    out: dict = {"data": str(args.data), "records": records.height, "pairs": pairs.height,
                 "duckdb_train_s": round(train_s, 1), "cores": args.cores,
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": f"{platform.machine()}, {args.cores} shared cores (other jobs running)"}

    out["duckdb"] = _timed(lambda: score_pairs(records, pairs, model).height, args.runs)

    t = time.perf_counter()
    spark = engine.get_engine("spark", master=f"local[{args.cores}]")
    with spark.session("start"):
        pass
    out["spark_start_s"] = round(time.perf_counter() - t, 1)
    out["spark_idweave"] = _timed(lambda: score_pairs(records, pairs, model, engine=spark).height, args.runs)

    # Splink-on-Spark's own predict: the same model with the jar's functions in place of idweave's.
    own = engine.render_settings(model.settings, "spark")
    for c in own["comparisons"]:
        for lv in c["comparison_levels"]:
            lv["sql_condition"] = (lv["sql_condition"].replace(engine.JW_UDF.upper(), "jaro_winkler")
                                   .replace(engine.DL_UDF.upper(), "damerau_levenshtein"))
    recs = prepare(records, input_columns(model.settings))
    blocked = pairs.select(pl.col("rid_l").alias("join_key_l"), pl.col("rid_r").alias("join_key_r"),
                           pl.col("rule").cast(pl.Utf8).alias("match_key"))

    def splink_own() -> int:
        with spark.session("splink's own predict") as session:
            linker, db = _splink.make_linker(recs, own, session, "spark", model.tf_tables, validate=False)
            linker.table_management.register_blocked_pairs_for_predict(spark.register(db, blocked, "b"))
            return linker.inference.predict(warning_mode="never").as_spark_dataframe().count()

    out["spark_splink_own"] = _timed(splink_own, args.runs)
    for k in ("duckdb", "spark_idweave", "spark_splink_own"):
        out[k]["pairs_per_s_per_core"] = round(pairs.height / out[k]["median_s"] / args.cores)
    out["ratio_duckdb_to_spark_idweave"] = round(out["spark_idweave"]["median_s"] / out["duckdb"]["median_s"], 1)
    out["ratio_spark_idweave_to_splink_own"] = round(out["spark_idweave"]["median_s"]
                                                     / out["spark_splink_own"]["median_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
