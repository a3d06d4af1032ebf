"""Lookup latency on an existing store (issue 14: p50 <= 5 ms, p99 <= 25 ms at 1M records).

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_lookup.py --project PROJECT --queries-from FILE.parquet [--n 1000] [--repeats 3]

``PROJECT`` is a linked project whose store is read (never written); the queries are ``--n``
records drawn (seed 5) from ``FILE.parquet``, whose columns are the project's attribute names.
A query whose values the lookup refuses (a date in no known format) is left out and counted.
Each query is one ``Matcher.lookup`` call, timed in this process after 20 warm-up calls; the
matcher's build time is reported apart. Splink's own real-time lookup is measured beside it by
``bench/bench_identity.py``; this script is for stores that script did not make.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    import polars as pl

    from idweave.linkage.errors import LookupInputError
    from idweave.linkage.lookup import Matcher
    from idweave.linkage.project import load_project

    ap = argparse.ArgumentParser()
    ap.add_argument("--project", required=True)
    ap.add_argument("--queries-from", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    proj = load_project(a.project)
    attrs = list(proj.attributes)
    rows = pl.read_parquet(a.queries_from).sample(a.n, seed=5, shuffle=True)
    qs = [{k: r[k] for k in attrs if r.get(k) is not None} for r in rows.iter_rows(named=True)]
    t = time.perf_counter()
    m = Matcher(proj)
    build = time.perf_counter() - t
    ok = []
    for q in qs:
        try:
            m.lookup(q)
            ok.append(q)
        except LookupInputError:
            pass
    for q in ok[:20]:
        m.lookup(q)
    runs = []
    for _ in range(a.repeats):
        ts = []
        for q in ok:
            t = time.perf_counter()
            m.lookup(q)
            ts.append((time.perf_counter() - t) * 1000)
        ts.sort()
        runs.append({"p50_ms": round(statistics.median(ts), 2), "p99_ms": round(ts[int(0.99 * (len(ts) - 1))], 2),
                     "max_ms": round(ts[-1], 2), "load": round(os.getloadavg()[0], 2)})
    m.close()
    print(json.dumps({"store_records": m.records.height, "queries": len(ok), "refused": len(qs) - len(ok),
                      "matcher_build_s": round(build, 1), "runs": runs,
                      "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
                      "p99_ms_median": statistics.median(r["p99_ms"] for r in runs)}))


if __name__ == "__main__":
    main()
