"""The four public benchmark datasets, loaded into one shape that every tool adapter reads.

The preparation is the one /work/shared/checks/score.py uses (the scorer the project is judged
with): FEBRL headers and values stripped of the leading spaces of the original files, every
column read as text, the FEBRL entity taken from ``rec-(\\d+)-`` in ``rec_id``, the ``cluster``
column as truth for fake_1000 and historical_50k. The idweave project dicts carry the same
attributes, kinds and source options as score.py's ``prepare`` (``check_against_score_py``
verifies that), so the numbers here and the judged numbers come from the same input.

Example::

    ds = load("febrl3")
    ds.n_records            # 5000
    ds.truth.head()         # source, record_id, person
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

__all__ = ["BenchDataset", "DATASETS", "DATA_DIR", "FEBRL_ATTRS", "load", "check_against_score_py"]

SHARED = Path(os.environ.get("IDWEAVE_SHARED", "/work/shared"))
DATA_DIR = SHARED / "datasets"
CHECKS_DIR = SHARED / "checks"

#: dataset names accepted by ``load``, in the order the runner uses by default
DATASETS = ("febrl3", "febrl4", "fake1000", "hist50k")

# attribute -> kind, as in score.py: a user writes only these (no rules, no comparisons)
FEBRL_ATTRS = {"given_name": "given_name", "surname": "family_name", "street_number": "text",
               "address_1": "address", "address_2": "address", "suburb": "city",
               "postcode": "postcode", "state": "category", "date_of_birth": "date",
               "soc_sec_id": "national_id"}
FAKE1000_ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date",
                  "city": "city", "email": "email"}
HIST50K_ATTRS = {"first_name": "given_name", "surname": "family_name", "dob": "date",
                 "birth_place": "city", "postcode_fake": "postcode", "gender": "sex",
                 "occupation": "category"}


@dataclass
class BenchDataset:
    """One benchmark dataset in the shape the adapters share.

    frames: source name -> pandas frame with the source's original columns (text, cleaned as
        score.py cleans them); the record id is in column ``id_column`` of every frame.
    truth: ``source``, ``record_id`` (str), ``person`` (str): the true entity of every record.
    link_only: only cross-source pairs count as true pairs (FEBRL4).
    project: the idweave project dict (``attributes``, ``sources`` with ``path``/``id``/
        ``columns``/``date_format``/``exclusive``), paths relative to where ``write_files`` puts
        the data.
    files: source name -> file name inside that directory (same names as score.py).
    """

    name: str
    frames: dict[str, pd.DataFrame]
    id_column: str
    truth: pd.DataFrame
    link_only: bool
    project: dict
    files: dict[str, str]

    @property
    def n_records(self) -> int:
        return sum(len(f) for f in self.frames.values())

    def write_files(self, directory: Path) -> Path:
        """Write each source as score.py writes it (csv, or parquet for hist50k) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for src, frame in self.frames.items():
            target = directory / self.files[src]
            if target.suffix == ".parquet":
                frame.to_parquet(target, index=False)
            elif target.suffix == ".ndjson":
                frame.to_json(target, orient="records", lines=True)
            else:
                frame.to_csv(target, index=False)
        return directory


def _febrl_read(path: Path) -> pd.DataFrame:
    # the original files separate fields with ", ": strip header and values, keep all as text
    df = pd.read_csv(path, dtype=str, skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    return df.apply(lambda s: s.str.strip() if s.dtype == object else s)


def _febrl_entity(rec_id: pd.Series) -> pd.Series:
    return rec_id.str.extract(r"rec-(\d+)-")[0]


def _truth(source: str, ids: pd.Series, person: pd.Series) -> pd.DataFrame:
    return pd.DataFrame({"source": source, "record_id": ids.astype(str).to_numpy(),
                         "person": person.astype(str).to_numpy()})


def load(name: str) -> BenchDataset:
    """Load one dataset by name (``febrl3``, ``febrl4``, ``fake1000``, ``hist50k``)."""
    febrl_cols = {a: a for a in FEBRL_ATTRS}
    if name == "febrl3":
        df = _febrl_read(DATA_DIR / "febrl" / "dataset3.csv")
        project = {"attributes": dict(FEBRL_ATTRS), "sources": {"febrl3": {
            "path": "febrl3.csv", "id": "rec_id", "columns": dict(febrl_cols),
            "date_format": "%Y%m%d"}}}
        return BenchDataset(name, {"febrl3": df}, "rec_id",
                            _truth("febrl3", df.rec_id, _febrl_entity(df.rec_id)), False,
                            project, {"febrl3": "febrl3.csv"})
    if name == "febrl4":
        frames = {"a": _febrl_read(DATA_DIR / "febrl" / "dataset4a.csv"),
                  "b": _febrl_read(DATA_DIR / "febrl" / "dataset4b.csv")}
        # exclusive: each source is duplicate-free, so a record links to at most one per source
        sources = {n: {"path": f"{n}.csv", "id": "rec_id", "columns": dict(febrl_cols),
                       "date_format": "%Y%m%d", "exclusive": True} for n in frames}
        truth = pd.concat([_truth(n, d.rec_id, _febrl_entity(d.rec_id)) for n, d in frames.items()],
                          ignore_index=True)
        return BenchDataset(name, frames, "rec_id", truth, True,
                            {"attributes": dict(FEBRL_ATTRS), "sources": sources},
                            {"a": "a.csv", "b": "b.csv"})
    if name == "fake1000":
        df = pd.read_csv(DATA_DIR / "fake_1000.csv", dtype=str)
        project = {"attributes": dict(FAKE1000_ATTRS), "sources": {"people": {
            "path": "fake_1000.csv", "id": "unique_id", "columns": {a: a for a in FAKE1000_ATTRS}}}}
        return BenchDataset(name, {"people": df}, "unique_id",
                            _truth("people", df.unique_id, df.cluster), False, project,
                            {"people": "fake_1000.csv"})
    if name == "hist50k":
        df = pd.read_parquet(DATA_DIR / "historical_figures_with_errors_50k.parquet")
        df["unique_id"] = df["unique_id"].astype(str)
        project = {"attributes": dict(HIST50K_ATTRS), "sources": {"people": {
            "path": "hist.parquet", "id": "unique_id", "columns": {a: a for a in HIST50K_ATTRS}}}}
        return BenchDataset(name, {"people": df}, "unique_id",
                            _truth("people", df.unique_id, df.cluster), False, project,
                            {"people": "hist.parquet"})
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def check_against_score_py(ds: BenchDataset) -> list[str]:
    """Compare this preparation with score.py's ``prepare``; return the differences (none = [])."""
    path = CHECKS_DIR / "score.py"
    if not path.exists():
        return [f"{path} not found"]
    try:
        spec = importlib.util.spec_from_file_location("_idweave_score", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # score.py imports yaml and metrics at top level
    except Exception as exc:  # noqa: BLE001 - report, do not fail the bench over a check
        return [f"could not import score.py: {exc!r}"]
    with tempfile.TemporaryDirectory(prefix="idweave-prep-") as tmp:
        project, truth, link_only = mod.prepare(ds.name, Path(tmp))
    problems = []
    if project != ds.project:
        problems.append(f"project differs: score.py={project!r} bench={ds.project!r}")
    if link_only != ds.link_only:
        problems.append(f"link_only differs: score.py={link_only} bench={ds.link_only}")
    a = truth.astype(str).reset_index(drop=True)
    b = ds.truth.astype(str).reset_index(drop=True)
    if list(a.columns) != list(b.columns) or not a.equals(b):
        problems.append("truth frame differs from score.py's")
    return problems
