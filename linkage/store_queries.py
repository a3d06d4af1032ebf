"""The store's read-only queries for the side doors: explanations, history, subject access,
evaluation, exports, golden records, the model report and the workbench's views.

:class:`StoreReads` is a base class of :class:`~idweave.linkage.graph.Store`: every method
here only reads (none decides what a run or decision stores), so callers hold no SQL and
``graph.py`` keeps the schema, the transactions and the writes. :meth:`StoreReads.require`
is the one "run ``idweave link`` first" check.

>>> from idweave.linkage import link
>>> from idweave.linkage.graph import Store
>>> from idweave.linkage.project import load_project
>>> _ = link("fixtures/tiny/project.yaml")
>>> with Store.open(load_project("fixtures/tiny/project.yaml").store, read_only=True) as st:
...     st.require(records=True, model=True).entity_of("no-such-source", "1") is None
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import polars as pl

from idweave.linkage._db import fetch_one, query_pl
from idweave.linkage.errors import StoreError

__all__ = ["StoreReads", "NO_STORE", "NO_RECORDS", "NO_MODEL"]

NO_STORE = "no store yet: run `idweave link` first"
NO_RECORDS = "the store holds no records yet: run `idweave link` first"
NO_MODEL = "the store has no model yet: run `idweave link` first"

_LINK_KEY = ("source_l", "record_id_l", "source_r", "record_id_r", "match_probability")


class StoreReads:
    """Named reads of a store (mixed into :class:`~idweave.linkage.graph.Store`)."""

    path: Path
    con: duckdb.DuckDBPyConnection

    # ------------------------------------------------------------- what a command needs
    @staticmethod
    def require_file(path: str | Path) -> Path:
        """``path`` as a Path, if a store file is there; else the one "no store yet" error.

        >>> StoreReads.require_file("out/no-such-store.duckdb")
        Traceback (most recent call last):
        ...
        idweave.linkage.errors.StoreError: out/no-such-store.duckdb: no store yet: run `idweave link` first
        """
        path = Path(path)
        if not path.exists():
            raise StoreError(NO_STORE, file=str(path))
        return path

    def require(self, *, records: bool = False, model: bool = False) -> "StoreReads":
        """This store, if it holds what a command needs (``records``: a records table;
        ``model``: a run that recorded a model); else it is closed and the one "run
        ``idweave link`` first" error names it.

        >>> import tempfile
        >>> from idweave.linkage.graph import Store
        >>> st = Store.open(Path(tempfile.mkdtemp()) / "new.duckdb")
        >>> try:
        ...     st.require(records=True)
        ... except StoreError as exc:
        ...     print(exc.message)
        the store holds no records yet: run `idweave link` first
        """
        problem = None
        if records and not self.has_table("records"):
            problem = NO_RECORDS
        elif model and not self.has_model():
            problem = NO_MODEL
        if problem is not None:
            self.close()
            raise StoreError(problem, file=str(self.path))
        return self

    def has_model(self) -> bool:
        """Whether a run recorded a model the store keeps."""
        if not (self.has_table("runs") and self.has_table("models")):
            return False
        return fetch_one(self.con, "select 1 from runs r join models m on m.version = r.model_version limit 1") is not None

    # ------------------------------------------------------------- records
    def entity_of(self, source: str, record_id: str) -> str | None:
        """The entity of one stored record (None if the store does not hold it)."""
        row = fetch_one(self.con, "select entity_id from records where source = ? and record_id = ?",
                        [source, record_id])
        return None if row is None else row[0]

    def entities_of_record_id(self, record_id: str) -> list[str]:
        """The entities of the records of any source with id ``record_id``, by source."""
        return [e for (e,) in self.con.execute("select entity_id from records where record_id = ? order by source",
                                               [record_id]).fetchall()]

    def record_entity_index(self) -> pl.DataFrame:
        """``source``, ``record_id``, ``entity_id`` of every stored record (in table order)."""
        return query_pl(self.con, "select source, record_id, entity_id from records")

    def record_columns(self, columns: Sequence[str]) -> pl.DataFrame:
        """``columns`` of every stored record, by source and record id."""
        cols = ", ".join(f'"{c}"' for c in columns)
        return query_pl(self.con, f"select {cols} from records order by source, record_id")

    def entity_record_columns(self, columns: Sequence[str], entity_id: str | None = None) -> pl.DataFrame:
        """``entity_id``, ``source``, ``record_id``, ``last_seen_run`` and ``columns`` of the
        records of ``entity_id`` (None: of every active entity)."""
        cols = "".join(f', r."{c}"' for c in columns)
        if entity_id is not None:
            return query_pl(self.con, f"select r.entity_id, r.source, r.record_id, r.last_seen_run{cols} from records r "
                                      "where r.entity_id = ?", [entity_id])
        return query_pl(self.con, f"select r.entity_id, r.source, r.record_id, r.last_seen_run{cols} from records r "
                                  "join entities e on e.entity_id = r.entity_id and e.status = 'active'")

    def record_hashes_of(self, entity_id: str) -> list[tuple[str, str, str]]:
        """(source, record_id, content_hash) of an entity's records (in table order)."""
        return self.con.execute("select source, record_id, content_hash from records where entity_id = ?",
                                [entity_id]).fetchall()

    def sizes_of(self, entities: Iterable[str]) -> dict[str, int]:
        """Entity id -> how many records the store holds for it, of ``entities`` that have any."""
        ids = pl.DataFrame({"entity_id": sorted(set(entities))}, schema={"entity_id": pl.Utf8})
        self.con.register("_q_sizes", ids.to_arrow())
        try:
            return dict(self.con.execute("select entity_id, count(*) from records where entity_id in "
                                         "(select entity_id from _q_sizes) group by entity_id").fetchall())
        finally:
            self.con.unregister("_q_sizes")

    def entity_status_changed(self, entity_id: str) -> tuple[str, int | None] | None:
        """(status, changed run) of an entity (None: no such entity)."""
        row = fetch_one(self.con, "select status, changed_run from entities where entity_id = ?", [entity_id])
        return None if row is None else (row[0], row[1])

    def active_entities_like(self, pattern: str, limit: int) -> list[str]:
        """Up to ``limit`` active entity ids matching the ILIKE ``pattern`` (``\\`` escapes), sorted."""
        return [e for (e,) in self.con.execute("select entity_id from entities where status = 'active' "
                                               "and entity_id ilike ? escape '\\' order by entity_id limit ?",
                                               [pattern, int(limit)]).fetchall()]

    # ------------------------------------------------------------- links
    def link_keys(self) -> pl.DataFrame:
        """``source_l``, ``record_id_l``, ``source_r``, ``record_id_r``, ``match_probability``
        of every stored link (in table order)."""
        return query_pl(self.con, f"select {', '.join(_LINK_KEY)} from links")

    def link_between(self, left: tuple[str, str], right: tuple[str, str]) -> pl.DataFrame:
        """``rule`` and ``match_probability`` of the stored link of one pair (either way round)."""
        return query_pl(self.con, "select rule, match_probability from links where (source_l = ? and record_id_l = ? "
                                  "and source_r = ? and record_id_r = ?) or (source_l = ? and record_id_l = ? and "
                                  "source_r = ? and record_id_r = ?)", [*left, *right, *right, *left])

    def link_count(self) -> int:
        """How many links the store holds."""
        return int(fetch_one(self.con, "select count(*) from links")[0])

    def link_level_counts(self, column: str) -> dict[int, int]:
        """Level -> how many stored links reached it in ``column`` (a ``level_`` column; null -1)."""
        return {(-1 if g is None else int(g)): int(n)
                for g, n in self.con.execute(f'select "{column}", count(*) from links group by 1').fetchall()}

    # ------------------------------------------------------------- events
    def events_of_entities(self, entities: Iterable[str], columns: Sequence[str]) -> pl.DataFrame:
        """``columns`` of the events naming any of ``entities`` (as entity or other entity),
        oldest first."""
        ids = pl.DataFrame({"entity_id": list(entities)}, schema={"entity_id": pl.Utf8})
        self.con.register("_q_ids", ids.to_arrow())
        try:
            return query_pl(self.con, f"select {', '.join('e.' + c for c in columns)} from events e "
                                      "where e.entity_id in (select entity_id from _q_ids) "
                                      "or e.other_entity_id in (select entity_id from _q_ids) order by e.event_id")
        finally:
            self.con.unregister("_q_ids")

    def events_of_records(self, recs: pl.DataFrame) -> pl.DataFrame:
        """Every event (every column) naming one of the records ``recs`` (``source``, ``record_id``)."""
        self.con.register("_q_recs_ev", recs.select("source", "record_id").to_arrow())
        try:
            return query_pl(self.con, "select e.* from events e semi join _q_recs_ev s "
                                      "on e.source = s.source and e.record_id = s.record_id")
        finally:
            self.con.unregister("_q_recs_ev")

    def run_changes(self, run_id: int) -> pl.DataFrame:
        """What run ``run_id`` changed, one row per event in order: ``change`` (the event
        type), ``entity_id``, ``other_entity_id``, ``source``, ``record_id``, ``detail``."""
        return query_pl(self.con, "select type as change, entity_id, other_entity_id, source, record_id, detail "
                                  "from events where run_id = ? order by event_id", [run_id])

    def decision_events(self, decision_id: int) -> pl.DataFrame:
        """``type``, ``entity_id``, ``other_entity_id``, ``source``, ``record_id`` of a
        decision's events, in order."""
        return query_pl(self.con, "select type, entity_id, other_entity_id, source, record_id from events "
                                  "where decision_id = ? order by event_id", [int(decision_id)])

    def last_merge_of(self, entity_id: str) -> tuple[int | None, int | None] | None:
        """(run, decision) of the last event that merged ``entity_id`` away (None: none did)."""
        row = fetch_one(self.con, "select run_id, decision_id from events where type = 'entities_merged' "
                                  "and other_entity_id = ? order by event_id desc limit 1", [entity_id])
        return None if row is None else (row[0], row[1])

    # ------------------------------------------------------------- runs, models, decisions
    def last_threshold(self) -> float | None:
        """The latest run's threshold (None before the first run)."""
        row = fetch_one(self.con, "select threshold from runs order by run_id desc limit 1")
        return None if row is None else float(row[0])

    def last_run_threshold(self) -> tuple[int, float] | None:
        """(run id, threshold) of the latest run (None before the first)."""
        row = fetch_one(self.con, "select run_id, threshold from runs order by run_id desc limit 1")
        return None if row is None else (int(row[0]), float(row[1]))

    def last_run_clustering(self) -> pl.DataFrame:
        """``threshold``, ``clustering`` of the latest run (no rows before the first)."""
        return query_pl(self.con, "select threshold, clustering from runs order by run_id desc limit 1")

    def run_rows(self, columns: Sequence[str], run_id: int | None = None, *, newest: int | None = None) -> pl.DataFrame:
        """``columns`` of every run (or of run ``run_id``) by run id; or of the ``newest``
        runs, newest first."""
        where, params = ("", []) if run_id is None else (" where run_id = ?", [run_id])
        order = " order by run_id" if newest is None else f" order by run_id desc limit {int(newest)}"
        return query_pl(self.con, f"select {', '.join(columns)} from runs{where}{order}", params)

    def run_summaries(self, model_version: str) -> list[str | None]:
        """The ``summary`` JSON of every run that used ``model_version``, by run id."""
        return [x for (x,) in self.con.execute("select summary from runs where model_version = ? order by run_id",
                                               [model_version]).fetchall()]

    def model_rows(self, version: str | None = None) -> pl.DataFrame:
        """``version``, ``created_run``, ``created_at``, ``splink_version`` of every stored
        model (or of ``version``), by the run that made it."""
        where, params = ("", []) if version is None else (" where version = ?", [version])
        return query_pl(self.con, "select version, created_run, created_at, splink_version from models"
                                  f"{where} order by created_run", params)

    def latest_settings(self) -> dict[str, Any] | None:
        """The settings of the latest run's model (None: no run recorded one)."""
        row = fetch_one(self.con, "select m.settings from runs r join models m on m.version = r.model_version "
                                  "order by r.run_id desc limit 1")
        return None if row is None else json.loads(row[0])

    def decision_summary(self, decision_id: int) -> tuple[str, str, str] | None:
        """(action, author, reason) of a decision (None: no such decision)."""
        row = fetch_one(self.con, "select action, author, reason from decisions where decision_id = ?",
                        [int(decision_id)])
        return None if row is None else (row[0], row[1], row[2])
