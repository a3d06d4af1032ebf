"""Split-suggestion accuracy: how often the queue's suggested split is the truth-correct one,
over every entity that mixes true people.

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_split.py --dataset demo
    /work/venv/bin/python bench/bench_split.py --dataset hist50k

Links the dataset into a fresh store under ``--workdir`` (the preparation of
bench/bench_review.py), builds the queue (reviewed entities included) and, for every entity
whose records belong to more than one true person, compares the suggested split with the
truth. The truth-correct split takes out every record but those of the entity's largest true
person (for two people of equal size, either side): a suggestion is correct when what stays
is exactly one largest true person's records. An entity without a suggestion (not in the
queue, or no split found) counts as not correct. Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_review import Truth, prepare  # noqa: E402

from idweave.linkage import link, review  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="demo", choices=["demo", "hist50k"])
    ap.add_argument("--workdir", default="/tmp/idweave-bench-split")
    ap.add_argument("--reuse", action="store_true", help="reuse a store linked by an earlier run in --workdir")
    a = ap.parse_args()
    work = Path(a.workdir) / a.dataset
    t0 = time.perf_counter()
    if a.reuse and (work / "project.yaml").exists():
        from bench_review import prepare as _p  # noqa: F401 - same truth reading as a fresh run
        project = work / "project.yaml"
        truth_df = json.loads((work / "truth.json").read_text())
        import polars as pl
        truth = Truth(pl.DataFrame(truth_df, schema=["source", "record_id", "person"], orient="row"))
    else:
        project, truth_frame = prepare(a.dataset, work)
        (work / "truth.json").write_text(json.dumps([list(r) for r in truth_frame.iter_rows()]))
        truth = Truth(truth_frame)
        link(project)
    t_link = time.perf_counter() - t0
    members = truth.members(work / "store.duckdb")
    t1 = time.perf_counter()
    items = review.queue(project, include_reviewed=True)
    t_queue = time.perf_counter() - t1
    suggestion = {it.entity_id: it.suggested_split for it in items if it.other_entity_id is None and it.suggested_split}
    counts: Counter = Counter()
    by_people: dict[int, Counter] = defaultdict(Counter)
    for e, recs in members.items():
        if not truth.mixed(recs):
            continue
        people = Counter(truth.person.get(r) for r in recs)
        n_people = len(people)
        counts["mixed"] += 1
        by_people[n_people]["mixed"] += 1
        s = suggestion.get(e)
        if not s:
            counts["no suggestion"] += 1
            continue
        counts["with suggestion"] += 1
        out = {tuple(x.split(":", 1)) for x in s}
        rest = set(recs) - out
        top = max(people.values())
        ok = bool(rest) and len({truth.person.get(r) for r in rest}) == 1 \
            and people[truth.person.get(next(iter(rest)))] == top \
            and len(rest) == top
        if ok:
            counts["correct"] += 1
            by_people[n_people]["correct"] += 1
    rows = [("mixed entities", counts["mixed"]), ("with a suggested split", counts["with suggestion"]),
            ("suggestion = truth-correct split", counts["correct"]),
            ("share correct (of mixed)", f"{counts['correct'] / max(counts['mixed'], 1):.1%}"),
            ("share correct (of those with a suggestion)",
             f"{counts['correct'] / max(counts['with suggestion'], 1):.1%}")]
    for k in sorted(by_people):
        rows.append((f"  of {k} people: correct / mixed", f"{by_people[k]['correct']} / {by_people[k]['mixed']}"))
    w = max(len(r[0]) for r in rows)
    print(f"split suggestions on {a.dataset} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"link {t_link:.1f}s, queue {t_queue:.1f}s)")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    print(json.dumps({"bench": "split_suggestion", "dataset": a.dataset, **{k: v for k, v in counts.items()},
                      "by_people": {str(k): dict(v) for k, v in by_people.items()}}))


if __name__ == "__main__":
    main()
