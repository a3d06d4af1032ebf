"""Read-only views of the store: export the entity of every record, count candidate pairs.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> export("fixtures/tiny/project.yaml").columns
['source', 'record_id', 'entity_id']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from idweave.blocking import count_pairs as _count_pairs
from idweave.linkage.csvsafe import write_csv
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.project import project_rules, resolve_project, with_rids
from idweave.linkage.project import Project
from idweave.linkage.sources import load_records

__all__ = ["export", "count_pairs"]

def export(project: Project | str | Path | Mapping[str, Any], out: str | Path | None = None, *,
           with_attributes: bool = False, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """One row per record: ``source``, ``record_id``, ``entity_id`` (ids only, by default;
    plus every cleaned attribute with ``with_attributes``, or only the attributes named in
    ``columns``). Written to ``out`` (``.csv`` or ``.parquet``) if given; returned as a
    polars frame either way.

    >>> export("fixtures/tiny/project.yaml", columns=["birth_date"]).columns
    ['source', 'record_id', 'entity_id', 'birth_date']
    """
    if columns is not None:
        wanted = [c.strip() for c in columns if c.strip()]
        proj0 = resolve_project(project)
        unknown = [c for c in wanted if c not in proj0.attributes]
        if unknown or not wanted:
            raise IdweaveError(f"--columns: {', '.join(unknown) or 'nothing'} is not a declared attribute; "
                               f"expected some of {', '.join(proj0.attributes)}", key="columns")
        project, with_attributes = proj0, True
    proj = resolve_project(project)
    with Store.open(proj.store, read_only=True) as st:
        st.require(records=True)
        cols = ["source", "record_id", "entity_id"]
        if with_attributes:
            have = set(st.columns("records"))
            cols += [a for a in (wanted if columns is not None else proj.attributes) if a in have]
        df = st.record_columns(cols)
    if out is not None:
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise IdweaveError("the output must end in .csv or .parquet", file=str(out))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            if suffix == ".csv":
                write_csv(df, tmp)
            else:
                df.write_parquet(tmp)
            tmp.replace(out)
        except OSError as exc:
            raise IdweaveError(f"cannot write the export: {exc.strerror}", file=str(out)) from None
    return df


def count_pairs(project: Project | str | Path | Mapping[str, Any], *,
                sources: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Before any scoring: the pairs each blocking rule adds and the running total, per source
    pair and for all sources, with the share of all possible pairs. Writes nothing.

    >>> df = count_pairs("fixtures/tiny/project.yaml")
    >>> df.filter(df["sources"] == "all")["cumulative"].is_sorted()
    True
    """
    proj = resolve_project(project, sources=sources)
    records = with_rids(load_records(proj))
    rules = project_rules(proj, records)
    excl = [s.name for s in proj.sources.values() if s.exclusive]
    return _count_pairs(records, rules, exclusive=excl)
