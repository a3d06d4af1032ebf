"""Review-queue benchmark: how many of the queue's items are real errors, and what a data
steward's decisions buy, measured against the truth column.

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_review.py                       # historical_50k
    /work/venv/bin/python bench/bench_review.py --dataset demo --decisions 60 --batch 20

What it does:

1. links the dataset with idweave's defaults (hist50k: the project score.py's ``prepare``
   writes; demo: fixtures/demo) into a fresh store under ``--workdir``;
2. builds the review queue and measures the precision of its first ``--top`` items: an
   entity item is a real error when its records belong to more than one true person; a
   near-miss pair is when the two entities share a true person. The same is measured for
   ``--top`` entities drawn at random (all entities, and entities of two or more records);
3. simulates a steward who applies the truth, in queue order, as decisions: an entity that
   mixes people has each minority person split off (one decision each), a correct one is
   confirmed; a near-miss pair whose majority person agrees is merged, one with no person in
   common is kept apart (pairs sharing only a minority person are skipped). The queue is
   rebuilt every ``--batch`` decisions, and the cluster pairwise F1 is measured each time.
   The same steward working on randomly chosen multi-record entities is the baseline;
4. reruns ``link`` (full, same model) to check the decisions hold as constraints.

Prints a table and one JSON line. Writes nothing outside ``--workdir``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from idweave.linkage import link, load_project  # noqa: E402
from idweave.linkage import review  # noqa: E402
from idweave.linkage._db import query_pl  # noqa: E402
from idweave.linkage.evaluate import cluster_metrics  # noqa: E402
from idweave.linkage.graph import Store  # noqa: E402


def prepare(dataset: str, work: Path) -> tuple[Path, pl.DataFrame]:
    """Write the project into ``work``; return (project file, truth: source, record_id, person)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if dataset == "hist50k":
        import datasets  # bench/datasets.py: the same preparation as score.py

        ds = datasets.load("hist50k")
        ds.write_files(work)
        project = {"store": "store.duckdb", **ds.project}
        (work / "project.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
        truth = pl.from_pandas(ds.truth).select(pl.col("source").cast(pl.Utf8), pl.col("record_id").cast(pl.Utf8),
                                                pl.col("person").cast(pl.Utf8))
        return work / "project.yaml", truth
    if dataset == "demo":
        for f in (ROOT / "fixtures" / "demo").iterdir():
            if f.is_file():
                shutil.copy(f, work / f.name)
        text = (work / "project.yaml").read_text()
        (work / "project.yaml").write_text("\n".join("store: store.duckdb" if ln.startswith("store:") else ln
                                                     for ln in text.splitlines()) + "\n")
        from idweave.linkage.sources import load_records

        recs = load_records(load_project(work / "project.yaml"), extra_columns=["true_person"])
        truth = recs.select("source", "record_id", pl.col("true_person").alias("person"))
        return work / "project.yaml", truth
    raise SystemExit(f"unknown dataset {dataset!r}: choose hist50k or demo")


class Truth:
    def __init__(self, truth: pl.DataFrame):
        self.person = {(s, r): p for s, r, p in truth.iter_rows()}

    def members(self, store: Path) -> dict[str, list[tuple[str, str]]]:
        with Store.open(store, read_only=True) as st:
            df = query_pl(st.con, "select source, record_id, entity_id from records")
        out: dict[str, list[tuple[str, str]]] = {}
        for s, r, e in df.iter_rows():
            out.setdefault(e, []).append((s, r))
        return out

    def f1(self, store: Path) -> dict[str, float]:
        with Store.open(store, read_only=True) as st:
            df = query_pl(st.con, "select source, record_id, entity_id from records")
        t = [self.person.get((s, r), f"none-{s}-{r}") for s, r in df.select("source", "record_id").iter_rows()]
        m = cluster_metrics(df["entity_id"], t)
        return {k: m[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1", "entities")}

    def mixed(self, recs: list[tuple[str, str]]) -> bool:
        return len({self.person.get(r) for r in recs}) > 1

    def majority(self, recs: list[tuple[str, str]]) -> str | None:
        c = Counter(self.person.get(r) for r in recs)
        return min(c, key=lambda p: (-c[p], str(p))) if c else None


def is_real_error(item: review.QueueItem, members: dict, truth: Truth) -> bool:
    if item.other_entity_id is None:
        return truth.mixed(members.get(item.entity_id, []))
    a = {truth.person.get(r) for r in members.get(item.entity_id, [])}
    b = {truth.person.get(r) for r in members.get(item.other_entity_id, [])}
    return bool(a & b)


def steward_decide(project: Path, store: Path, item_entity: str, other: str | None, truth: Truth,
                   budget: int) -> int:
    """Apply the truth to one item; returns the number of decisions made (at most ``budget``)."""
    with Store.open(store, read_only=True) as st:
        ea = st.resolve(item_entity)
        eb = st.resolve(other) if other else None
        def recs(e):
            return [(s, r) for s, r in st.con.execute(
                "select source, record_id from records where entity_id = ? order by source, record_id", [e]).fetchall()]
        ra = recs(ea) if ea else []
        rb = recs(eb) if eb else []
    if not ra or (other and (not rb or ea == eb)):
        return 0
    who = "steward"
    if other is None:
        if not truth.mixed(ra):
            review.confirm(project, ea, author=who, reason="truth: one person")
            return 1
        keep = truth.majority(ra)
        groups: dict[str, list] = {}
        for r in ra:
            p = truth.person.get(r)
            if p != keep:
                groups.setdefault(str(p), []).append(r)
        n = 0
        for p in sorted(groups, key=lambda p: (-len(groups[p]), p)):
            if n >= budget:
                break
            # Each split re-clusters the entity, so find where this person's records are now.
            with Store.open(store, read_only=True) as st:
                where: dict[str, list] = {}
                for rec in groups[p]:
                    e = st.con.execute("select entity_id from records where source = ? and record_id = ?",
                                       list(rec)).fetchall()[0][0]
                    where.setdefault(e, []).append(rec)
                e, recs_p = max(where.items(), key=lambda kv: (len(kv[1]), kv[0]))
                size = st.con.execute("select count(*) from records where entity_id = ?", [e]).fetchall()[0][0]
            if size > len(recs_p):
                review.split(project, e, recs_p, author=who, reason="truth: another person")
                n += 1
        return n
    pa, pb = truth.majority(ra), truth.majority(rb)
    if pa == pb:
        review.merge(project, ea, eb, author=who, reason="truth: same person")
        return 1
    if not ({truth.person.get(r) for r in ra} & {truth.person.get(r) for r in rb}):
        review.keep_apart(project, ea, eb, author=who, reason="truth: different people")
        return 1
    return 0


def simulate(project: Path, store: Path, truth: Truth, n_decisions: int, batch: int, *, mode: str,
             seed: int = 0) -> tuple[list[dict], float]:
    """Steward over the queue (mode "queue") or random multi-record entities ("random")."""
    curve = [{"decisions": 0, **truth.f1(store)}]
    made = 0
    t0 = time.perf_counter()
    rng = random.Random(seed)
    done: set = set()
    while made < n_decisions:
        if mode == "queue":
            items = [(i.entity_id, i.other_entity_id) for i in review.queue(project)]
        else:
            members = truth.members(store)
            pool = sorted(e for e, m in members.items() if len(m) >= 2)
            items = [(e, None) for e in rng.sample(pool, min(len(pool), batch * 2))]
        items = [i for i in items if i not in done]
        if not items:
            break
        target = min(n_decisions, (made // batch + 1) * batch)
        for key in items:
            if made >= target:
                break
            done.add(key)
            made += steward_decide(project, store, key[0], key[1], truth, target - made)
        curve.append({"decisions": made, **truth.f1(store)})
    return curve, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="hist50k", choices=["hist50k", "demo"])
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "idweave-bench-review"))
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--no-random-steward", action="store_true", help="Skip the random-steward baseline.")
    a = ap.parse_args()

    work = Path(a.workdir) / a.dataset
    project, truth_df = prepare(a.dataset, work / "queue")
    truth = Truth(truth_df)
    store = work / "queue" / "store.duckdb"

    t0 = time.perf_counter()
    res = link(project)
    link_s = time.perf_counter() - t0
    if not a.no_random_steward:
        shutil.rmtree(work / "random", ignore_errors=True)
        shutil.copytree(work / "queue", work / "random")

    t0 = time.perf_counter()
    items = review.queue(project)
    queue_s = time.perf_counter() - t0
    members = truth.members(store)
    likely = [i for i in items if i.score >= 0.5]
    likely_real = sum(is_real_error(i, members, truth) for i in likely)
    top = items[: a.top]
    real = [is_real_error(i, members, truth) for i in top]
    by_reason: dict[str, list[int]] = {}
    for i, ok in zip(top, real):
        by_reason.setdefault(i.reason, [0, 0])
        by_reason[i.reason][0] += ok
        by_reason[i.reason][1] += 1
    rng = random.Random(0)
    ents = sorted(members)
    sample_all = rng.sample(ents, min(a.top, len(ents)))
    multi = sorted(e for e in ents if len(members[e]) >= 2)
    sample_multi = rng.sample(multi, min(a.top, len(multi)))
    p_rand_all = sum(truth.mixed(members[e]) for e in sample_all) / max(len(sample_all), 1)
    p_rand_multi = sum(truth.mixed(members[e]) for e in sample_multi) / max(len(sample_multi), 1)
    mixed_total = sum(truth.mixed(m) for m in members.values())

    curve, steward_s = simulate(project, store, truth, a.decisions, a.batch, mode="queue")
    rcurve, rsteward_s = ([], 0.0)
    if not a.no_random_steward:
        rcurve, rsteward_s = simulate(work / "random" / "project.yaml", work / "random" / "store.duckdb", truth,
                                      a.decisions, a.batch, mode="random")
    # Decisions must hold through a full rerun (same model, constraints from the decisions).
    t0 = time.perf_counter()
    link(project, full=True)
    rerun_s = time.perf_counter() - t0
    after_rerun = truth.f1(store)
    n_dec = review.decisions(project).height

    def gain(c: list[dict]) -> float | None:
        if len(c) < 2 or c[-1]["decisions"] == 0:
            return None
        return round((c[-1]["pairwise_f1"] - c[0]["pairwise_f1"]) / c[-1]["decisions"] * 100, 5)

    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, " \
              f"{platform.system()} {platform.release()}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench_review on {a.dataset}: {res.summary['records']:,} records, {res.summary['entities']:,} entities "
          f"({mixed_total:,} mixing true people), threshold {res.summary['threshold']}")
    print(f"# machine: {machine}; {when}")
    print(f"# link {link_s:.1f}s, queue {queue_s:.2f}s, steward {steward_s:.1f}s, rerun {rerun_s:.1f}s")
    print()
    print(f"| measure | value |\n|---|---:|")
    print(f"| queue size | {len(items):,} |")
    print(f"| queue items by reason | {', '.join(f'{k} {v}' for k, v in Counter(i.reason for i in items).most_common())} |")
    print(f"| items scoring 0.5 or more (real errors among them) | {len(likely):,} ({likely_real:,}) |")
    print(f"| precision of the first {len(top)} items | {sum(real) / max(len(top), 1):.2f} |")
    for k, (ok, n) in sorted(by_reason.items(), key=lambda kv: -kv[1][1]):
        print(f"| &nbsp;&nbsp;{k} | {ok}/{n} |")
    print(f"| random {len(sample_all)} entities: share mixing people | {p_rand_all:.2f} |")
    print(f"| random {len(sample_multi)} multi-record entities: share mixing people | {p_rand_multi:.2f} |")
    print()
    print("| steward | decisions | pairwise P | pairwise R | pairwise F1 | entities |\n|---|---:|---:|---:|---:|---:|")
    for name, c in (("queue", curve), ("random", rcurve)):
        for row in c:
            print(f"| {name} | {row['decisions']} | {row['pairwise_precision']:.4f} | {row['pairwise_recall']:.4f} | "
                  f"{row['pairwise_f1']:.4f} | {row['entities']:,} |")
    print(f"| after full rerun | {n_dec} | {after_rerun['pairwise_precision']:.4f} | "
          f"{after_rerun['pairwise_recall']:.4f} | {after_rerun['pairwise_f1']:.4f} | {after_rerun['entities']:,} |")
    print()
    print(f"F1 gain per 100 decisions: queue {gain(curve)}, random {gain(rcurve)}")
    out = {"bench": "review", "dataset": a.dataset, "records": res.summary["records"],
           "entities": res.summary["entities"], "entities_mixing_people": mixed_total,
           "threshold": res.summary["threshold"], "queue_size": len(items),
           "queue_reasons": dict(Counter(i.reason for i in items)), "items_scoring_0_5": len(likely),
           "items_scoring_0_5_real": likely_real, "top": len(top),
           "precision_top": round(sum(real) / max(len(top), 1), 4),
           "precision_top_by_reason": {k: v for k, v in by_reason.items()},
           "random_entities_mixed": round(p_rand_all, 4), "random_multi_entities_mixed": round(p_rand_multi, 4),
           "steward_curve": curve, "random_steward_curve": rcurve,
           "f1_gain_per_100_decisions": gain(curve), "random_f1_gain_per_100_decisions": gain(rcurve),
           "f1_after_rerun": after_rerun["pairwise_f1"], "decisions_recorded": n_dec,
           "seconds": {"link": round(link_s, 1), "queue": round(queue_s, 2), "steward": round(steward_s, 1),
                       "random_steward": round(rsteward_s, 1), "rerun": round(rerun_s, 1)},
           "machine": machine, "date": when}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
