"""The identity store: a DuckDB file any DuckDB client can query with plain SQL.

Tables (the README's "Identity store" section describes every column):

* ``records``   one row per (source, record_id): cleaned attributes, content hash, entity_id,
                first and last seen run
* ``links``     every scored candidate pair, with match weight, probability and per-comparison
                evidence (``level_<attr>``, ``w_<attr>``)
* ``entities``  persistent ids: status ``active`` / ``merged`` (``merged_into``) / ``retired``,
                ``split_from``, created and last changed run
* ``runs``      one row per run: time, project hash, model version, counts
* ``events``    append-only history: entity created / merged / split / retired, record added /
                moved / changed / removed; each names its run (or decision)
* ``decisions`` human decisions (see review.py)
* ``models``    every model version used, as Splink JSON, and ``model_tf`` its tf tables
* ``model_sql`` what Splink made of each model for scoring (its SQL and weights), per Splink
                version and compile key, so that a run reusing the model does not load Splink
* ``components`` each record's connected component of the last run's strong links and
                must-links (``rk``, ``component``): what an incremental run re-clusters
                (see ``_incremental.py``)

Persistent ids: every cluster of a run inherits the id of the old entity it holds the largest
part of; when a cluster holds the largest part of several old entities the oldest id survives
and the others become ``merged`` into it; a cluster that holds no entity's largest part gets a
new, opaque id (``split_from`` names the entity it came from, if any). An incremental run
(see ``_incremental.py``) passes only the re-clustered records to :func:`assign_ids`: every
old entity it touches lies wholly among them, so the ids are those a full run would give.

>>> store = Store.open("out/doctest.duckdb")
>>> store.last_run() >= 0
True
>>> store.close()
"""

from __future__ import annotations

import contextvars
import json
import os
import secrets
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import duckdb
import polars as pl

from idweave.linkage._db import fetch_one, query_pl

from idweave.linkage.errors import StoreBusyError, StoreError
from idweave.linkage.store_queries import NO_STORE, StoreReads

__all__ = ["Store", "assign_ids", "IdAssignment", "new_entity_id", "utc_now", "SCHEMA_VERSION", "QUEUE_TABLE",
           "QUEUE_SCHEMA"]

SCHEMA_VERSION = 1

_BASE_DDL = """
create table if not exists meta (key varchar primary key, value varchar);
create table if not exists runs (
    run_id integer primary key, started_at timestamp, finished_at timestamp, mode varchar,
    project_hash varchar, model_version varchar, threshold double, clustering varchar,
    n_records integer, n_new integer, n_changed integer, n_removed integer,
    n_pairs bigint, n_links bigint, n_entities integer, n_events integer, summary json,
    signature varchar);
create table if not exists entities (
    entity_id varchar primary key, status varchar not null, merged_into varchar, split_from varchar,
    created_run integer, changed_run integer, size integer);
create table if not exists events (
    event_id bigint primary key, run_id integer, decision_id integer, happened_at timestamp, type varchar,
    entity_id varchar, other_entity_id varchar, source varchar, record_id varchar, detail varchar);
create table if not exists decisions (
    decision_id integer primary key, decided_at timestamp, author varchar, action varchar, reason varchar,
    payload json, undone_by integer, undoes integer);
create table if not exists models (
    version varchar primary key, created_run integer, created_at timestamp, splink_version varchar,
    settings json);
create table if not exists model_tf (version varchar, "column" varchar, value varchar, tf double);
create table if not exists model_sql (
    version varchar, splink_version varchar, compile_key varchar, created_run integer, compiled json,
    primary key (version, splink_version, compile_key));
"""

