"""Erasure: ``forget`` a record, and keep it forgotten.

:func:`forget` erases one record from the identity store in one transaction:

* its row in ``records`` (every cleaned attribute, its content and raw hashes);
* its links (``links``), its block keys (``block_keys``) and its place in the last
  clustering's trace (``joins``);
* its place in every decision's payload (the records a merge, split or keep-apart named,
  the records a decision moved, the scores a decision kept for conflict checks);
* the term-frequency rows of the stored models (``model_tf``) for values that only this
  record held (a value other records hold stays: it is theirs too, and in their rows);

then re-clusters what is left of its entity from the stored links through the decisions'
write path (:func:`idweave.linkage.review.apply_decision`, action ``erase``): if the record
was a bridge, the entity splits, the largest part keeping the id. The erasure is written as
a decision (who, when, why), a ``record_erased`` event naming the record id and the reason
(no attribute value), and a row of the ``erasures`` table (source, record id, a SHA-256 of
both, reason, time, author). Killed or failing halfway, the store is as it was.

The model JSON holds m and u probabilities only (no value, no tf table), so erasing a
record leaves it unchanged; a retrain (``link --retrain``) learns from the records that
remain, so the erased one has no part in it.

A later run that finds an erased record in its source refuses (:func:`screen_erased`,
exit 2, naming the source and the record id), unless the project says ``erasure:
suppress``: then the record is skipped and counted (``erased_skipped`` in the summary).

>>> import shutil, tempfile
>>> from pathlib import Path
>>> from idweave.linkage import link, load_project
>>> tmp = Path(tempfile.mkdtemp()); _ = shutil.copytree("fixtures/tiny", tmp / "tiny")
>>> p = load_project(tmp / "tiny" / "project.yaml"); p.store = tmp / "store.duckdb"
>>> first = link(p).entities.row(0)
>>> res = forget(p, first[0], first[1], reason="subject asked for erasure", author="dpo")
>>> res.record == (first[0], first[1]), res.entity_id == first[2]
(True, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.linkage.errors import IdweaveError, SourceError, StoreBusyError
from idweave.linkage.graph import ERASURES_DDL, Store, utc_now
from idweave.linkage.project import Project

__all__ = ["forget", "ForgetResult", "erased", "screen_erased", "erased_neighbours", "clear_pending",
           "ERASURES_DDL"]

ProjectLike = Project | str | Path | Mapping[str, Any]

# ERASURES_DDL (graph.py): the erasures, and erasure_pending: records that had a link to an
# erased record. The next incremental run treats them as it treats the neighbours of a record
# gone from its source (their clusters are decided again, not replayed from the trace the
# erased record was part of), then empties the table.

_PAYLOAD_RECORD_LISTS = ("records_a", "records_b", "records", "rest", "left", "right")


@dataclass
class ForgetResult:
    """What :func:`forget` did."""

    record: tuple[str, str]
    entity_id: str
    decision_id: int
    entities: list[str]            # the entities its records are in now (none if it was alone)
    moved: int                     # records that changed entity (a split)
    events: int
    notes: list[str] = field(default_factory=list)


def id_digest(source: str, record_id: str) -> str:
    """SHA-256 of ``source NUL record_id`` (kept with the erasure, so systems that hold the
    id can check for it without reading the id itself).

    >>> id_digest("tax", "T1")[:12]
    'cad3485d3d01'
    """
    return hashlib.sha256(f"{source}\x00{record_id}".encode()).hexdigest()


def _scrub(payload: dict[str, Any], rec: tuple[str, str]) -> tuple[dict[str, Any], bool]:
    """The decision payload without the record ``rec`` (and whether it named it)."""
    s, r = rec
    hit = False
    out = dict(payload)
    for key in _PAYLOAD_RECORD_LISTS:
        items = out.get(key)
        if isinstance(items, list):
            kept = [x for x in items if not (isinstance(x, list) and len(x) >= 2 and x[0] == s and x[1] == r)]
            hit |= len(kept) != len(items)
            out[key] = kept
    moved = out.get("moved")
    if isinstance(moved, list):
        kept = [m for m in moved if not (m[0] == s and m[1] == r)]
        hit |= len(kept) != len(moved)
        out["moved"] = kept
    extremes = out.get("extremes")
    if isinstance(extremes, list):
        kept = [x for x in extremes if not ((x[0] == s and x[1] == r) or (x[2] == s and x[3] == r))]
        hit |= len(kept) != len(extremes)
        out["extremes"] = kept
    return out, hit


def forget(project: ProjectLike, source: str, record_id: str, *, reason: str, author: str | None = None) -> ForgetResult:
    """Erase the record ``(source, record_id)`` from the store and re-resolve its entity
    (see the module docstring). ``reason`` is required; ``author`` defaults as for a
    decision (``$IDWEAVE_AUTHOR``, else the operating-system user)."""
    from idweave.linkage.project import resolve_project
    from idweave.linkage.decisions import apply_decision, default_author

    if not reason or not str(reason).strip():
        raise IdweaveError("an erasure needs a reason (--reason TEXT)")
    proj = resolve_project(project)
    source, record_id = str(source), str(record_id)
    ref = f"{source}:{record_id}"
    Store.require_file(proj.store)
    # Checked read-only first: bad input never opens the store for writing.
    with Store.open(proj.store, read_only=True) as st:
        _check_erasable(st, source, record_id, ref)
    who = author or default_author()
    with Store.open(proj.store) as st:
        row = _check_erasable(st, source, record_id, ref)
        rk, eid = int(row["rk"]), row["entity_id"]
        # The decision below writes inside this transaction: the erasure and it commit as one.
        outer = st.nested()
        st.begin()
        try:
            # The tf values only it holds go first (read from the records it is among).
            _erase_tf_values(st, proj, row)
            st.erase_record(rk)  # its links' other records: decided again by the next incremental run
            for did, p in st.decision_payloads():
                p2, hit = _scrub(p, (source, record_id))
                if hit:
                    st.set_decision_payload(did, p2)
            rest = set(st.members(eid))
            res = apply_decision(outer, proj, "erase", payload={"entity": eid, "erased": [source, record_id]},
                                 author=who, reason=str(reason), seeds=rest, main=(eid, None))
            events = [{"type": "record_erased", "entity_id": eid, "source": source, "record_id": record_id,
                       "detail": str(reason)}]
            if not rest:
                st.retire_entity(eid)
                events.append({"type": "entity_retired", "entity_id": eid})
            n = st.append_events(events, decision_id=res.decision_id)
            st.record_erasure([source, record_id, id_digest(source, record_id), str(reason), utc_now(), who,
                               res.decision_id])
            st.commit()
        except BaseException:
            st.rollback()
            raise
    return ForgetResult(record=(source, record_id), entity_id=eid, decision_id=res.decision_id,
                        entities=res.entities, moved=res.moved, events=res.events + n, notes=res.notes)


def _check_erasable(st: Store, source: str, record_id: str, ref: str) -> dict[str, Any]:
    if st.is_erased(source, record_id):
        raise IdweaveError(f"record {ref} was erased already")
    st.require(records=True)
    got = st.record_row(source, record_id)
    if got.height == 0:
        raise IdweaveError(f"no record {ref} in the store")
    return got.row(0, named=True)


def _erase_tf_values(st: Store, proj: Project, row: Mapping[str, Any]) -> None:
    """Drop the model_tf rows of values only this record holds (their frequency would tell
    that someone had that value)."""
    cols = st.tf_value_columns()
    have = set(st.columns("records"))
    for c in cols:
        v = row.get(c)
        if v is None or c not in have:
            continue
        if not st.value_held_elsewhere(c, v, int(row["rk"])):
            st.delete_tf_value(c, str(v))


# --------------------------------------------------------------------------------------
# later runs
# --------------------------------------------------------------------------------------
def erased(store: str | Path) -> pl.DataFrame:
    """``source``, ``record_id``, ``erased_at`` of every erased record (none without a store).

    >>> erased("out/no-such-store.duckdb").height
    0
    """
    schema = {"source": pl.Utf8, "record_id": pl.Utf8, "erased_at": pl.Datetime}
    if not Path(store).exists():
        return pl.DataFrame(schema=schema)
    with Store.open(store, read_only=True) as st:
        return st.erasure_list()


def _key(df: pl.DataFrame) -> pl.Series:
    return df.select(pl.concat_str([pl.col("source"), pl.col("record_id")], separator="\x00")).to_series()


def screen_erased(project: Project, loaded: Any, report: Any = None, *,
                  st: Store | None = None) -> tuple[Any, int | None]:
    """Loaded records (a frame, or a ``Reused``) without the erased ones, and how many were
    skipped; with ``erasure: refuse`` (the default) an erased record in a source is a
    :class:`~idweave.linkage.errors.SourceError` naming the source and the record id.
    ``st``: the store, when the caller holds it open already; without it, a store busy with
    another run gives ``(loaded, None)``: not screened yet."""
    from idweave.linkage.privacy import erasure_policy
    from idweave.linkage.sources import Reused

    if st is not None:
        gone = st.erased_keys()
    else:
        try:
            gone = erased(project.store)
        except StoreBusyError:  # another run holds it: the caller screens again once it has the store
            return loaded, None
    if gone.height == 0:
        return loaded, 0
    keys = loaded.keys if isinstance(loaded, Reused) else loaded
    gone_key = _key(gone).implode()
    hit = _key(keys).is_in(gone_key)
    n = int(hit.sum())
    if n == 0:
        return loaded, 0
    if erasure_policy(project) != "suppress":
        first = keys.filter(hit).sort("source", "record_id").row(0, named=True)
        src = project.sources.get(first["source"])
        raise SourceError(f"record {first['source']}:{first['record_id']} was erased (idweave forget) but is in the "
                          f"source again{f' (and {n - 1} more)' if n > 1 else ''}; remove it from the source, or set "
                          "`erasure: suppress` in the project file to skip erased records",
                          file=src.label if src is not None else None)
    if report is not None and getattr(report, "rows", None) is not None:
        for s, c in keys.filter(hit).group_by("source").len().iter_rows():
            if s in report.rows:
                report.rows[s] -= int(c)
    if isinstance(loaded, Reused):
        fresh = loaded.fresh.filter(~_key(loaded.fresh).is_in(gone_key))
        return Reused(keys=loaded.keys.filter(~hit), fresh=fresh), n
    return loaded.filter(~hit), n


def erased_neighbours(st: Store, records: pl.DataFrame) -> pl.Series:
    """Rids of this run's records that had a link to a record erased since the last run."""
    pending = st.pending_erasure_rks()
    if pending.height == 0:
        return pl.Series("rid", [], dtype=pl.Int64)
    return records.join(pending.cast({"rk": pl.Int64}), on="rk", how="semi")["rid"]


def clear_pending(st: Store) -> None:
    """Empty ``erasure_pending`` (inside the run's transaction: the run has decided those
    records' clusters again)."""
    st.clear_erasure_pending()
