"""History: what happened to an entity, and what a run changed.

Every change to the identity graph is an event in the store's append-only ``events`` table,
naming the run (or the human decision) that made it. :func:`history` gathers the events of
an entity and of every id that was merged into it, so a downstream system holding an old id
can follow it; :func:`diff` lists the events of one run.

>>> from idweave.linkage import link
>>> r = link("fixtures/tiny/project.yaml")
>>> eid = r.entities["entity_id"][0]
>>> h = history("fixtures/tiny/project.yaml", eid)
>>> h.columns[:4]
['event_id', 'run_id', 'decision_id', 'happened_at']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.project import Project

__all__ = ["history", "diff", "resolve_entity", "Resolution", "EVENT_TYPES"]

ProjectLike = Project | str | Path | Mapping[str, Any]

#: what each event type means (``entity_id`` / ``other_entity_id`` columns)
EVENT_TYPES = {
    "entity_created": "a new entity (other: the entity it split from, if any)",
    "entity_split": "part of this entity became another one (other: the new entity)",
    "entities_merged": "another entity was merged into this one (other: the merged id, which now points here)",
    "entity_retired": "the entity lost its last record",
    "entity_restored": "a merged or retired entity became active again (a decision was undone)",
    "record_added": "a record seen for the first time joined this entity",
    "record_moved": "a record moved into this entity (other: the entity it left)",
    "record_changed": "a record's content changed (it stayed in this entity)",
    "record_removed": "a record is no longer in its source (it left this entity)",
    "decision": "a human decision (detail: the action)",
    "record_erased": "a record was erased by `idweave forget` (detail: the reason; no attribute value)",
}

_EVENT_COLS = ["event_id", "run_id", "decision_id", "happened_at", "type", "entity_id", "other_entity_id",
               "source", "record_id", "detail"]


@dataclass
class Resolution:
    """What an entity id stands for now."""

    asked: str
    entity_id: str        # the id to use now (the survivor of merges)
    status: str           # status of ``entity_id``: active or retired
    merged_run: int | None  # run in which ``asked`` was merged away (None if it was not, or by a decision)
    lineage: list[str]    # ``entity_id`` and every id merged into it
    merged_decision: int | None = None  # the decision that merged ``asked`` away, if one did

    @property
    def redirected(self) -> bool:
        return self.asked != self.entity_id


def _open(project: ProjectLike, store: str | Path | None) -> Store:
    from idweave.linkage.project import resolve_project

    proj = resolve_project(project)
    return Store.open(store if store is not None else proj.store, read_only=True)


def _resolve(st: Store, entity_id: str) -> Resolution:
    row = st.entity_status_changed(entity_id)
    if row is None:
        raise IdweaveError(f"no entity '{entity_id}' in the store", file=str(st.path),
                           hint="entity ids look like E1A2B3C4D5E6F (E and 12 hex digits); see `idweave export`")
    survivor = st.resolve(entity_id) or entity_id
    status = st.entity_status(survivor)
    merged_run = merged_decision = None
    if survivor != entity_id:
        # The last event that merged this id away (it may have been restored and merged again).
        ev = st.last_merge_of(entity_id)
        if ev is not None:
            merged_run, merged_decision = ev
        else:
            merged_run = row[1]
    return Resolution(entity_id, survivor, status, merged_run, st.lineage(survivor), merged_decision)


def resolve_entity(project: ProjectLike, entity_id: str, *, store: str | Path | None = None) -> Resolution:
    """Follow merges from ``entity_id`` to the id that stands for the entity now.

    >>> from idweave.linkage import link
    >>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> resolve_entity("fixtures/tiny/project.yaml", eid).entity_id == eid
    True
    """
    with _open(project, store) as st:
        return _resolve(st, entity_id)


def history(project: ProjectLike, entity_id: str, *, store: str | Path | None = None) -> pl.DataFrame:
    """The events of an entity, oldest first: those naming it or any id merged into it
    (an old, merged id is first resolved to its survivor: see :func:`resolve_entity`).

    Columns: ``event_id``, ``run_id``, ``decision_id``, ``happened_at``, ``type`` (see
    :data:`EVENT_TYPES`), ``entity_id``, ``other_entity_id``, ``source``, ``record_id``, ``detail``.

    >>> from idweave.linkage import link
    >>> r = link("fixtures/tiny/project.yaml")
    >>> eid = r.entities["entity_id"][0]
    >>> set(history("fixtures/tiny/project.yaml", eid)["type"]) <= set(EVENT_TYPES)
    True
    """
    with _open(project, store) as st:
        res = _resolve(st, entity_id)
        return st.events_of_entities(res.lineage, _EVENT_COLS)


def diff(project: ProjectLike, run: int, *, store: str | Path | None = None) -> pl.DataFrame:
    """What run ``run`` changed, one row per event, in order: ``change`` (the event type),
    ``entity_id``, ``other_entity_id``, ``source``, ``record_id``, ``detail``.

    A run that changed nothing has no rows. (A ``link`` that found nothing to do, mode
    ``unchanged``, made no run: its ``run_id`` is the last run's, and its ``events`` are 0.)

    >>> from idweave.linkage import link
    >>> r = link("fixtures/tiny/project.yaml", full=True)
    >>> diff("fixtures/tiny/project.yaml", r.run_id).height == r.summary["events"]
    True
    """
    with _open(project, store) as st:
        last = st.last_run()
        if not isinstance(run, int) or run < 1 or run > last:
            raise IdweaveError(f"no run {run} in the store; runs are numbered 1 to {last}", file=str(st.path))
        return st.run_changes(run)
