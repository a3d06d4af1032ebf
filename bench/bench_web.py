"""Review workbench benchmark: server time of the queue and entity pages, and of a decision
round trip (POST a decision, then load the page the result links to).

Usage (from the repository root)::

    /work/venv/bin/python bench/bench_web.py                                  # the demo
    /work/venv/bin/python bench/bench_web.py --project /tmp/idweave-bench-split/hist50k/project.yaml

``--project`` is an already linked project (bench/bench_split.py --dataset hist50k leaves
one); its folder is copied to a temporary folder first, so the decisions land on a copy.
Without it the demo is linked into a temporary folder. The workbench runs in this process
(uvicorn in a thread, as ``idweave serve`` runs it) and an HTTP client on loopback times
each request from sending to the last byte: server time plus a loopback round trip.

A decision's POST includes what the server does before it answers: the version check, the
decision, finding again the queue entries it changed (the stored queue), and the result
page's reads. Prints a table (p50, p99, spread) and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    from idweave.linkage import link
    from idweave.web.app import BackgroundServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--project", help="a linked project file (copied first); default: the demo")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--decisions", type=int, default=60)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="idweave-bench-web-"))
    try:
        if a.project:
            src = Path(a.project).resolve().parent
            shutil.copytree(src, tmp / "p", ignore=shutil.ignore_patterns("*.wal"))
            project = tmp / "p" / Path(a.project).name
            name = src.name
        else:
            shutil.copytree(ROOT / "fixtures" / "demo", tmp / "p", ignore=shutil.ignore_patterns("out"))
            project = tmp / "p" / "project.yaml"
            project.write_text(re.sub(r"(?m)^store: .*$", "store: out/demo.duckdb", project.read_text()))
            link(project)
            name = "demo"
        srv = BackgroundServer(project, author="bench")
        try:
            with httpx.Client(timeout=120) as h:
                h.get(srv.url)  # the token becomes a cookie
                t = time.perf_counter()
                first = h.get(srv.base + "/?limit=200")
                t_first = time.perf_counter() - t
                hrefs = re.findall(r'data-href="([^"]+)"', first.text)
                queue_t, entity_t = [], []
                for _ in range(a.requests):
                    t = time.perf_counter()
                    r = h.get(srv.base + "/")
                    queue_t.append(time.perf_counter() - t)
                    assert r.status_code == 200
                for i in range(a.requests):
                    t = time.perf_counter()
                    r = h.get(srv.base + hrefs[i % len(hrefs)])
                    entity_t.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.status_code
                # Decisions cycle through confirm, split (the suggested records, else the last
                # one) and undo of that split, each on the next queue item's entity.
                kinds = ["confirm", "split", "undo"]
                decide_t: dict[str, list[float]] = {k: [] for k in kinds}
                round_t: dict[str, list[float]] = {k: [] for k in kinds}
                done = 0
                seen = set()
                last_split = None
                for href in hrefs:
                    href = href.split("?")[0]  # a pair item: its first entity
                    if href in seen:
                        continue
                    seen.add(href)
                    kind = kinds[done % 3]
                    if kind == "undo" and last_split is None:
                        kind = "confirm"
                    page = h.get(srv.base + href)
                    if page.status_code != 200:
                        continue
                    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
                    if kind == "undo":
                        data = {"csrf": csrf, "decision_id": last_split, "reason": "bench", "back": href}
                    else:
                        part = page.text[page.text.index('id="confirm"'):]
                        version = re.search(r'name="version" value="([^"]+)"', part).group(1)
                        eid = re.search(r'name="entity" value="([^"]+)"', part).group(1)
                        data = {"csrf": csrf, "entity": eid, "version": version, "reason": "bench"}
                        if kind == "split":
                            boxes = re.findall(r'name="records" value="([^"]+)"', page.text)
                            sugg = re.search(r'class="sugg">Suggestion: ([^<]+)<', page.text)
                            if len(boxes) < 2:
                                kind, data["reason"] = "confirm", "bench"
                            else:
                                data["records"] = (sugg.group(1).split(", ") if sugg else boxes[-1:])
                    t = time.perf_counter()
                    r = h.post(srv.base + f"/decide/{kind}", data=data)
                    t_post = time.perf_counter() - t
                    assert r.status_code == 200, (kind, r.status_code)
                    nxt = re.search(r'id="next" autofocus href="([^"]+)"', r.text)
                    if nxt:
                        assert h.get(srv.base + nxt.group(1)).status_code == 200
                    decide_t[kind].append(t_post)
                    round_t[kind].append(time.perf_counter() - t)
                    if kind == "split":
                        last_split = re.search(r"Decision #(\d+)", r.text).group(1)
                    elif kind == "undo":
                        last_split = None
                    done += 1
                    if done == a.decisions:
                        break
        finally:
            srv.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    every = [x for k in decide_t for x in round_t[k]]
    rows = [("queue page", queue_t), ("entity page", entity_t),
            ("decision POST -> result page", [x for k in decide_t for x in decide_t[k]]),
            ("decision round trip (POST, then the next item's page)", every),
            *((f"  {k} round trip", round_t[k]) for k in round_t)]
    print(f"workbench on {name} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()})")
    print(f"  first queue page (builds the queue): {t_first * 1000:.0f} ms")
    w = max(len(r[0]) for r in rows)
    print(f"  {'':<{w}}  {'n':>4}  {'p50 ms':>8}  {'p99 ms':>8}  {'min':>7}  {'max':>7}")
    out = {"bench": "web", "dataset": name, "first_queue_ms": round(t_first * 1000, 1)}
    for label, xs in rows:
        ms = [x * 1000 for x in xs] or [float("nan")]
        print(f"  {label:<{w}}  {len(ms):>4}  {statistics.median(ms):>8.1f}  {pct(ms, 0.99):>8.1f}  "
              f"{min(ms):>7.1f}  {max(ms):>7.1f}")
        out[label.strip().split(" (")[0].replace(" ", "_").replace("->", "to")] = {
            "n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(pct(ms, 0.99), 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
