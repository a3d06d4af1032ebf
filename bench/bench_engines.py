"""Scoring throughput of the engines (issue 17): the same model and the same candidate pairs
scored on DuckDB (2 threads, idweave's compiled path), on Spark ``local[2]`` (Splink's
``predict`` with idweave's UDFs, which give DuckDB's levels) and on Spark with Splink's own
jar functions in their place (Splink-on-Spark's own predict; its Jaro-Winkler differs from
DuckDB's, so this is a speed reference only), in pairs scored per second per core.

    python bench/bench_engines.py [--data PARQUET] [--runs 3] [--cores 2]
    python bench/bench_engines.py --link [--data PARQUET] [--cores 2] [--engines duckdb,spark]

``--link`` runs ``idweave link`` (the library's ``link()``) of the same project once on each
engine instead, from a fresh store (so each trains): seconds per stage, the driver's and the
Spark JVM's peak memory, and whether the two stores hold the same entities and links.

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


def _peak_rss_gb(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM), in GB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024 ** 2, 2)
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the Spark JVM, its Python workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for t in Path(f"/proc/{p}/task").iterdir()
                    for k in (t / "children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def link_both(args) -> dict:
    """``idweave link`` (library ``link()``, one fresh store each) of the same project on
    DuckDB and on Spark ``local[cores]``: stage seconds from the run summary, the driver's
    peak RSS, the Spark JVM's and its Python workers' peak RSS, and whether the entities and
    the links' levels are the same (scores: the largest difference)."""
    import os
    import resource

    import duckdb
    import polars as pl

    from idweave.linkage import engine, link

    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    out: dict = {"data": str(args.data), "cores": args.cores, "runs": {},
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "load_average_start": os.getloadavg()}
    for name in args.engines.split(","):
        proj = {"attributes": ATTRS, "store": str(work / name / "s.duckdb"), "engine": name,
                "sources": {"people": {"path": str(args.data), "id": "unique_id", "columns": {a: a for a in ATTRS}}}}
        if name == "spark":
            proj["spark"] = {"master": f"local[{args.cores}]", "checkpoint_dir": str(work / "checkpoints")}
            t = time.perf_counter()
            engine.spark_session(f"local[{args.cores}]")
            out["spark_start_s"] = round(time.perf_counter() - t, 1)
        else:
            proj["spark"] = {}
        t = time.perf_counter()
        res = link(proj)
        wall = time.perf_counter() - t
        kids = _children(os.getpid())
        jvm = [_peak_rss_gb(k) for k in kids if "java" in Path(f"/proc/{k}/comm").read_text()]
        workers = [_peak_rss_gb(k) for k in kids if "java" not in Path(f"/proc/{k}/comm").read_text()]
        out["runs"][name] = {
            "wall_s": round(wall, 1), "timings_s": res.summary["timings"], "scored_pairs": res.summary.get("scored_pairs"),
            "entities": res.summary["entities"],
            "driver_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
            "spark_jvm_peak_rss_gb": max([j for j in jvm if j] or [0]) or None,
            "spark_python_workers_peak_rss_gb": max([w for w in workers if w] or [0]) or None,
            "load_average_end": os.getloadavg()}
    if {"duckdb", "spark"} <= set(out["runs"]):
        def read(n: str):
            con = duckdb.connect(str(work / n / "s.duckdb"), read_only=True)
            try:
                recs = con.sql("select source, record_id, entity_id from records").pl()
                links = con.sql("select * exclude (rk_l, rk_r) from links order by all").pl()
            finally:
                con.close()
            groups = recs.group_by("entity_id").agg(pl.col("record_id").sort()).get_column("record_id")
            return {tuple(g) for g in groups.to_list()}, links
        (pa, la), (pb, lb) = read("duckdb"), read("spark")
        floats = [c for c in la.columns if la[c].dtype == pl.Float64]
        key = [c for c in la.columns if c not in floats]
        out["same_entities"] = pa == pb
        out["same_pairs_and_levels"] = la.select(key).equals(lb.select(key))
        out["max_score_difference"] = max(float((la[c] - lb[c]).abs().max()) for c in floats) \
            if out["same_pairs_and_levels"] else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--link", action="store_true",
                    help="time idweave link end to end on each engine (one run each) instead of scoring alone")
    ap.add_argument("--engines", default="duckdb,spark", help="with --link: the engines, in order")
    args = ap.parse_args()
    if args.link:
        print(json.dumps(link_both(args), indent=1, default=str))
        return

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
