"""The trained model: a Splink 5 model JSON (``splink.Linker(df, "model.json")`` loads it)
plus the term-frequency tables it was trained with, so that later runs and lookups score
exactly as the training run did.

What it compares is :mod:`idweave.linkage.comparisons`, how it is trained
:mod:`idweave.linkage.training`, how pairs are scored with it :mod:`idweave.linkage.scoring`;
Splink itself is behind :mod:`idweave.linkage._splink`.

>>> m = TrainedModel({"probability_two_random_records_match": 0.01, "comparisons": []})
>>> m.prior, len(m.version)
(0.01, 12)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from idweave.linkage.errors import ModelError

__all__ = ["TrainedModel", "load_model", "stored_single_listing"]


@dataclass
class TrainedModel:
    """A Splink model JSON (``settings``) plus the term-frequency tables it scores with."""

    settings: dict[str, Any]
    tf_tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    training_log: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        """Content hash of the model: changes exactly when scores could change."""
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for k in sorted(self.tf_tables):
            h.update(k.encode())
            h.update(self.tf_tables[k].sort(k).write_csv().encode())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(self.settings, indent=2, default=str)

    def save(self, path: Path) -> None:
        """Write the Splink model JSON atomically (a temp file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_text(self.to_json())
            tmp.replace(path)
        except BaseException:  # a full disk must not leave half a model beside the store
            tmp.unlink(missing_ok=True)
            raise

    @property
    def prior(self) -> float:
        return float(self.settings["probability_two_random_records_match"])

    def comparisons(self) -> list[dict[str, Any]]:
        return self.settings["comparisons"]

    def weights_table(self) -> pl.DataFrame:
        """One row per comparison level: m, u and the match weight log2(m/u)."""
        rows = []
        for c in self.comparisons():
            for i, lvl in enumerate(c["comparison_levels"]):
                if lvl.get("is_null_level"):
                    continue
                m, u = lvl.get("m_probability"), lvl.get("u_probability")
                w = math.log2(m / u) if m and u else None
                rows.append({"comparison": c["output_column_name"], "level": lvl.get("label_for_charts", str(i)),
                             "m": m, "u": u, "weight": w})
        return pl.DataFrame(rows, schema={"comparison": pl.Utf8, "level": pl.Utf8, "m": pl.Float64,
                                          "u": pl.Float64, "weight": pl.Float64})


def load_model(path: Path, tf_tables: dict[str, pl.DataFrame] | None = None) -> TrainedModel:
    """Read a model JSON written by :meth:`TrainedModel.save`.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "model.json"
    >>> TrainedModel({"probability_two_random_records_match": 0.5}).save(path)
    >>> load_model(path).prior
    0.5
    """
    try:
        settings = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read model: {exc}", file=str(path)) from None
    return TrainedModel(settings, dict(tf_tables or {}))


def exclusive_sources(proj: Any, st: Any) -> set[str]:
    """The sources a run clustered as exclusive: those the project marks, and those the
    latest run found to list a person once (:func:`stored_single_listing`). Decisions,
    lookup and evaluate cluster with these, as the run did.

    >>> from idweave.linkage import link
    >>> from idweave.linkage.graph import Store
    >>> from idweave.linkage.project import load_project
    >>> p = load_project("fixtures/tiny/project.yaml")
    >>> _ = link(p)
    >>> with Store.open(p.store, read_only=True) as st:
    ...     sorted(exclusive_sources(p, st))
    ['tax']
    """
    return {s.name for s in proj.sources.values() if s.exclusive} | set(stored_single_listing(st) or [])


def stored_single_listing(st: Any, version: str | None = None) -> list[str] | None:
    """The single-listing sources the latest run of model ``version`` (default: the latest
    run's model) recorded in its summary; None if no run did. A decision re-clusters with
    them as a run does.

    >>> from idweave.linkage import link
    >>> from idweave.linkage.graph import Store
    >>> from idweave.linkage.project import load_project
    >>> _ = link("fixtures/tiny/project.yaml")  # 30 people: too few to tell
    >>> with Store.open(load_project("fixtures/tiny/project.yaml").store, read_only=True) as st:
    ...     stored_single_listing(st)
    []
    """
    if version is None:
        version = (st.last_run_info() or {}).get("model_version")
    for text in reversed(st.run_summaries(version) if version else []):
        found = json.loads(text or "{}").get("single_listing")
        if found is not None:
            return list(found)
    return None
