"""Helpers shared by the identity-graph tests (store, incremental runs, lookup, history, crash)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import yaml

from conftest import copy_fixture


def project_copy(name: str, dest: Path, **overrides: Any) -> Path:
    """``fixtures/<name>`` copied to ``dest`` (store inside it), with top-level keys of the
    project file overridden and ``sources`` entries updated (``sources={"tax": {"mode": ...}}``)."""
    project = copy_fixture(name, dest)
    data = yaml.safe_load(project.read_text())
    for key, value in overrides.items():
        if key == "sources":
            for src, extra in value.items():
                data["sources"][src].update(extra)
        else:
            data[key] = value
    project.write_text(yaml.safe_dump(data, sort_keys=False))
    return project


def linked_copy(name: str, dest: Path) -> tuple[Path, Path, Any]:
    """``fixtures/<name>`` copied to ``dest`` and linked once: (project, store, link result)."""
    from idweave.linkage import link

    project = project_copy(name, dest)
    result = link(project)
    return project, store_of(project), result


def store_of(project: Path) -> Path:
    data = yaml.safe_load(project.read_text())
    return (project.parent / data["store"]).resolve()


def raw_frames(project: Path) -> dict[str, pl.DataFrame]:
    """Each source's file as a frame of strings (what ``link(sources=...)`` accepts)."""
    data = yaml.safe_load(project.read_text())
    out = {}
    for name, spec in data["sources"].items():
        f = project.parent / spec["path"]
        if f.suffix == ".csv":
            df = pl.read_csv(f, infer_schema=False)
        elif f.suffix == ".parquet":
            df = pl.read_parquet(f)
        else:
            df = pl.read_ndjson(f, infer_schema_length=None)
        out[name] = df.with_columns(pl.all().cast(pl.Utf8))
    return out


def partition(entities: pl.DataFrame) -> set[frozenset[tuple[str, str]]]:
    """The grouping of records into entities, ids left out."""
    groups: dict[str, set[tuple[str, str]]] = {}
    for s, r, e in entities.select("source", "record_id", "entity_id").iter_rows():
        groups.setdefault(e, set()).add((s, r))
    return {frozenset(g) for g in groups.values()}


def read_table(store: Path, table: str, *, order: bool = True) -> pl.DataFrame:
    con = duckdb.connect(str(store), read_only=True)
    try:
        rel = con.sql(f"select * from {table}" + (" order by all" if order else ""))
        return pl.from_arrow(rel.to_arrow_table())
    finally:
        con.close()


def entity_sizes_hold(store: Path, summary: dict | None = None) -> bool:
    """The store's entities table agrees with its records: every entity that holds records
    is active with ``size`` = its record count, every other one has size 0 (and, given a
    run's ``summary``, its entity counts are those of the records)."""
    con = duckdb.connect(str(store), read_only=True)
    try:
        bad = con.execute("select count(*) from entities e full join "
                          "(select entity_id, count(*) as n from records group by entity_id) r using (entity_id) "
                          "where e.entity_id is null or coalesce(e.size, -1) != coalesce(r.n, 0) "
                          "or (r.n > 0) != (e.status = 'active')").fetchone()[0]
        counts = dict(con.execute("select n, count(*) from (select count(*) as n from records group by entity_id) "
                                  "group by n").fetchall())
    finally:
        con.close()
    if summary is not None and (summary["entities"] != sum(counts.values())
                                or summary["entity_sizes"] != {str(k): v for k, v in sorted(counts.items())}):
        return False
    return bad == 0


TABLES = ("meta", "runs", "entities", "events", "decisions", "models", "model_tf", "records", "links")


def dump(store: Path) -> dict[str, pl.DataFrame]:
    """Every table of a store, sorted, to compare two states exactly."""
    con = duckdb.connect(str(store), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()]
        return {n: pl.from_arrow(con.sql(f'select * from "{n}" order by all').to_arrow_table()) for n in sorted(names)}
    finally:
        con.close()


def copy_store(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
    wal = Path(str(src) + ".wal")
    if wal.exists():
        shutil.copy(wal, Path(str(dest) + ".wal"))
    return dest


def same_state(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame]) -> bool:
    """Two :func:`dump` results hold the same tables with the same rows."""
    return set(a) == set(b) and all(a[t].equals(b[t]) for t in a)