_MIGRATIONS = (
    "alter table runs add column if not exists signature varchar",
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_entity_id() -> str:
    """A new opaque entity id: random, never derived from record ids or data."""
    return "E" + secrets.token_hex(6).upper()


@dataclass
class IdAssignment:
    """The result of :func:`assign_ids`: record -> entity id, and what changed."""

    entity_of: dict[tuple[str, str], str]
    events: list[dict[str, Any]] = field(default_factory=list)
    created: list[tuple[str, str | None]] = field(default_factory=list)  # (id, split_from)
    merged: list[tuple[str, str]] = field(default_factory=list)  # (loser, survivor)
    retired: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    restored: list[str] = field(default_factory=list)  # dormant ids inherited again


def assign_ids(
    clusters: dict[tuple[str, str], int],
    old_entity_of: dict[tuple[str, str], str],
    entity_age: dict[str, tuple[int, str]],
    *,
    mint=new_entity_id,
    claims: Mapping[tuple[str, str], str | None] | None = None,
    dormant: Mapping[str, str | None] | None = None,
) -> IdAssignment:
    """Give each cluster a persistent id.

    ``clusters`` maps (source, record_id) -> cluster label of this run (records of the
    affected part of the graph). ``old_entity_of`` maps records already in the store to
    their entity. ``entity_age`` gives each old entity a sort key (created run, id): lower
    is older, and the oldest survives a merge (of equally old ones, the one with the most
    records in the merged cluster, then the smallest id).

    >>> a = assign_ids({("s", "1"): 0, ("s", "2"): 0}, {("s", "1"): "EA", ("s", "2"): "EB"},
    ...                {"EA": (1, "EA"), "EB": (2, "EB")})
    >>> a.entity_of[("s", "2")], a.merged
    ('EA', [('EB', 'EA')])

    ``claims`` (a decision's basis) says which old entity each record's id passes to, where
    that is not the entity it is in now (``old_entity_of``, which the events compare with):
    None claims none (records a split takes out start a new entity), an id of ``dormant``
    (entities merged away, id -> the one they went into) revives it (``entity_restored``).
    An entity no record claims any more is merged into the one holding most of its records.

    >>> a = assign_ids({("s", "1"): 0, ("s", "2"): 1}, {("s", "1"): "EA", ("s", "2"): "EA"},
    ...                {"EA": (1, "EA"), "EB": (1, "EB")}, claims={("s", "2"): "EB"}, dormant={"EB": "EA"})
    >>> a.entity_of[("s", "2")], a.restored, [e["type"] for e in a.events]
    ('EB', ['EB'], ['entity_restored', 'record_moved'])
    """
    claims = old_entity_of if claims is None else {**old_entity_of, **claims}
    dormant = dormant or {}
    members: dict[int, list[tuple[str, str]]] = {}
    for rec, c in clusters.items():
        members.setdefault(c, []).append(rec)
    # Overlap of each old entity with each new cluster.
    overlap: dict[str, dict[int, int]] = {}
    for rec, c in clusters.items():
        e = claims.get(rec)
        if e is not None:
            overlap.setdefault(e, {}).setdefault(c, 0)
            overlap[e][c] += 1
    cluster_key = {c: min(recs) for c, recs in members.items()}
    # Each old entity's heir: the cluster holding most of its records (ties: smallest key).
    heir: dict[str, int] = {}
    for e, by_c in overlap.items():
        heir[e] = min(by_c, key=lambda c: (-by_c[c], cluster_key[c]))
    heirs_of: dict[int, list[str]] = {}
    for e, c in heir.items():
        heirs_of.setdefault(c, []).append(e)

    out = IdAssignment(entity_of={})
    for c in sorted(members, key=lambda c: cluster_key[c]):
        # The oldest survives; of equally old ones, the one bringing the most records (fewest moves).
        inherited = sorted(heirs_of.get(c, []),
                           key=lambda e: (entity_age.get(e, (10**9, e))[0], -overlap[e][c], e))
        if inherited:
            eid = inherited[0]
            if eid in dormant:
                out.restored.append(eid)
                out.touched.add(eid)
                out.events.append({"type": "entity_restored", "entity_id": eid, "other_entity_id": dormant[eid]})
            for loser in inherited[1:]:
                out.merged.append((loser, eid))
                out.events.append({"type": "entities_merged", "entity_id": eid, "other_entity_id": loser})
                out.touched |= {eid, loser}
        else:
            parents = sorted({old_entity_of[r] for r in members[c] if r in old_entity_of},
                             key=lambda e: entity_age.get(e, (10**9, e)))
            eid = mint()
            split_from = parents[0] if parents else None
            out.created.append((eid, split_from))
            out.touched.add(eid)
            out.events.append({"type": "entity_created", "entity_id": eid,
                               "other_entity_id": split_from,
                               "detail": "split" if split_from else None})
            for p in parents:
                out.events.append({"type": "entity_split", "entity_id": p, "other_entity_id": eid})
                out.touched.add(p)
        for rec in sorted(members[c]):
            before = old_entity_of.get(rec)
            out.entity_of[rec] = eid
            if before is None:
                out.events.append({"type": "record_added", "entity_id": eid, "source": rec[0], "record_id": rec[1]})
                out.touched.add(eid)
            elif before != eid:
                out.events.append({"type": "record_moved", "entity_id": eid, "other_entity_id": before,
                                   "source": rec[0], "record_id": rec[1]})
                out.touched |= {eid, before}
    # An entity whose records all claim others (a decision's basis) goes into the entity
    # holding most of them; with no claims every old entity has an heir and this finds none.
    ids = set(out.entity_of.values()) | {loser for loser, _ in out.merged}
    now_in: dict[str, dict[str, int]] = {}
    for rec in sorted(out.entity_of):
        e = old_entity_of.get(rec)
        if e is not None and e not in ids:
            by = now_in.setdefault(e, {})
            by[out.entity_of[rec]] = by.get(out.entity_of[rec], 0) + 1
    for e in sorted(now_in):
        heir_id = min(now_in[e], key=lambda x: (-now_in[e][x], x))
        out.merged.append((e, heir_id))
        out.touched |= {e, heir_id}
        out.events.append({"type": "entities_merged", "entity_id": heir_id, "other_entity_id": e})
    return out


#: The stored review queue (see queue.py): one row per item, ``found`` its reasons in detector
#: order as JSON ``[[reason, score, detail], ...]``; ``digest``s are the entities' record digests.
QUEUE_TABLE = "review_queue"
QUEUE_SCHEMA = {"entity_id": pl.Utf8, "other_entity_id": pl.Utf8, "reason": pl.Utf8, "reasons": pl.List(pl.Utf8),
                "detail": pl.Utf8, "size": pl.Int32, "other_size": pl.Int32, "link": pl.Float64, "score": pl.Float64,
                "suggested_split": pl.List(pl.Utf8), "found": pl.Utf8, "sources": pl.List(pl.Utf8),
                "probabilities": pl.List(pl.Float64), "digest": pl.Utf8, "other_digest": pl.Utf8, "hard": pl.Boolean}
_QUEUE_DDL = f"""
create table if not exists {QUEUE_TABLE} (
    entity_id varchar, other_entity_id varchar, reason varchar, reasons varchar[], detail varchar, size integer,
    other_size integer, link double, score double, suggested_split varchar[], found json, sources varchar[],
    probabilities double[], digest varchar, other_digest varchar, hard boolean);
create table if not exists {QUEUE_TABLE}_dirty (entity_id varchar);
"""

_ENTITY_SCHEMA = {"entity_id": pl.Utf8, "status": pl.Utf8, "merged_into": pl.Utf8, "split_from": pl.Utf8,
                  "created_run": pl.Int32, "changed_run": pl.Int32, "size": pl.Int32}

_RECORD_INDEX_SCHEMA = {"source": pl.Utf8, "record_id": pl.Utf8, "content_hash": pl.Utf8, "entity_id": pl.Utf8,
                        "first_seen_run": pl.Int32, "last_seen_run": pl.Int32, "rk": pl.Int64, "raw_hash": pl.UInt64}


class Store(StoreReads):
    """An open identity store. Use :meth:`open`; writes happen inside :meth:`transaction`."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, read_only: bool):
        self.path = path
        self.con = con
        self.read_only = read_only

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, wait: float = 0.0) -> "Store":
        """Open (creating if needed, unless ``read_only``) the store at ``path``.

        A store held by another run raises :class:`StoreBusyError` after waiting up to
        ``wait`` seconds for it.
        """
        path = Path(path)
        if read_only:
            shared = _READING.get()
            if shared is not None and os.path.abspath(shared.path) == os.path.abspath(path):
                borrowed = _Borrowed(shared.path, shared.con, True)
                borrowed._catalog = shared.__dict__.setdefault("_catalog", {})
                return borrowed
        if read_only and not path.exists():
            raise StoreError(NO_STORE, file=str(path))
        if not read_only:
            _check_writable(path)
            if path.exists() and path.stat().st_size > 0:
                # Looked at read-only first: a file that is not an idweave store is refused
                # before anything could write to it (it stays byte for byte as it was).
                _check_marker(path, wait)
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        head = None if read_only else _head(path)  # before DuckDB holds the file (see _restore_sizes)
        con = _connect_waiting(lambda: _connect(path, read_only), path, wait)
        store = cls(path, con, read_only)
        store._head = head
        if not read_only:
            store._note_files()
            try:
                store._ensure_schema()
            except duckdb.Error as exc:
                store._failed = True
                store.close()
                raise StoreError(_open_problem(str(exc)), file=str(path)) from None
        else:
            store._check_schema()
        return store

    @classmethod
    @contextmanager
    def reading(cls, path: str | Path, *, wait: float = 0.0) -> Iterator[Store]:
        """One read-only opening of the store at ``path`` for the block: every
        ``Store.open(path, read_only=True)`` inside it (in this thread or task) gets this
        connection, and its ``close`` leaves it open, so the library calls that gather one
        screen read one state of the store and pay for one opening. Opening for writing is
        not affected (and waits for no reader of this process: close the block first).

        >>> with Store.reading("out/doctest.duckdb") as st:
        ...     with Store.open("out/doctest.duckdb", read_only=True) as again:
        ...         again.con is st.con
        True
        """
        st = cls.open(path, read_only=True, wait=wait)
        token = _READING.set(st)
        try:
            yield st
        finally:
            _READING.reset(token)
            st.close()

    def close(self) -> None:
        """Close the connection. After a write that failed (see :meth:`begin`), the store's
        files are cut back to their sizes before it, so that a failed run leaves them as they
        were (DuckDB appends the blocks of a transaction and its log at the end of the files)."""
        failed = getattr(self, "_failed", False)
        try:
            self.con.close()
        except duckdb.Error:
            if not failed:
                raise
        if failed:
            self._restore_sizes()

    def _files(self) -> list[Path]:
        return [self.path, self.path.with_name(self.path.name + ".wal")]

    def _note_files(self) -> None:
        """Note the store's file sizes before a write, for :meth:`_restore_sizes`. (By
        ``stat`` only: opening the file while DuckDB holds it would drop DuckDB's lock, since
        POSIX record locks go with any descriptor of the file that the process closes.)"""
        self._sizes = {f: (f.stat().st_size if f.exists() else None) for f in self._files()}

    def _restore_sizes(self) -> None:
        """Cut the files back after a failed write, but only when nothing valid can lie
        beyond the old ends: the log was empty before (no earlier commit waiting to be
        checkpointed) and the database's headers are as they were when the store was opened
        (DuckDB wrote no checkpoint that refers to the new blocks; they are read before the
        connection and after it is closed, never while DuckDB holds the file). Otherwise the
        files stay as DuckDB left them, which is the old content."""
        before = getattr(self, "_sizes", None) or {}
        wal = self._files()[1]
        if before.get(wal) or _head(self.path) != getattr(self, "_head", None):
            self._failed = False
            return
        for f, size in before.items():
            try:
                if size is None:
                    if f.exists() and f.name.endswith(".wal"):
                        f.unlink()  # a log this failed write created
                elif f.exists() and f.stat().st_size > size:
                    os.truncate(f, size)
            except OSError:
                pass  # best effort: the store's content is the old one either way
        self._failed = False

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and _disk_full(exc):
            self._failed = True
        self.close()
        if exc is not None and _disk_full(exc) and not isinstance(exc, StoreError):
            raise disk_full_error(self.path, exc) from None

    def _ensure_schema(self) -> None:
        self.con.execute("begin transaction")
        self.con.execute(_BASE_DDL)
        # Additive changes to stores made by earlier builds of this schema version.
        for ddl in _MIGRATIONS:
            self.con.execute(ddl)
        self.con.execute("insert or ignore into meta values ('schema_version', ?)", [str(SCHEMA_VERSION)])
        self.con.execute("commit")
        self._check_schema()

    def _check_schema(self) -> None:
        tables, version = _marker(self.con)
        problem = store_marker_problem(tables, version) if tables else \
            f"{_NOT_A_STORE}: the database is empty (no meta table); run `idweave link` first"
        if problem is None and "meta" not in tables:
            problem = f"{_NOT_A_STORE} (it has no meta table)"  # read-only: the marker cannot be added
        if problem:
            raise StoreError(problem, file=str(self.path))

    # ---------------------------------------------------------------- reading
    def has_table(self, name: str) -> bool:
        return bool(fetch_one(self.con, 
            "select count(*) from information_schema.tables where table_name = ?", [name])[0])

    def columns(self, table: str) -> list[str]:
        """The column names of a table (none if it does not exist)."""
        return [c for (c,) in self.con.execute("select column_name from information_schema.columns "
                                               "where table_name = ? order by ordinal_position", [table]).fetchall()]

    def records(self) -> pl.DataFrame:
        """All stored records (empty frame before the first run)."""
        if not self.has_table("records"):
            return pl.DataFrame(schema={"source": pl.Utf8, "record_id": pl.Utf8, "content_hash": pl.Utf8,
                                        "entity_id": pl.Utf8})
        return query_pl(self.con, "select * from records order by source, record_id")

    def links(self) -> pl.DataFrame:
        if not self.has_table("links"):
            return pl.DataFrame()
        return query_pl(self.con, "select * from links")

    @staticmethod
    def empty_record_index() -> pl.DataFrame:
        return pl.DataFrame(schema=_RECORD_INDEX_SCHEMA)

    def record_index(self) -> pl.DataFrame:
        """Every stored record's key, content hash, raw hash (null in stores written before it
        existed), entity and first/last seen run (no attributes).

        This is what an incremental run compares the sources with.
        """
        schema = _RECORD_INDEX_SCHEMA
        if not self.has_table("records"):
            return self.empty_record_index()
        cols = self.columns("records")
        rk = "rk" if "rk" in cols else "null::bigint as rk"  # stores written before rk existed
        raw = "raw_hash" if "raw_hash" in cols else "null::ubigint as raw_hash"
        df = query_pl(self.con, "select source, record_id, content_hash, entity_id, first_seen_run, last_seen_run, "
                                f"{rk}, {raw} from records")
        return df.cast(schema) if df.height else self.empty_record_index()

    def attributes_of(self, rks: pl.Series, attributes: Iterable[str]) -> pl.DataFrame:
        """``rk`` and the stored cleaned ``attributes`` of the records ``rks``."""
        cols = ", ".join(f'r."{a}"' for a in attributes)
        with self.registered("_want_rk", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
            return query_pl(self.con, f"select r.rk, {cols} from records r semi join _want_rk w on r.rk = w.rk")

    def records_for(self, keys: pl.DataFrame, columns: Iterable[str] | None = None) -> pl.DataFrame:
        """The stored rows (all columns, or ``columns``) of the records named by ``keys``
        (a frame with ``source`` and ``record_id``)."""
        cols = "r.*" if columns is None else ", ".join(f'r."{c}"' for c in columns)
        self.con.register("_want", keys.select("source", "record_id").to_arrow())
        try:
            return query_pl(self.con, f"select {cols} from records r join _want w "
                                      "on r.source = w.source and r.record_id = w.record_id")
        finally:
            self.con.unregister("_want")

    def write_state(self) -> tuple[Any, ...]:
        """What every writer of the store changes: the latest run, event, decision and model,
        the erasures and the meta values. A run that read the store read-only compares it
        with the state it finds when it opens the store to write (see ``pipeline._link``).

        >>> with Store.open("out/doctest.duckdb", read_only=True) as st:
        ...     st.write_state() == st.write_state()
        True
        """
        parts = ["(select coalesce(max(run_id), 0) from runs)", "(select coalesce(max(event_id), 0) from events)",
                 "(select coalesce(max(decision_id), 0) from decisions)", "(select count(*) from models)",
                 "(select hash(string_agg(key || '=' || coalesce(value, ''), ';' order by key)) from meta)"]
        if self.has_table("erasures"):
            parts += ["(select count(*) from erasures)", "(select count(*) from erasure_pending)"]
        return tuple(fetch_one(self.con, "select " + ", ".join(parts)))

    def ready_for_runs(self) -> bool:
        """True when the store has every table and column a run reads (a store made by this
        build, or upgraded by a run opened for writing: see ``_MIGRATIONS``)."""
        return {"runs", "events", "decisions", "models", "meta"} <= set(_marker(self.con)[0]) \
            and "signature" in self.columns("runs")

    def last_run_info(self) -> dict[str, Any] | None:
        """The latest run's threshold, clustering, model version and signature (None before
        the first run)."""
        row = fetch_one(self.con, "select run_id, threshold, clustering, model_version, signature from runs "
                                  "order by run_id desc limit 1")
        if row is None:
            return None
        return dict(zip(("run_id", "threshold", "clustering", "model_version", "signature"), row))

    def lineage(self, entity_id: str) -> list[str]:
        """The ids that now stand for the same entity as ``entity_id``: its survivor first,
        then every id merged into it (directly or through other merges), oldest first."""
        survivor = self.resolve(entity_id)
        if survivor is None:
            return []
        rows = self.con.execute("select entity_id, merged_into, coalesce(created_run, 0) from entities "
                                "where status = 'merged' and merged_into is not null").fetchall()
        into = {e: m for e, m, _ in rows}
        age = {e: c for e, _, c in rows}

        def final(e: str) -> str:
            seen = set()
            while e in into and e not in seen:
                seen.add(e)
                e = into[e]
            return e

        merged = sorted((e for e in into if final(e) == survivor), key=lambda e: (age[e], e))
        return [survivor, *merged]

    def entity_ages(self, ids: Iterable[str] | None = None) -> dict[str, tuple[int, str]]:
        """Entity id -> (created run, id): lower is older (of ``ids``, or of every entity)."""
        if ids is None:
            rows = self.con.execute("select entity_id, created_run from entities").fetchall()
        else:
            with self.registered("_age_ids", pl.DataFrame({"entity_id": sorted(ids)}, schema={"entity_id": pl.Utf8})):
                rows = self.con.execute("select e.entity_id, e.created_run from entities e "
                                        "semi join _age_ids i on e.entity_id = i.entity_id").fetchall()
        return {e: (r if r is not None else 0, e) for e, r in rows}

    def last_run(self) -> int:
        return int(fetch_one(self.con, "select coalesce(max(run_id), 0) from runs")[0])

    def latest_model(self) -> tuple[dict[str, Any], dict[str, pl.DataFrame], str] | None:
        """The model of the latest run that recorded one: (settings, tf tables, version).
        (:func:`~idweave.linkage.scoring.stored_model` also takes the compiled form the store
        keeps for it, :meth:`compiled_model`.)

        >>> store = Store.open("out/doctest.duckdb")
        >>> got = store.latest_model()
        >>> got is None or got[2] == store.last_run_info()["model_version"]
        True
        >>> store.close()
        """
        row = fetch_one(self.con, 
            "select m.version, m.settings from runs r join models m on m.version = r.model_version "
            "order by r.run_id desc limit 1")
        if row is None:
            return None
        version, settings = row
        tf = query_pl(self.con, 'select "column", value, tf from model_tf where version = ?', [version])
        tables = {c: tf.filter(pl.col("column") == c).select(pl.col("value").alias(c), pl.col("tf").alias(f"tf_{c}"))
                  for c in tf["column"].unique().to_list()}
        return json.loads(settings), tables, version

    def compiled_model(self, key: Sequence[str]) -> str | None:
        """The compiled form of a model kept under ``key`` (model version, Splink version,
        compile key: the caller's, see :func:`~idweave.linkage.scoring.compiled_key`), as
        :meth:`save_compiled` stored it; None if there is none (or the store predates
        ``model_sql``).

        >>> store = Store.open("out/doctest.duckdb")
        >>> store.compiled_model(["no such version", "5", "0" * 16]) is None
        True
        >>> store.close()
        """
        if not self.has_table("model_sql"):  # a read-only store from before model_sql
            return None
        row = fetch_one(self.con, "select compiled from model_sql where version = ? and splink_version = ? "
                                  "and compile_key = ?", list(key))
        return row[0] if row else None

    def resolve(self, entity_id: str) -> str | None:
        """Follow merges: the active entity an id now stands for (None if unknown)."""
        seen = set()
        cur = entity_id
        while cur not in seen:
            seen.add(cur)
            row = fetch_one(self.con, "select status, merged_into from entities where entity_id = ?", [cur])
            if row is None:
                return None
            if row[0] == "merged" and row[1]:
                cur = row[1]
                continue
            return cur
        return None

    # ---------------------------------------------------------------- writing
    def begin(self) -> None:
        """Start the transaction of a run or decision; the sizes of the store's files are
        noted, to cut them back to if it fails (see :meth:`close`)."""
        self._note_files()
        self.con.execute("begin transaction")

    def commit(self) -> None:
        try:
            self.con.execute("commit")
        except duckdb.Error as exc:
            self._failed = True
            if _disk_full(exc):
                raise disk_full_error(self.path, exc) from None
            raise

    def rollback(self) -> None:
        """Roll back (never raising: the error that led here is the one to report)."""
        self._failed = True
        try:
            self.con.execute("rollback")
        except duckdb.Error:
            pass

    def next_event_id(self) -> int:
        return int(fetch_one(self.con, "select coalesce(max(event_id), 0) + 1 from events")[0])

    def append_events(self, events: list[dict[str, Any]], *, run_id: int | None = None,
                      decision_id: int | None = None) -> int:
        if not events:
            return 0
        start = self.next_event_id()
        at = utc_now()
        rows = [{
            "event_id": start + i, "run_id": run_id, "decision_id": decision_id, "happened_at": at,
            "type": e["type"], "entity_id": e.get("entity_id"), "other_entity_id": e.get("other_entity_id"),
            "source": e.get("source"), "record_id": e.get("record_id"), "detail": e.get("detail"),
        } for i, e in enumerate(events)]
        df = pl.DataFrame(rows, schema={"event_id": pl.Int64, "run_id": pl.Int32, "decision_id": pl.Int32,
                                        "happened_at": pl.Datetime, "type": pl.Utf8, "entity_id": pl.Utf8,
                                        "other_entity_id": pl.Utf8, "source": pl.Utf8, "record_id": pl.Utf8,
                                        "detail": pl.Utf8})
        self.con.register("_ev", df.to_arrow())
        self.con.execute("insert into events by name select * from _ev")
        self.con.unregister("_ev")
        return len(rows)

    @contextmanager
    def registered(self, name: str, df: pl.DataFrame) -> Iterator[None]:
        """``df`` visible to SQL as ``name`` for the block's statements."""
        self.con.register(name, df.to_arrow())
        try:
            yield
        finally:
            self.con.unregister(name)

    def append(self, table: str, df: pl.DataFrame) -> None:
        """Insert ``df``'s rows into ``table``, matching columns by name (inside the caller's
        transaction)."""
        if df.height:
            with self.registered("_append", df):
                self.con.execute(f'insert into "{table}" by name select * from _append')

    def replace_table(self, name: str, df: pl.DataFrame) -> None:
        """Replace a whole table's content with ``df`` (inside the caller's transaction)."""
        self.con.register("_df", df.to_arrow())
        self.con.execute(f'create or replace table "{name}" as select * from _df')
        self.con.unregister("_df")

    def save_model(self, version: str, settings: dict[str, Any], tf_tables: dict[str, pl.DataFrame],
                   run_id: int, splink_version: str) -> None:
        """Record the model a run scored with (once per version), inside the caller's
        transaction. (What Splink made of it for scoring is kept apart, :meth:`save_compiled`.)

        >>> import tempfile
        >>> store = Store.open(Path(tempfile.mkdtemp()) / "store.duckdb")
        >>> store.begin(); store.save_model("v1", {"comparisons": []}, {}, 1, "5.0.0"); store.commit()
        >>> fetch_one(store.con, "select version, created_run from models")
        ('v1', 1)
        >>> store.close()
        """
        if not fetch_one(self.con, "select count(*) from models where version = ?", [version])[0]:
            self.con.execute("insert into models values (?, ?, ?, ?, ?)",
                             [version, run_id, utc_now(), splink_version, json.dumps(settings, default=str)])
            for col, tf in tf_tables.items():
                self.append("model_tf", tf.select(pl.lit(version).alias("version"), pl.lit(col).alias("column"),
                                                  pl.col(col).cast(pl.Utf8).alias("value"),
                                                  pl.col(f"tf_{col}").alias("tf")))

    def save_compiled(self, key: Sequence[str], run_id: int, text: str) -> None:
        """Keep ``text``, the compiled form of a model, under ``key`` (model version, Splink
        version, compile key: the caller's) inside the caller's transaction, unless the store
        holds one under that key already.

        >>> import tempfile
        >>> store = Store.open(Path(tempfile.mkdtemp()) / "store.duckdb")
        >>> store.begin(); store.save_compiled(["v1", "5.0.0", "k"], 1, '{"uid": "rid"}'); store.commit()
        >>> store.compiled_model(["v1", "5.0.0", "k"])
        '{"uid": "rid"}'
        >>> store.close()
        """
        if not self.has_table("model_sql") or self.compiled_model(key) is not None:
            return
        self.con.execute("insert into model_sql values (?, ?, ?, ?, ?)", [*key, run_id, text])

    # --- erasure (forget.py) and stored block keys (_blockkeys.py): inside the caller's transaction ---
    def record_row(self, source: str, record_id: str) -> pl.DataFrame:
        """The stored row (every column) of one record: no rows if the store does not hold it."""
        return query_pl(self.con, "select * from records where source = ? and record_id = ?", [source, record_id])

    def is_erased(self, source: str, record_id: str) -> bool:
        """Whether the record was erased (``idweave forget``)."""
        return self.has_table("erasures") and bool(fetch_one(
            self.con, "select count(*) from erasures where source = ? and record_id = ?", [source, record_id])[0])

    def erasure_list(self) -> pl.DataFrame:
        """``source``, ``record_id``, ``erased_at`` of every erased record, sorted (none
        before the first erasure)."""
        if not self.has_table("erasures"):
            return pl.DataFrame(schema={"source": pl.Utf8, "record_id": pl.Utf8, "erased_at": pl.Datetime})
        return query_pl(self.con, "select source, record_id, erased_at from erasures order by source, record_id")

    def erased_keys(self) -> pl.DataFrame:
        """``source``, ``record_id`` of every erased record (none before the first erasure)."""
        if not self.has_table("erasures"):
            return pl.DataFrame(schema={"source": pl.Utf8, "record_id": pl.Utf8})
        return query_pl(self.con, "select source, record_id from erasures")

    def pending_erasure_rks(self) -> pl.DataFrame:
        """``rk`` of the records that had a link to a record erased since the last run."""
        if not self.has_table("erasure_pending"):
            return pl.DataFrame(schema={"rk": pl.Int64})
        return query_pl(self.con, "select distinct rk from erasure_pending")

    def clear_erasure_pending(self) -> None:
        """Empty ``erasure_pending`` (a run has decided those records' clusters again)."""
        if self.has_table("erasure_pending"):
            self.con.execute("delete from erasure_pending")

    def erase_record(self, rk: int) -> None:
        """Delete the record ``rk`` and every row that names it (links, block keys, joins);
        the records it had a link to are noted in ``erasure_pending`` (decided again by the
        next incremental run)."""
        self.con.execute(ERASURES_DDL)
        self.con.execute("insert into erasure_pending select distinct rk from ("
                         "select rk_r as rk from links where rk_l = ? union select rk_l from links where rk_r = ?)",
                         [rk, rk])
        self.con.execute("delete from records where rk = ?", [rk])
        self.con.execute("delete from links where rk_l = ? or rk_r = ?", [rk, rk])
        if self.has_table("block_keys"):
            self.con.execute("delete from block_keys where rk = ?", [rk])
        if self.has_table("joins"):
            self.con.execute("delete from joins where rk_l = ? or rk_r = ?", [rk, rk])
        if self.has_table("components"):
            self.con.execute("delete from components where rk = ?", [rk])
        self.con.execute("delete from erasure_pending where rk = ?", [rk])

    def record_erasure(self, row: Sequence[Any]) -> None:
        """Insert an ``erasures`` row (source, record_id, id_sha256, reason, erased_at,
        author, decision_id)."""
        self.con.execute("insert into erasures values (?, ?, ?, ?, ?, ?, ?)", list(row))

    def decision_payloads(self) -> list[tuple[int, dict[str, Any]]]:
        """(decision id, parsed payload) of every decision, in table order."""
        return [(did, json.loads(p) if isinstance(p, str) else (p or {}))
                for did, p in self.con.execute("select decision_id, payload from decisions").fetchall()]

    def set_decision_payload(self, decision_id: int, payload: Mapping[str, Any]) -> None:
        """Replace a decision's payload."""
        self.con.execute("update decisions set payload = ? where decision_id = ?", [json.dumps(payload), decision_id])

    def retire_entity(self, entity_id: str) -> None:
        """Mark an entity retired with no records (changed in the last run)."""
        self.con.execute("update entities set status = 'retired', size = 0, changed_run = ? "
                         "where entity_id = ?", [self.last_run(), entity_id])

    def tf_value_columns(self) -> list[str]:
        """The columns the stored models keep term frequencies of."""
        if not self.has_table("model_tf"):
            return []
        return [c for (c,) in self.con.execute('select distinct "column" from model_tf').fetchall()]

    def value_held_elsewhere(self, column: str, value: Any, rk: int) -> bool:
        """Whether a record other than ``rk`` holds ``value`` in ``column``."""
        return bool(fetch_one(self.con, f'select count(*) from records where "{column}" = ? and rk <> ?',
                              [value, int(rk)])[0])

    def delete_tf_value(self, column: str, value: str) -> None:
        """Drop the term-frequency rows of ``value`` in ``column``."""
        self.con.execute('delete from model_tf where "column" = ? and value = ?', [column, value])

    def nested(self) -> "Store":
        """This store for a write nested in the caller's transaction: its begin, commit and
        rollback do nothing, so its writes commit (or fail) with the caller's."""
        return _Nested(self.path, self.con, False)

    def delete_block_keys(self, rks: pl.Series) -> None:
        """Delete the stored block keys of the records ``rks``."""
        with self.registered("_gone_rk", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
            self.con.execute("delete from block_keys where rk in (select rk from _gone_rk)")

    def block_key_holders(self, want: pl.DataFrame, rks: pl.DataFrame, skip: pl.DataFrame) -> pl.DataFrame | None:
        """``rule``, ``side``, ``h``, ``rk`` of the stored block keys whose hash is that of a
        key (``rule``, ``h``) of ``want`` or of the records ``rks``, leaving out the keys of
        ``skip`` (None when ``want`` and ``rks`` are both empty). One query, joined on the
        hash alone: DuckDB then skips most of the table with a filter on it before the join."""
        of_rks = "select rule, h from block_keys where rk in (select rk from _rks)"
        frames = [(n, f, q) for n, f, q in (("_want", want, "select rule, h from _want"), ("_rks", rks, of_rks))
                  if f.height]
        if not frames:
            return None
        wanted = " union ".join(q for _, _, q in frames)
        if skip.height:
            wanted = f"select rule, h from ({wanted}) except select rule, h from _skip"
            frames.append(("_skip", skip.select("rule", "h"), ""))
        with ExitStack() as stack:
            for name, frame, _ in frames:  # only the frames the query reads (registering costs)
                stack.enter_context(self.registered(name, frame))
            return query_pl(self.con, f"""
                with k as ({wanted})
                select b.rule, b.side, b.h, b.rk from block_keys b semi join (select distinct h from k) k on b.h = k.h""")

    # --- identity changes (one write path) ---
    def write_identity(self, a: IdAssignment, *, sizes: Mapping[str, int], run_id: int | None,
                       moves: pl.DataFrame | None = None, retired: Iterable[str] = (),
                       events_before: Iterable[dict[str, Any]] = (), events_after: Iterable[dict[str, Any]] = (),
                       decision_id: int | None = None) -> int:
        """Write what :func:`assign_ids` decided, inside the caller's transaction: the records
        that change entity (``moves``: ``rk`` and new ``entity_id``; None when the caller
        wrote the records whole), the entity rows it touched, and its events, between
        ``events_before`` and ``events_after`` and the ``entity_retired`` events of
        ``retired``. Runs and decisions both write identity changes through here.

        ``sizes`` holds the record count of every entity touched (and any other whose size
        may have changed). ``run_id`` is the run writing (its id stamps ``changed_run``);
        None for a decision, whose new entities take the last run's id and which leaves
        ``changed_run`` of the others alone. Returns the number of events written.

        >>> st = Store.open("out/doctest-write-identity.duckdb")
        >>> a = assign_ids({("s", "1"): 0}, {}, {}, mint=lambda: "EX")
        >>> st.begin(); st.write_identity(a, sizes={"EX": 1}, run_id=None, decision_id=None); st.rollback()
        2
        >>> st.close()
        """
        if moves is not None and moves.height:
            # Deleted and inserted again rather than updated: DuckDB rewrites a whole column of
            # every row group an update touches when it checkpoints (~0.4 s at a million records),
            # while deletes and appends cost little.
            with self.registered("_moves", moves.select(pl.col("rk").cast(pl.Int64), "entity_id")):
                self.con.execute("create temp table _moved as select r.* replace (m.entity_id as entity_id) "
                                 "from records r join _moves m on r.rk = m.rk")
                self.con.execute("delete from records where rk in (select rk from _moves)")
                self.con.execute("insert into records select * from _moved")
                self.con.execute("drop table _moved")
        retired = sorted(retired)
        merged_away = {m for m, _ in a.merged}
        touched = a.touched | set(retired) | merged_away
        ids = touched | set(sizes)
        with self.registered("_ids", pl.DataFrame({"entity_id": sorted(ids)}, schema={"entity_id": pl.Utf8})):
            ent_old = query_pl(self.con, "select e.* from entities e join _ids using (entity_id)")
        rows = {r["entity_id"]: r for r in ent_old.iter_rows(named=True)}
        stamp = run_id if run_id is not None else self.last_run()
        changed = {} if run_id is None else {"changed_run": run_id}
        out: dict[str, dict[str, Any]] = {}
        for eid, split_from in a.created:
            out[eid] = {"entity_id": eid, "status": "active", "merged_into": None, "split_from": split_from,
                        "created_run": stamp, "changed_run": stamp, "size": sizes.get(eid, 0)}
        for eid in a.restored:
            out[eid] = dict(rows[eid], status="active", merged_into=None, size=sizes.get(eid, 0), **changed)
        for loser, survivor in a.merged:
            out[loser] = dict(rows[loser], status="merged", merged_into=survivor, size=0, **changed)
        for e in retired:
            out[e] = dict(rows[e], status="retired", size=0, **changed)
        for eid in ids:
            if eid in out or eid not in rows:
                continue
            r = dict(rows[eid])
            n = sizes.get(eid, 0)
            if r.get("size") != n or eid in touched:
                r["size"] = n
                r.update(changed if eid in touched else {})
                out[eid] = r
        if out:
            with self.registered("_ent", pl.DataFrame(list(out.values()), schema=_ENTITY_SCHEMA)):
                self.con.execute("insert or replace into entities by name select * from _ent")  # by primary key
        events = [*events_before, *a.events, *events_after, *({"type": "entity_retired", "entity_id": e}
                                                               for e in retired)]
        return self.append_events(events, run_id=run_id, decision_id=decision_id)

    def decision_rows(self) -> list[dict[str, Any]]:
        """Every decision, oldest first, its ``payload`` parsed."""
        df = query_pl(self.con, "select decision_id, decided_at, author, action, reason, payload, undone_by, undoes "
                                "from decisions order by decision_id")
        rows = df.to_dicts() if df.height else []
        for r in rows:
            r["payload"] = json.loads(r["payload"]) if isinstance(r["payload"], str) else (r["payload"] or {})
        return rows

    def record_decision(self, decision_id: int, author: str, action: str, reason: str, payload: Mapping[str, Any],
                        undoes: int | None = None) -> None:
        """Insert a decision (inside the caller's transaction); an undo marks the one it undoes."""
        self.con.execute("insert into decisions values (?, ?, ?, ?, ?, ?, NULL, ?)",
                         [decision_id, utc_now(), author, action, reason, json.dumps(payload), undoes])
        if undoes is not None:
            self.con.execute("update decisions set undone_by = ? where decision_id = ?", [decision_id, undoes])

    def entity_status(self, entity_id: str) -> str | None:
        """``active``, ``merged`` or ``retired`` (None: no such entity)."""
        row = fetch_one(self.con, "select status from entities where entity_id = ?", [entity_id])
        return None if row is None else row[0]

    def entity_rows(self) -> dict[str, dict[str, Any]]:
        """Every entity row by id."""
        return {r["entity_id"]: r for r in query_pl(self.con, "select * from entities").iter_rows(named=True)}

    def members(self, entity_id: str) -> list[tuple[str, str]]:
        """The (source, record_id) of an entity's records, sorted."""
        rows = self.con.execute("select source, record_id from records where entity_id = ? "
                                "order by source, record_id", [entity_id]).fetchall()
        return [(s, r) for s, r in rows]

    def entity_records(self, entity_id: str) -> pl.DataFrame:
        """An entity's stored records (every column), by source and record id."""
        return query_pl(self.con, "select * from records where entity_id = ? order by source, record_id", [entity_id])

    def record_entities(self) -> pl.DataFrame:
        """``source``, ``record_id``, ``entity_id``, ``content_hash`` and ``rk`` of every record,
        by source and record id."""
        rk = "rk" if "rk" in self.columns("records") else "null::bigint as rk"
        return query_pl(self.con, f"select source, record_id, entity_id, content_hash, {rk} from records "
                                  "order by source, record_id")

    @staticmethod
    def _keys_frame(recs: Iterable[tuple[str, str]]) -> pl.DataFrame:
        recs = list(recs)
        return pl.DataFrame({"source": [r[0] for r in recs], "record_id": [r[1] for r in recs]},
                            schema={"source": pl.Utf8, "record_id": pl.Utf8})

    def entity_of_records(self, recs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(source, record_id) -> entity of those of ``recs`` the store holds."""
        keys = self._keys_frame(recs)
        if not keys.height:
            return {}
        with self.registered("_q_recs", keys):
            out = query_pl(self.con, "select r.source, r.record_id, r.entity_id from records r join _q_recs q "
                                     "on r.source = q.source and r.record_id = q.record_id")
        return {(s, r): e for s, r, e in out.iter_rows()}

    def content_hashes(self, recs: Iterable[tuple[str, str]]) -> list[tuple[str, str, str]]:
        """(source, record_id, content_hash) of those of ``recs`` the store holds."""
        with self.registered("_dig", self._keys_frame(recs)):
            return self.con.execute("select r.source, r.record_id, r.content_hash from records r join _dig d "
                                    "on r.source = d.source and r.record_id = d.record_id").fetchall()

    def links_among(self, recs: Iterable[tuple[str, str]], *, min_p: float | None = None,
                    columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The stored links (every column, or ``columns``) both of whose records are among ``recs``."""
        cond = "" if min_p is None else f" and match_probability >= {float(min_p)!r}"
        rks = self._rks_of(recs)
        if rks is not None:
            # Filters on literal record keys: DuckDB skips the row groups their range rules out.
            cols = "*" if columns is None else ", ".join(f'"{c}"' for c in columns)
            return query_pl(self.con, f"select {cols} from links where rk_l in ({rks}) and rk_r in ({rks})" + cond)
        cond = "" if min_p is None else f" where l.match_probability >= {float(min_p)!r}"
        with self.registered("_q_among", self._keys_frame(recs)):
            return query_pl(self.con, "select l.* from links l "
                                      "semi join _q_among a on l.source_l = a.source and l.record_id_l = a.record_id "
                                      "semi join _q_among b on l.source_r = b.source and l.record_id_r = b.record_id"
                                      + cond)

    def rk_links_among(self, rks: pl.Series) -> pl.DataFrame:
        """``rk_l``, ``rk_r``, ``match_probability`` of the stored links both of whose records'
        keys are among ``rks`` (a decision's region: integer keys only, no record ids read)."""
        with self.registered("_q_rk_among", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
            return query_pl(self.con, "select l.rk_l, l.rk_r, l.match_probability from links l "
                                      "semi join _q_rk_among a on l.rk_l = a.rk semi join _q_rk_among b on l.rk_r = b.rk")

    def _rks_of(self, recs: Iterable[tuple[str, str]]) -> str | None:
        """The ``rk`` of those of ``recs`` the store holds, as a literal SQL list ('null'
        for none), or None when the store predates ``rk`` (then look up by source and id)."""
        keyed = getattr(self, "_keyed", None)
        if keyed is None:
            keyed = self._keyed = "rk" in self.columns("records") and {"rk_l", "rk_r"} <= set(self.columns("links"))
        if not keyed:
            return None
        keys = self._keys_frame(recs)
        if not keys.height:
            return "null"
        with self.registered("_q_rks", keys):
            rks = [int(k) for (k,) in self.con.execute(
                "select r.rk from records r join _q_rks q on r.source = q.source and r.record_id = q.record_id "
                "order by r.rk").fetchall() if k is not None]
        return ", ".join(map(str, rks)) or "null"

    def link_pairs(self, min_p: float | None = None) -> pl.DataFrame:
        """``source_l, record_id_l, source_r, record_id_r, match_probability`` of every stored
        link (at least ``min_p``)."""
        cond = "" if min_p is None else " where match_probability >= ?"
        return query_pl(self.con, "select source_l, record_id_l, source_r, record_id_r, match_probability from links"
                        + cond, [] if min_p is None else [float(min_p)])

    def links_leaving(self, recs: Iterable[tuple[str, str]], entity_id: str, limit: int, *,
                      min_p: float | None = None) -> pl.DataFrame:
        """The best ``limit`` links (of at least ``min_p``) from ``recs`` to records outside
        ``entity_id`` (``source``, ``record_id``, ``other_source``, ``other_record_id``,
        ``other_entity_id``, ``match_probability``)."""
        rks = self._rks_of(recs)
        p = "" if min_p is None else f" and l.match_probability >= {float(min_p)!r}"
        if rks is not None:
            return query_pl(self.con, f"""
                select * from (
                  select l.source_l as source, l.record_id_l as record_id, l.source_r as other_source,
                         l.record_id_r as other_record_id, r.entity_id as other_entity_id, l.match_probability
                  from links l join records r on r.rk = l.rk_r
                  where l.rk_l in ({rks}) and r.entity_id <> ?{p}
                  union all
                  select l.source_r, l.record_id_r, l.source_l, l.record_id_l, r.entity_id, l.match_probability
                  from links l join records r on r.rk = l.rk_l
                  where l.rk_r in ({rks}) and r.entity_id <> ?{p})
                order by match_probability desc, other_entity_id, source, record_id, other_source, other_record_id
                limit {int(limit)}""", [entity_id, entity_id])
        with self.registered("_q_near", self._keys_frame(recs)):
            return query_pl(self.con, f"""
                select * from (
                  select l.source_l as source, l.record_id_l as record_id, l.source_r as other_source,
                         l.record_id_r as other_record_id, r.entity_id as other_entity_id, l.match_probability
                  from links l semi join _q_near q on l.source_l = q.source and l.record_id_l = q.record_id
                  join records r on r.source = l.source_r and r.record_id = l.record_id_r
                  where r.entity_id <> ?{p}
                  union all
                  select l.source_r, l.record_id_r, l.source_l, l.record_id_l, r.entity_id, l.match_probability
                  from links l semi join _q_near q on l.source_r = q.source and l.record_id_r = q.record_id
                  join records r on r.source = l.source_l and r.record_id = l.record_id_l
                  where r.entity_id <> ?{p})
                order by match_probability desc, other_entity_id, source, record_id, other_source, other_record_id
                limit {int(limit)}""", [entity_id, entity_id])

    def all_records(self) -> pl.DataFrame:
        """Every stored record, every column (in the table's order)."""
        return query_pl(self.con, "select * from records")

    # writing a run's other tables (the run's parts that are not identity changes)
    def active_size_counts(self) -> dict[int, int]:
        """Entity size -> how many active entities have it (sizes are kept in the table)."""
        return dict(self.con.execute("select size, count(*) from entities where status = 'active' and size > 0 "
                                     "group by size order by size").fetchall())

    def insert_run(self, row: Mapping[str, Any]) -> None:
        """Insert a ``runs`` row (column -> value)."""
        cols = list(row)
        self.con.execute(f"insert into runs ({', '.join(cols)}) values ({', '.join('?' for _ in cols)})",
                         [row[c] for c in cols])

    def set_vacuum(self, enabled: bool) -> None:
        """Whether DuckDB may compact row groups when it checkpoints (see ``write_run``)."""
        self.con.execute(f"set max_vacuum_tasks = {100 if enabled else 0}")

    def delete_records(self, rks: pl.Series) -> None:
        """Delete the records ``rks``."""
        with self.registered("_gone", pl.DataFrame({"rk": rks})):
            self.con.execute("delete from records where rk in (select rk from _gone)")

    def set_raw_hashes(self, rows: pl.DataFrame) -> None:
        """New ``raw_hash`` of the records ``rows`` (``rk``, ``raw_hash``)."""
        with self.registered("_redone", rows):
            self.con.execute("update records set raw_hash = x.raw_hash from _redone x where records.rk = x.rk")

    def mark_seen(self, run_id: int, kept: pl.DataFrame | None = None) -> None:
        """``last_seen_run`` of every record but those of ``kept`` (``rk``) becomes ``run_id``."""
        if kept is None:
            self.con.execute("update records set last_seen_run = ? where last_seen_run is distinct from ?",
                             [run_id, run_id])
            return
        with self.registered("_kept", kept.select("rk")):
            self.con.execute("update records set last_seen_run = ? where last_seen_run is distinct from ? "
                             "and rk not in (select rk from _kept)", [run_id, run_id])

    def delete_touching(self, table: str, rks: pl.Series) -> None:
        """Delete the rows of ``joins`` or ``links`` either of whose records is among ``rks``."""
        assert table in ("joins", "links")
        with self.registered("_rks", pl.DataFrame({"rk": rks})):
            self.con.execute(f"delete from {table} where rk_l in (select rk from _rks) or rk_r in (select rk from _rks)")

    def component_rks(self, rks: pl.Series) -> pl.DataFrame:
        """``rk`` of every record in the stored ``components`` of the records ``rks``."""
        with self.registered("_seed_rk", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
            return query_pl(self.con, "select rk from components where component in "
                                      "(select component from components semi join _seed_rk using (rk))")

    def delete_rks(self, table: str, rks: pl.Series) -> None:
        """Delete the rows of ``table`` (one with an ``rk`` column: ``components``) of the
        records ``rks``."""
        assert table in ("components",)
        with self.registered("_rks", pl.DataFrame({"rk": rks.cast(pl.Int64)})):
            self.con.execute(f"delete from {table} where rk in (select rk from _rks)")

    def delete_link_pairs(self, pairs: pl.DataFrame) -> None:
        """Delete the stored links of ``pairs`` (``a``, ``b``: rk_l, rk_r)."""
        with self.registered("_pairs", pairs):
            self.con.execute("delete from links where exists (select 1 from _pairs p where "
                             "links.rk_l = p.a and links.rk_r = p.b)")

    # --- small named values in ``meta`` (e.g. the sources' files a run read: _incremental.py) ---
    def meta_value(self, key: str) -> str | None:
        """The ``meta`` value of ``key`` (None if unset)."""
        row = fetch_one(self.con, "select value from meta where key = ?", [key])
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with None, remove) the ``meta`` value of ``key``."""
        self.con.execute("delete from meta where key = ?", [key])
        if value is not None:
            self.con.execute("insert into meta values (?, ?)", [key, value])

    def has_records(self) -> bool:
        """Whether the store holds any record (privacy.check_store: an empty store takes any key)."""
        return self.has_table("records") and fetch_one(self.con, "select 1 from records limit 1") is not None

    # --- the stored review queue (built by queue.py; decisions keep it current) ---
    def queue_basis(self) -> dict[str, Any] | None:
        """What the stored review queue was built on (``run``, ``large_size``, ``format``),
        or None when the store holds none. It is current while ``run`` is the last run."""
        if not self.has_table(QUEUE_TABLE):
            return None
        row = fetch_one(self.con, "select value from meta where key = ?", [QUEUE_TABLE])
        return json.loads(row[0]) if row else None

    def queue_rows(self) -> pl.DataFrame:
        """Every stored queue row (see :data:`QUEUE_SCHEMA`)."""
        return query_pl(self.con, f"select * from {QUEUE_TABLE}")

    def queue_dirty(self) -> set[str]:
        """The entities whose stored queue rows a decision took away and that wait to be
        found again (:meth:`queue_touched`)."""
        return {e for (e,) in self.con.execute(f"select entity_id from {QUEUE_TABLE}_dirty").fetchall()}

    def queue_touched(self, entities: Iterable[str]) -> None:
        """Inside a decision's transaction: the queue rows naming ``entities`` go, and they are
        noted as dirty (found again by the next reader of the queue). A stored queue of an
        earlier run is emptied instead (a run changes every row)."""
        basis = self.queue_basis()
        if basis is None:
            return
        if basis.get("run") != self.last_run():
            for t in (QUEUE_TABLE, f"{QUEUE_TABLE}_dirty"):
                self.con.execute(f"delete from {t}")
            self.con.execute("delete from meta where key = ?", [QUEUE_TABLE])
            return
        ids = pl.DataFrame({"entity_id": sorted(set(entities))}, schema={"entity_id": pl.Utf8})
        with self.registered("_q_touched", ids):
            self.con.execute(f"delete from {QUEUE_TABLE} where entity_id in (select entity_id from _q_touched) "
                             "or other_entity_id in (select entity_id from _q_touched)")
            self.con.execute(f"insert into {QUEUE_TABLE}_dirty select entity_id from _q_touched "
                             f"where entity_id not in (select entity_id from {QUEUE_TABLE}_dirty)")

    def strong_rk_pairs(self, min_p: float) -> pl.DataFrame:
        """``rk_l``, ``rk_r`` of every stored link of at least ``min_p`` (a decision's region)."""
        return query_pl(self.con, "select rk_l, rk_r from links where match_probability >= ?", [float(min_p)])

    def record_counts(self) -> dict[str, int]:
        """Entity id -> how many records the store holds for it (entities with records only)."""
        return dict(self.con.execute("select entity_id, count(*) from records group by entity_id").fetchall())

    def max_decision_id(self) -> int:
        """The latest decision's id (0 before the first)."""
        return int(fetch_one(self.con, "select coalesce(max(decision_id), 0) from decisions")[0])

    def records_of_entities(self, entities: Iterable[str]) -> pl.DataFrame:
        """Every stored record (every column) of ``entities``, by source and record id."""
        ids = pl.DataFrame({"entity_id": sorted(set(entities))}, schema={"entity_id": pl.Utf8})
        with self.registered("_q_ents", ids):
            return query_pl(self.con, "select r.* from records r semi join _q_ents q on r.entity_id = q.entity_id "
                                      "order by r.source, r.record_id")

    def entities_linked_to(self, entities: Iterable[str], min_p: float) -> set[str]:
        """The other entities that a link of at least ``min_p`` joins to a record of ``entities``."""
        mine = self.records_of_entities(entities).select("source", "record_id")
        if not mine.height:
            return set()
        near = self.links_leaving(list(mine.iter_rows()), "", 10**9, min_p=min_p)
        return set(near["other_entity_id"].to_list()) - set(entities)

    def write_queue(self, rows: pl.DataFrame, basis: Mapping[str, Any], *, entities: Iterable[str] | None = None) -> None:
        """Store queue ``rows`` (inside the caller's transaction) with their ``basis``: all of
        them (``entities`` None: the table is replaced), or those of the dirty ``entities``
        found again (their old rows go; they are no longer dirty)."""
        self.con.execute(_QUEUE_DDL)
        if entities is None:
            self.con.execute(f"delete from {QUEUE_TABLE}")
            self.con.execute(f"delete from {QUEUE_TABLE}_dirty")
        else:
            ids = pl.DataFrame({"entity_id": sorted(set(entities))}, schema={"entity_id": pl.Utf8})
            with self.registered("_q_found", ids):
                self.con.execute(f"delete from {QUEUE_TABLE} where entity_id in (select entity_id from _q_found) "
                                 "or other_entity_id in (select entity_id from _q_found)")
                self.con.execute(f"delete from {QUEUE_TABLE}_dirty where entity_id in (select entity_id from _q_found)")
        if rows.height:
            with self.registered("_q_rows", rows.select(list(QUEUE_SCHEMA)).cast(QUEUE_SCHEMA)):
                self.con.execute(f"insert into {QUEUE_TABLE} by name select * from _q_rows")
        self.con.execute("insert or replace into meta values (?, ?)", [QUEUE_TABLE, json.dumps(dict(basis))])


class _Borrowed(Store):
    """A store opened inside :meth:`Store.reading`: its connection is the block's, so closing
    it leaves the connection open."""

    _catalog: dict[tuple[str, str], Any]

    def close(self) -> None:
        pass

    # The block reads one state of the store: its tables and columns do not change in it.
    def has_table(self, name: str) -> bool:
        key = ("table", name)
        if key not in self._catalog:
            self._catalog[key] = Store.has_table(self, name)
        return self._catalog[key]

    def columns(self, table: str) -> list[str]:
        key = ("columns", table)
        if key not in self._catalog:
            self._catalog[key] = Store.columns(self, table)
        return list(self._catalog[key])


_READING: contextvars.ContextVar[Store | None] = contextvars.ContextVar("idweave_store_reading", default=None)


# Every table a store of this schema version holds. A file holding only these (and at least
# the tables every store has) but no ``meta`` marker is taken for an idweave store whose
# marker was lost (e.g. copied table by table): the marker is added when it is opened for
# writing. Any other table, or a ``records`` table without the marker, means the file is
# somebody else's: it is refused and left untouched.
STORE_TABLES = frozenset({"meta", "runs", "entities", "events", "decisions", "models", "model_tf", "model_sql",
                          "records", "links", "block_keys", "joins", "components", QUEUE_TABLE,
                          f"{QUEUE_TABLE}_dirty"})
_CORE_TABLES = frozenset({"runs", "entities", "events", "decisions"})
_NOT_A_STORE = "not an idweave store"


def store_marker_problem(tables: Iterable[str], version: str | None) -> str | None:
    """Why a DuckDB file with these ``tables`` (main schema) and marker ``version`` (the
    ``meta`` table's ``schema_version``; None if it has none) is not an idweave store of
    this version, or None when it is one (or is empty, and may become one).

    >>> store_marker_problem([], None) is None
    True
    >>> store_marker_problem(["meta", "runs", "records"], "1") is None
    True
    >>> store_marker_problem(["records"], None)
    "not an idweave store: it holds a table 'records' but no idweave marker (meta table); use another store path"
    >>> store_marker_problem(["patients"], None)
    'not an idweave store: it holds 1 other table(s); use another store path'
    """
    tables = set(tables)
    if not tables:
        return None
    if "meta" in tables:
        if version is None:
            return f"{_NOT_A_STORE}: its meta table has no schema_version; use another store path"
        if version != str(SCHEMA_VERSION):
            return f"store schema version {version} is not {SCHEMA_VERSION}; this idweave cannot use it"
        return None
    if tables <= STORE_TABLES and _CORE_TABLES <= tables:
        return None  # an idweave store without its marker: adopted (see STORE_TABLES)
    if "records" in tables:
        return (f"{_NOT_A_STORE}: it holds a table 'records' but no idweave marker (meta table); "
                "use another store path")
    return f"{_NOT_A_STORE}: it holds {len(tables - STORE_TABLES) or len(tables)} other table(s); use another store path"


def _connect_waiting(connect, path: Path, wait: float) -> duckdb.DuckDBPyConnection:
    """``connect()``, retried for up to ``wait`` seconds while another process holds the file's
    lock; a held store is :class:`StoreBusyError`, any other failure :class:`StoreError`."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return connect()
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower() or "conflicting" in msg.lower():
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise StoreBusyError("the store is in use by another idweave run; wait for it to finish "
                                     "(or pass --wait SECONDS)", file=str(path)) from None
            raise StoreError(_open_problem(msg), file=str(path)) from None
        except duckdb.Error as exc:
            raise StoreError(_open_problem(str(exc)), file=str(path)) from None


def _check_marker(path: Path, wait: float) -> None:
    """Raise :class:`StoreError` unless the existing, non-empty file at ``path`` is an
    idweave store (or an empty DuckDB database): read-only, so nothing is written."""
    con = _connect_waiting(lambda: duckdb.connect(str(path), read_only=True), path, wait)
    try:
        tables, version = _marker(con)
    finally:
        con.close()
    problem = store_marker_problem(tables, version)
    if problem:
        raise StoreError(problem, file=str(path))


_DISK_FULL = ("no space left on device", "disk full", "disk is full", "not enough space", "quota exceeded")


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (DuckDB's or the OS's) says the disk is full."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, (duckdb.Error, OSError)) and any(m in str(exc).lower() for m in _DISK_FULL)


def disk_full_error(path: Path, exc: BaseException | None = None) -> StoreError:
    """The error of a write that found the disk full: names the store and says so."""
    return StoreError("the disk is full (No space left on device): the run could not be written and the store "
                      "is as it was; free some space (or move the store) and run again", file=str(path))


def _marker(con: duckdb.DuckDBPyConnection) -> tuple[list[str], str | None]:
    """The tables of the main schema and the ``meta`` schema_version (None if absent)."""
    tables = [t for (t,) in con.execute("select table_name from information_schema.tables "
                                       "where table_schema = 'main'").fetchall()]
    version = None
    if "meta" in tables:
        try:
            row = fetch_one(con, "select value from meta where key = 'schema_version'")
            version = None if row is None else str(row[0])
        except duckdb.Error:
            version = None
    return tables, version


def _head(path: Path) -> bytes | None:
    """The first 12 KiB of a DuckDB file (its file header and two database headers)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(3 * 4096)
    except OSError:
        return None


def _open_problem(msg: str) -> str:
    """Why DuckDB cannot open a file, in one line without its bytes."""
    first = msg.splitlines()[0] if msg else ""
    if any(m in first.lower() for m in _DISK_FULL):
        return "the disk is full (No space left on device): the store cannot be created or opened"
    if "not a valid duckdb database" in first.lower() or "magic" in first.lower():
        return f"{_NOT_A_STORE}: the file is not a DuckDB database; use another store path"
    return "cannot open the store: " + "".join(c if c.isprintable() else "?" for c in first[:200])


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Connect; a store created now is readable and writable by its owner only (mode 0600:
    it holds personal data). An existing store keeps the mode its owner gave it."""
    if read_only or path.exists():
        return duckdb.connect(str(path), read_only=read_only)
    old = os.umask(0o077)
    try:
        return duckdb.connect(str(path), read_only=read_only)
    finally:
        os.umask(old)


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise StoreError("cannot write the store here: the folder is not writable", file=str(path))
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError("cannot write the store: the file is read-only", file=str(path))
    if path.exists() and path.is_dir():
        raise StoreError("the store path is a folder, not a file", file=str(path))


class _Nested(Store):
    """The store inside a caller's transaction (:meth:`Store.nested`)."""

    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


#: The erasure tables (see forget.py). erasure_pending: records that had a link to an erased
#: record; the next incremental run treats them as it treats the neighbours of a record gone
#: from its source (their clusters are decided again), then empties the table.
ERASURES_DDL = """
create table if not exists erasures (
    source varchar, record_id varchar, id_sha256 varchar, reason varchar, erased_at timestamp, author varchar,
    decision_id integer, primary key (source, record_id));
create table if not exists erasure_pending (rk bigint);
"""
