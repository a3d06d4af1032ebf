"""Shared plumbing for the accuracy benchmark: the result shape every tool adapter returns,
a stage stopwatch, a peak-RSS sampler and the machine description.

Kept apart from the adapters so that idweave, Splink and recordlinkage are measured by exactly
the same clock and the same memory probe.
"""
from __future__ import annotations

import gc
import os
import platform
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import pandas as pd
import psutil

#: the stage names every adapter reports (an adapter may add more, e.g. "prepare", "export").
STAGES = ("blocking", "training", "scoring", "clustering")


@dataclass
class ToolRun:
    """What one tool produced on one dataset, in a tool-independent shape.

    entities: one row per record the tool clustered: ``source``, ``record_id`` (str), ``cluster_id``.
    pairs: every candidate pair the tool's blocking produced: ``source_l``, ``record_id_l``,
        ``source_r``, ``record_id_r``, ``match_probability`` (NaN where the tool did not keep a
        score for the pair, e.g. Splink demos that predict with a threshold).
    timings: stage name -> wall seconds (see ``STAGES``).
    threshold: the match probability at which the tool's clusters were cut.
    config: a short, JSON-able description of what was run (rules, comparisons, thresholds).
    """

    entities: pd.DataFrame
    pairs: pd.DataFrame
    timings: dict[str, float]
    threshold: float | None
    config: dict[str, Any] = field(default_factory=dict)


class StageTimer:
    """Wall-clock stopwatch keyed by stage name; re-entering a stage adds to its total.

    >>> t = StageTimer()
    >>> with t("blocking"):
    ...     pass
    >>> sorted(t.timings)
    ['blocking']
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0


class PeakRSS:
    """Sample this process's resident set size in a background thread and keep the peak.

    What it measures: RSS of the whole process (Python objects, numpy/arrow buffers, DuckDB's
    and polars' native allocations, all threads) sampled every ``interval`` seconds, so spikes
    shorter than the interval can be missed. ``delta_mb`` is peak minus the RSS at start; it
    understates a tool's need when the allocator reuses memory that an earlier run freed but did
    not hand back to the OS (so in a multi-tool process the first tool run pays for the pages the
    later ones reuse). Run with ``--isolate`` for a fresh process per (tool, dataset).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._proc = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = 0
        self.peak_bytes = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            if rss > self.peak_bytes:
                self.peak_bytes = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()  # so the baseline does not include the previous run's garbage
        self.start_bytes = self.peak_bytes = self._proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def as_dict(self) -> dict[str, float]:
        mb = 1024 * 1024
        return {
            "rss_start_mb": round(self.start_bytes / mb, 1),
            "rss_peak_mb": round(self.peak_bytes / mb, 1),
            "rss_peak_delta_mb": round((self.peak_bytes - self.start_bytes) / mb, 1),
        }


def machine() -> dict[str, Any]:
    """The facts about this machine that the timings depend on."""
    import duckdb
    import polars
    import splink

    vm = psutil.virtual_memory()
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "ram_gb": round(vm.total / 1024**3, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "splink": splink.__version__,
        "duckdb": duckdb.__version__,
        "polars": polars.__version__,
        "pandas": pd.__version__,
    }
    try:
        import recordlinkage

        info["recordlinkage"] = recordlinkage.__version__
    except ImportError:  # the bench still runs without the baseline
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
