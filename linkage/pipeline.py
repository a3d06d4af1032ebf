"""link(project): sources -> records -> pairs -> links -> clusters -> persistent entities.

Everything is computed in memory first; the store is then changed in one transaction, so a
run either lands whole or not at all, and bad input never creates or touches a store.

>>> from idweave.linkage import link
>>> result = link("fixtures/tiny/project.yaml")
>>> sorted(result.entities.columns)
['entity_id', 'record_id', 'source']
"""

from __future__ import annotations

import functools
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import polars as pl

from idweave.linkage import _splink, comparisons, scoring, training
from idweave.linkage import model as model_mod
from idweave.linkage.cluster import DEFAULT_CLUSTERING, choose_threshold, closure, cluster, completion_pairs
from idweave.linkage.engine import engine_of
from idweave.linkage.errors import IdweaveError, StoreBusyError
from idweave.linkage._spill import Spill
from idweave.linkage.graph import Store, utc_now
from idweave.linkage.project import Project, project_rules, resolve_project, threshold_problem
from idweave.linkage.sources import LoadReport, load_records

if TYPE_CHECKING:
    import numpy as np

    from idweave.linkage import _incremental as inc

__all__ = ["link", "LinkResult", "Progress"]

Progress = Callable[[str, str], None]  # (stage, "start" | "end")


@dataclass
class LinkResult:
    """What :func:`link` returns: the ``entities`` (``source``, ``record_id``,
    ``entity_id``), every scored pair (``pairs``: ``source_l``, ``record_id_l``,
    ``source_r``, ``record_id_r``, ``match_probability``), the ``summary``, the time per stage
    and the run id. ``entities`` and ``pairs`` are built on first use (a run that found
    nothing changed reads them from the store only if asked)."""

    _entities: pl.DataFrame | Callable[[], pl.DataFrame]
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None
    _pairs: pl.DataFrame | Callable[[], pl.DataFrame] | None = field(default=None, repr=False)

    @property
    def entities(self) -> pl.DataFrame:
        if callable(self._entities):
            self._entities = self._entities()
        return self._entities

    @property
    def pairs(self) -> pl.DataFrame:
        if callable(self._pairs):
            self._pairs = self._pairs()
        assert self._pairs is not None
        return self._pairs


class _Timer:
    """The time of each stage, and the ``progress`` callback told of them: ``progress(stage,
    "start")`` and ``progress(stage, "end")``; and, when the callback takes two more
    arguments, ``progress(stage, "advance", done, total)`` as a long stage goes (pairs
    scored of pairs to score, ...), from which a display shows counts and an ETA."""

    def __init__(self, progress: Progress | None):
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.counts = progress is not None and self._takes_counts(progress)

    @staticmethod
    def _takes_counts(progress: Callable[..., Any]) -> bool:
        import inspect

        try:
            inspect.signature(progress).bind("stage", "advance", 0, 0)
        except (TypeError, ValueError):  # takes (stage, state) only, or cannot be inspected
            return False
        return True

    @contextmanager
    def stage(self, name: str):
        if self.progress:
            self.progress(name, "start")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - t0, 3)
            if self.progress:
                self.progress(name, "end")

    def counter(self, name: str) -> Callable[[int, int], None] | None:
        """``count(done, total)`` telling the callback how far the stage ``name`` is, or None
        when it takes no counts."""
        if not self.counts:
            return None
        progress: Callable[..., Any] = self.progress  # type: ignore[assignment]
        return lambda done, total: progress(name, "advance", done, total)


def _comparisons_signature(settings: dict[str, Any]) -> list[Any]:
    """What must match for a stored model to apply: the comparison SQL, not the m/u."""
    return [[c["output_column_name"], [lv["sql_condition"] for lv in c["comparison_levels"]]]
            for c in settings["comparisons"]]


def link(
    project: Project | str | Path | Mapping[str, Any],
    *,
    sources: Mapping[str, Any] | None = None,
    store: str | Path | None = None,
    threshold: float | None = None,
    retrain: bool = False,
    full: bool = False,
    progress: Progress | None = None,
    wait: float = 0.0,
) -> LinkResult:
    """Run the whole linkage job and update the identity store in one transaction.

    ``project`` is a project file path, a dict in its form, or a :class:`Project`;
    ``sources`` may give in-memory frames (polars, pandas, Arrow) per source name in place
    of their paths. Returns the entities (``source``, ``record_id``, ``entity_id``), every
    scored pair, a summary and the time per stage.

    By default a run is incremental: it compares each source with the store (record id and
    content hash), scores only the pairs of new and changed records with the stored model,
    drops records a ``snapshot`` source no longer holds (``mode: append`` sources keep them),
    reuses every other stored link and re-clusters only the components that changed; the
    entities equal those of a full run on the same data (see ``linkage/_incremental.py``).
    ``full=True`` recomputes every pair and cluster (ids are still inherited). When the
    sources are files that did not change since the last run (size and time, or bytes), and
    neither the project, the code nor the store did, nothing runs: the result is the last
    run's (``summary["mode"]`` is ``"unchanged"``) and the store is not written. A store held by
    another run raises :class:`~idweave.linkage.errors.StoreBusyError` after ``wait`` seconds.

    >>> r = link("fixtures/tiny/project.yaml")
    >>> r.summary["records"] == r.entities.height
    True
    >>> link("fixtures/tiny/project.yaml").summary["events"]  # the same input again: nothing changes
    0
    >>> link("fixtures/tiny/project.yaml", threshold=1.5)
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.IdweaveError: threshold: must be a match probability between 0 and 1 (exclusive), got 1.5
    """
    if threshold is not None and threshold_problem(threshold):
        raise IdweaveError(f"threshold: {threshold_problem(threshold)}")  # before anything is read
    proj = resolve_project(project, sources=sources)
    if store is not None:
        proj.store = Path(store)
    fresh = not proj.store.exists()
    if not fresh and not full and not retrain:
        done = _unchanged(proj, threshold)
        if done is not None:
            return done
    try:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return _link(proj, threshold=threshold, retrain=retrain, full=full, progress=progress, wait=wait)
            except _StoreMoved:  # another writer came between this run's reading and its write
                if attempt == _ATTEMPTS:
                    raise StoreBusyError(f"the store changed while this run read it ({_ATTEMPTS} times: other "
                                         "runs, decisions or erasures kept writing it); run again when they are done",
                                         file=str(proj.store)) from None
    except StoreBusyError:
        raise
    except BaseException:
        # A first run that fails (after the checks, e.g. in training) leaves no empty store.
        if fresh:
            for f in (proj.store, proj.store.with_name(proj.store.name + ".wal")):
                f.unlink(missing_ok=True)
        raise


#: How many times a run starts again when the store changed under its reading.
_ATTEMPTS = 3


@dataclass
class _Run:
    """The state of one run, filled in stage by stage (each stage's fields are listed where
    it sets them). Only the stage functions below read or write it."""

    proj: Project
    timer: _Timer
    threshold: float | None
    retrain: bool
    full: bool
    started: Any = None
    report: LoadReport = field(default_factory=LoadReport)
    exclusive: list[str] = field(default_factory=list)
    single_listing: list[str] = field(default_factory=list)  # exclusive sources told from the data
    method: str = DEFAULT_CLUSTERING
    min_average: float = 0.5
    st: Any = None                      # the open Store (compare .. write)
    spill: Any = None                   # the scored pairs' levels and weights (_spill.Spill)
    # load
    source_files: Any = None
    index: Any = None
    loaded: Any = None
    n_erased: int | None = None
    # compare
    delta: Any = None
    records: Any = None
    with_attributes: Any = None
    rules: list = field(default_factory=list)
    # train
    trained: Any = None
    retrained: bool = False
    version: str = ""
    sig: str = ""
    prev: dict[str, Any] | None = None
    mode: str = "full"
    why: str = ""
    rule_names: dict[int, str] = field(default_factory=dict)
    # block
    pairs: Any = None
    dirty: Any = None
    flip_pairs: Any = None
    flipped: int = 0
    new_keys: Any = None
    # score
    scored: Any = None
    blocking: Any = None
    derived_stored: Any = None
    seeds: Any = None
    gone_neighbours: Any = None
    flip_old: Any = None
    # affected
    thr: float = 0.0
    chosen: bool = False
    must: list = field(default_factory=list)
    cannot: list = field(default_factory=list)
    reclustered_all: bool = True
    constrained: Any = None
    affected: Any = None
    aff_mask: Any = None
    blocking_affected: Any = None
    components: Any = None              # rid, component of the affected records (the store keeps them)
    # complete
    derived: Any = None
    derived_kept: Any = None
    derived_light: Any = None
    derived_drop: Any = None
    # cluster
    clusters: Any = None
    joined: Any = None
    links: Any = None
    n_strong: int = 0
    # write
    entities: Any = None
    sizes: dict = field(default_factory=dict)
    run_id: int | None = None
    n_events: int = 0

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"


_LIGHT = ["rid_l", "rid_r", "rule", "match_probability"]
_NO_PAIRS = {"rid_l": pl.Int64, "rid_r": pl.Int64}


def _link(proj: Project, *, threshold: float | None, retrain: bool, full: bool, progress: Progress | None,
          wait: float) -> LinkResult:
    """The body of :func:`link`, on a resolved project: DESIGN.md's chain of verbs, one stage
    function each, over one :class:`_Run`. Everything before ``write`` only reads the store."""
    run = _Run(proj, _Timer(progress), threshold, retrain, full, started=utc_now())
    run.exclusive = [s.name for s in proj.sources.values() if s.exclusive]
    run.method = str(proj.clustering.get("method", DEFAULT_CLUSTERING))
    run.min_average = float(proj.clustering.get("min_average", 0.5))
    _load(run)
    with Spill() as run.spill:
        return _link_loaded(run, wait)


def _link_loaded(run: _Run, wait: float) -> LinkResult:
    """:func:`_link` once the sources are loaded."""
    proj = run.proj
    state = None
    if proj.store.exists() and proj.store.stat().st_size > 0:
        # Every stage up to the clustering reads the store read-only: other readers (the
        # workbench, export, lookup) go on meanwhile. The write lock is taken for the write
        # alone, after checking that no run, decision or erasure changed the store since.
        with Store.open(proj.store, read_only=True, wait=wait) as st:
            if st.ready_for_runs():
                run.st, state = st, st.write_state()
                _stages(run)
    if state is None:  # a new store, or one this build upgrades: written from the start
        with Store.open(proj.store, wait=wait) as st:
            run.st = st
            _stages(run)
            _write(run)
        return _result(run)
    with run.timer.stage("lock"):  # the readers let go of the store (a display may say so)
        st = Store.open(proj.store, wait=max(wait, WRITE_WAIT))
    with st:
        if st.write_state() != state:
            raise _StoreMoved
        run.st = st
        _write(run)
    return _result(run)


#: Seconds a run that has done its reading waits for the readers of the store to let it write.
WRITE_WAIT = 60.0


class _StoreMoved(Exception):
    """The store changed between a run's reading and its write: the run starts again."""


def _stages(run: _Run) -> None:
    """The stages that read the store and compute the run (everything but the write)."""
    _compare(run)
    _train(run)
    _block(run)
    _score(run)
    _affected(run)
    _complete(run)
    _cluster(run)


def _load(run: _Run) -> None:
    """Read, map and clean the sources (skipping unchanged rows of the stored index), and
    screen erased records, before the store is taken."""
    from idweave.linkage import _incremental as inc
    from idweave.linkage.forget import screen_erased
    from idweave.linkage.privacy import check_project_store

    proj = run.proj
    with run.timer.stage("load"):
        check_project_store(proj)  # a missing or wrong pseudonymisation key stops the run here
        run.source_files = inc.source_files(proj)  # size, time and sha256 of each file, before reading
        run.index = _stored_index(proj.store if not run.full else None)
        loaded = load_records(proj, report=run.report, stored=run.index.by_source)
        run.source_files = inc.still_as_found(run.source_files)
        run.loaded, run.n_erased = screen_erased(proj, loaded, run.report)  # erased records refused or skipped


def _compare(run: _Run) -> None:
    """The run's records against the store: new, changed, gone and unchanged (``delta``), and
    the blocking rules for the attributes present."""
    from idweave.linkage import _incremental as inc
    from idweave.linkage.forget import screen_erased
    from idweave.linkage.privacy import check_store

    proj, st = run.proj, run.st
    check_store(proj, st)  # again, in case the store was busy when loading looked
    if run.n_erased is None:  # the store was busy when loading looked
        run.loaded, run.n_erased = screen_erased(proj, run.loaded, run.report, st=st)
    with run.timer.stage("compare"):
        try:
            delta = inc.compare(st, proj, run.loaded, run.index)
        except inc.StaleReuse:  # the store changed after loading read it: load again
            run.report = LoadReport()
            run.index = inc.StoredIndex.read(st)
            delta = inc.compare(st, proj, screen_erased(proj, load_records(proj, report=run.report,
                                                                           stored=run.index.by_source),
                                                        run.report, st=st)[0], run.index)
            run.source_files = inc.still_as_found(run.source_files)
    run.delta = delta
    # In an incremental run the records carry no attributes: those of the records cleaned
    # now are in delta.fresh, the others stay in the store until a pair needs them.
    run.records = delta.records
    run.with_attributes = functools.cache(lambda: inc.attributes(st, delta))  # every record's, read once if needed
    run.rules = project_rules(proj, present=inc.present_attributes(st, delta, list(proj.attributes)),
                              n_records=delta.records.height)


def _signature(run: _Run) -> str:
    from idweave.blocking.pairs import DEFAULT_MAX_BLOCK
    from idweave.linkage import _incremental as inc

    return inc.signature(run.proj, run.rules, run.exclusive, DEFAULT_MAX_BLOCK, run.version,
                         _splink.splink_version(), run.method, run.min_average)


def _train(run: _Run) -> None:
    """The stored model, or a new one; then full or incremental (``mode``, ``why``)."""
    st = run.st
    with run.timer.stage("train"):
        run.trained, run.retrained = _model_for(run.proj, st, run.with_attributes, run.retrain)
        # Sources that list a person once (a census) are exclusive like those the project marks.
        run.single_listing, notes = training.single_listing(run.proj, run.trained, run.retrained,
                                                            run.with_attributes, st)
        run.trained.training_log += notes
        run.exclusive += [s for s in run.single_listing if s not in run.exclusive]
    run.version = run.trained.version  # a hash of the model and its term-frequency tables: once
    run.sig = _signature(run)
    run.prev = st.last_run_info()
    run.mode, run.why = _choose_mode(run.full, run.retrained, run.prev, run.sig,
                                     st.has_table("block_keys") and st.has_table("joins")
                                     and "rk_l" in st.columns("links"))
    if not run.incremental and run.delta.fresh is not None:
        with run.timer.stage("read stored attributes"):
            run.records = run.with_attributes()
    run.rule_names = {i: r.name for i, r in enumerate(run.rules)}
    run.rule_names[COMPLETION_RULE] = "cluster completion"


def _block(run: _Run) -> None:
    """Candidate pairs: all of them (full), or those of new and changed records and of blocks
    that crossed their cap (incremental)."""
    from idweave.blocking.pairs import DEFAULT_MAX_BLOCK
    from idweave.linkage import _blockkeys as bk
    from idweave.linkage import _incremental as inc

    records = run.records
    with run.timer.stage("block"):
        if run.incremental:
            plan = bk.plan_pairs(run.st, records, inc.attributes(run.st, run.delta, run.delta.dirty_rids),
                                 run.delta.gone_rks, run.rules, max_block=DEFAULT_MAX_BLOCK, exclusive=run.exclusive)
            run.pairs, run.dirty, run.flip_pairs, run.flipped = plan.pairs, plan.dirty, plan.flip_pairs, plan.flipped_members
            run.new_keys = plan.new_keys
        else:
            # Keys and pairs in a DuckDB that spills to disk (generate_pairs' pairs, all_keys' rows).
            run.pairs, run.new_keys = bk.full_pairs(records, run.rules, max_block=DEFAULT_MAX_BLOCK,
                                                    exclusive=run.exclusive)
            run.dirty, run.flip_pairs, run.flipped = records["rid"], pl.DataFrame(schema=_NO_PAIRS), 0


def _score(run: _Run) -> None:
    """Score the new pairs; in an incremental run, join them to the stored links that stand
    (``blocking``) and collect the records to cluster again from (``seeds``)."""
    from idweave.linkage import _incremental as inc
    from idweave.linkage.forget import erased_neighbours

    st, records, dirty = run.st, run.records, run.dirty
    with run.timer.stage("score"):
        # Each piece's levels and weights go to the spill; its light columns stay. A new
        # model's scores are made canonical once its prior is known (below).
        prior = run.trained.prior
        run.spill.start("scored")

        def keep(piece: pl.DataFrame) -> pl.DataFrame:
            return run.spill.keep("scored", piece if run.retrained else inc.canonical_scores(piece, prior))

        scored = inc.score_chunks(inc.records_of(records, run.pairs, st, run.delta), run.pairs, run.trained,
                                  engine=engine_of(run.proj), count=run.timer.counter("score"), keep=keep)
        if run.retrained:
            # A new model's prior comes from its own candidate pairs (a retrain is always
            # a full run, so every pair was scored); the scores follow it.
            run.trained, _ = training.refine_prior(run.trained, scored, possible_pairs(records, run.exclusive))
            run.version = run.trained.version
            run.sig = _signature(run)
            scored = _rescored(run.spill, "scored", scored, run.trained.prior)
        run.scored = scored
        blocking = scored.select(_LIGHT)
        run.derived_stored = blocking.clear()
        run.seeds = dirty
        run.gone_neighbours = dirty.clear()
        run.flip_old = blocking.clear()
        if run.incremental:
            # Stored links stand unless they touch a new or changed record or lie in a
            # block that crossed its cap; the ends of those that go are re-clustered.
            stored = inc.stored_links(st, records, {n: i for i, n in run.rule_names.items()},
                                      derived=COMPLETION_RULE)
            goes = _ends(stored, _rid_mask(records.height, dirty), both=False)
            if run.flip_pairs.height:
                in_flip = _pair_key(stored, records.height).is_in(_pair_key(run.flip_pairs, records.height).implode())
                run.flip_old = stored.filter(in_flip)
                goes = goes | in_flip
            hit, kept = stored.filter(goes), stored.filter(~goes)
            run.gone_neighbours = pl.concat([inc.removed_neighbours(st, records, run.delta.removed),
                                             erased_neighbours(st, records)])
            run.seeds = pl.concat([dirty, hit["rid_l"], hit["rid_r"], run.pairs["rid_l"], run.pairs["rid_r"],
                                   run.gone_neighbours])
            run.derived_stored = kept.filter(pl.col("rule") == COMPLETION_RULE)
            blocking = pl.concat([kept.filter(pl.col("rule") != COMPLETION_RULE), blocking])
        run.blocking = blocking


def _affected(run: _Run) -> None:
    """The threshold, the decisions in force, and the part of the graph to cluster again."""
    from idweave.linkage import _incremental as inc

    records, blocking = run.records, run.blocking
    with run.timer.stage("affected"):
        thr = run.threshold if run.threshold is not None else run.proj.threshold
        run.chosen = thr is None
        if thr is None:
            thr = choose_threshold(blocking["match_probability"])
        run.thr = thr
        run.must, run.cannot = must, cannot = _decision_constraints(run.st, records)
        run.reclustered_all = not (run.incremental and run.prev is not None and run.prev["threshold"] == thr)
        run.constrained = pl.Series("rid", [r for pair in [*must, *cannot] for r in pair], dtype=pl.Int64)
        must_links = pl.DataFrame(must, schema=_NO_PAIRS, orient="row")
        if run.reclustered_all:
            run.affected = records["rid"]
        else:
            # The stored components holding a seed (a union of this run's components, see
            # _incremental.COMPONENTS), or the seeds' closure over every strong link.
            seeds = pl.concat([run.seeds.cast(pl.Int64), run.constrained])
            run.affected = inc.stored_components(run.st, records, seeds)
            if run.affected is None:
                strong = pl.concat([blocking.filter(pl.col("match_probability") >= thr).select("rid_l", "rid_r"),
                                    must_links])
                run.affected = closure(seeds, strong, records["rid"])
        run.aff_mask = _rid_mask(records.height, run.affected)
        run.blocking_affected = blocking.filter(_ends(blocking, run.aff_mask, both=True))
        run.components = inc.component_rows(records, run.affected, pl.concat([
            run.blocking_affected.filter(pl.col("match_probability") >= thr).select("rid_l", "rid_r"), must_links]))


def _complete(run: _Run) -> None:
    """Average linkage: score the pairs that complete each re-clustered component. Completion
    links are a function of each component: those of untouched components stand; inside the
    re-clustered part they are recomputed, scoring only pairs not already stored (a stored
    score is the score)."""
    from idweave.linkage import _incremental as inc

    records, derived_stored = run.records, run.derived_stored
    touches_affected = _ends(derived_stored, run.aff_mask, both=False)
    derived = run.scored.clear()
    run.derived_kept = derived_stored.filter(~touches_affected)
    derived_reused = derived_stored.clear()
    derived_drop = pl.DataFrame(schema=_NO_PAIRS)
    if run.method == "average":
        with run.timer.stage("complete"):
            extra = completion_pairs(run.blocking_affected, run.affected, threshold=run.thr)
            old = derived_stored.filter(touches_affected)
            old_key, extra_key = _pair_key(old, records.height), _pair_key(extra, records.height)
            wanted = old_key.is_in(extra_key.implode())
            derived_reused = old.filter(wanted)
            derived_drop = old.filter(~wanted).select("rid_l", "rid_r")
            extra = extra.filter(~extra_key.is_in(old_key.implode()))
            if extra.height:
                prior = run.trained.prior
                run.spill.start("derived")
                derived = inc.score_chunks(
                    inc.records_of(records, extra, run.st, run.delta),
                    extra.with_columns(pl.lit(COMPLETION_RULE, pl.Int32).alias("rule")), run.trained,
                    engine=engine_of(run.proj), count=run.timer.counter("complete"),
                    keep=lambda piece: run.spill.keep("derived", inc.canonical_scores(piece, prior)))
    elif derived_stored.height:
        derived_drop = derived_stored.select("rid_l", "rid_r")
    run.derived, run.derived_drop = derived, derived_drop
    run.derived_light = pl.concat([derived_reused, derived.select(_LIGHT)])


def _cluster(run: _Run) -> None:
    """Cluster the affected records (replaying the last run's joins where their links are as
    they were), with exclusivity and the decisions' must- and cannot-links."""
    from idweave.linkage import _incremental as inc

    records, aff = run.records, run.affected.implode()
    with run.timer.stage("cluster"):
        cl_links = pl.concat([run.blocking_affected, run.derived_light]).sort("rid_l", "rid_r")
        excl = {rid: s for rid, s in records.filter(pl.col("source").is_in(run.exclusive)
                                                    & pl.col("rid").is_in(aff))
                .select("rid", "source").iter_rows()}
        replay = {}
        if not run.reclustered_all:
            # Replay the last run's joins: only decisions touching a record whose links
            # may differ from the last run's are made again (see cluster()); every other
            # record's links among the re-clustered ones are as they were.
            # A link of a flipped block changed only if it is not the same pair with the
            # same probability before and after (most are: another rule still makes them).
            flip_new = pl.concat([run.scored.select(_LIGHT), run.derived_light]).join(
                run.flip_pairs, on=["rid_l", "rid_r"], how="semi")
            on = ["rid_l", "rid_r", "match_probability"]
            flip_changed = pl.concat([run.flip_old.join(flip_new, on=on, how="anti").select("rid_l", "rid_r"),
                                      flip_new.join(run.flip_old, on=on, how="anti").select("rid_l", "rid_r")])
            changed_links = pl.concat([flip_changed, run.derived_drop, run.derived.select("rid_l", "rid_r")])
            replay = {"previous_joined": inc.stored_joins(run.st, records, run.affected),
                      "dirty": pl.concat([run.dirty, changed_links["rid_l"], changed_links["rid_r"],
                                          run.gone_neighbours, run.constrained]).unique()}
        run.clusters, run.joined = cluster(cl_links, run.affected, threshold=run.thr, exclusive=excl,
                                           must_link=run.must, cannot_link=run.cannot, method=run.method,
                                           min_average=run.min_average, with_trace=True, **replay)
    run.links = links = pl.concat([run.blocking, run.derived_kept, run.derived_light])
    run.n_strong = int((links["match_probability"] >= run.thr).sum()) if links.height else 0


def _write(run: _Run) -> None:
    """Persistent ids for the clusters, and the store changed in one transaction."""
    from idweave.linkage import _incremental as inc

    proj = run.proj
    with run.timer.stage("store"):
        write = inc.RunWrite(
            mode=run.mode, records=run.records, seen=run.delta.seen, delta=run.delta,
            new_links=[("scored", run.scored), ("derived", run.derived)], spill=run.spill,
            rule_names=run.rule_names, rescored=run.dirty,
            drop_pairs=pl.concat([run.flip_pairs, run.derived_drop]), affected=run.affected, clusters=run.clusters,
            new_keys=run.new_keys, joined=run.joined, reclustered_all=run.reclustered_all,
            n_links_total=run.links.height, n_strong_total=run.n_strong, started=run.started,
            source_state=None if run.source_files is None else {
                "key": inc.unchanged_key(proj, run.threshold), "files": run.source_files.files,
                "checked_ns": run.source_files.checked_ns, "result": _standing(run)},
            row={"project_hash": proj.config_hash(), "model_version": run.version, "threshold": run.thr,
                 "clustering": run.method, "signature": run.sig,
                 "summary": json.dumps({"timings": run.timer.timings, "report": run.report.__dict__,
                                        "mode_reason": run.why, "training_log": run.trained.training_log,
                                        "single_listing": run.single_listing})})
        write.components = run.components
        run.entities, run.sizes, run.run_id, run.n_events = inc.write_run(run.st, proj, write, run.trained,
                                                                          _splink.splink_version())
    if run.retrained or not proj.model_file.exists():
        run.trained.save(proj.model_file)


def _rescored(spill: Spill, name: str, light: pl.DataFrame, prior: float) -> pl.DataFrame:
    """``light`` with the match weights and probabilities of a new prior, from the spilled
    weights (added up as :func:`~idweave.linkage._incremental.canonical_scores` does), a
    piece at a time."""
    from idweave.linkage import _incremental as inc

    parts = [inc.canonical_scores(piece, prior).select("match_weight", "match_probability")
             for piece in spill.pieces(name)]
    if not parts:
        return light
    return light.select("rid_l", "rid_r", "rule").hstack(pl.concat(parts))


def _result(run: _Run) -> LinkResult:
    """What :func:`link` returns: the entities, the pairs (built on first use) and the summary."""
    from idweave.linkage import _incremental as inc

    records, links, timings = run.records, run.links, run.timer.timings
    key = records.select("rid", "source", "record_id")

    def pair_view() -> pl.DataFrame:
        return (links.select("rid_l", "rid_r", "match_probability").sort("rid_l", "rid_r")
                .join(key.rename({"rid": "rid_l", "source": "source_l", "record_id": "record_id_l"}), on="rid_l")
                .join(key.rename({"rid": "rid_r", "source": "source_r", "record_id": "record_id_r"}), on="rid_r")
                .select("source_l", "record_id_l", "source_r", "record_id_r", "match_probability"))
    standing = _standing(run)
    summary = {
        "run_id": run.run_id,
        "mode": run.mode,
        "mode_reason": run.why,
        "records": standing.pop("records"),
        "records_per_source": standing.pop("records_per_source"),
        **inc.summary_counts(run.delta),
        **standing,
        "scored_pairs": run.scored.height + run.derived.height,
        "rescored_records": int(run.dirty.len()),
        "flipped_block_records": int(run.flipped),
        "reclustered_records": int(run.affected.len()),
        "entities": sum(run.sizes.values()),
        "entity_sizes": {str(k): v for k, v in run.sizes.items()},
        "retrained": run.retrained,
        "training_log": run.trained.training_log,
        "single_listing": run.single_listing,
        "events": run.n_events,
        "timings": timings,
    }
    return LinkResult(run.entities, summary=summary, timings=timings, run_id=run.run_id, _pairs=pair_view)


def _standing(run: _Run) -> dict[str, Any]:
    """The figures of the summary that describe the graph the run leaves (not what the run
    did): a later run that finds nothing changed reports them again (see :func:`_unchanged`)."""
    records, blocking = run.records, run.blocking
    per_rule = dict(blocking.group_by("rule").len().iter_rows())
    return {
        "records": records.height,
        "records_per_source": run.report.rows,
        "erased_skipped": run.n_erased,
        "unparsed_dates": run.report.unparsed_dates,
        "date_formats": run.report.date_formats,
        "rules": [r.name for r in run.rules],
        "pairs_per_rule": [int(per_rule.get(i, 0)) for i in range(len(run.rules))],
        "candidate_pairs": blocking.height,
        "pairs_per_record": round(blocking.height / max(records.height, 1), 2),
        "threshold": run.thr,
        "threshold_chosen": run.chosen,
        "clustering": run.method,
        "links": run.n_strong,
        "model_version": run.version,
    }


def _unchanged(proj: Project, threshold: float | None) -> LinkResult | None:
    """The last run's result, if running now would change nothing (see
    ``_incremental.unchanged_summary``: the sources' files, the project, the code and the
    store are as that run left them), without reading a row; else None (the run goes ahead).
    The store is opened read-only and not written; the entities and pairs are read from it
    only if asked for."""
    from idweave.linkage import _incremental as inc

    summary = inc.unchanged_summary(proj, threshold)
    if summary is None:
        return None
    store = proj.store

    def read(fn: Callable[[Store], pl.DataFrame]) -> Callable[[], pl.DataFrame]:
        def go() -> pl.DataFrame:
            with Store.open(store, read_only=True) as s:
                return fn(s)
        return go

    entities = read(lambda s: s.record_entities().select("source", "record_id", "entity_id"))
    return LinkResult(entities, summary=summary, timings=summary["timings"], run_id=summary["run_id"],
                      _pairs=read(lambda s: s.link_pairs()))


def _stored_index(store: Path | None) -> "inc.StoredIndex":
    """The store's record index, read-only before the run takes the store (bad input then
    never touches it), for loading to skip cleaning unchanged rows and for comparing; an
    empty one (everything cleaned again) for no store, a busy one, or a full run asked for
    (``store=None``)."""
    from idweave.linkage import _incremental as inc

    if store is not None and store.exists():
        try:
            with Store.open(store, read_only=True) as st:
                return inc.StoredIndex.read(st)
        except IdweaveError:
            pass  # busy or not a store: the run itself says so
    return inc.StoredIndex.empty()


def _pair_key(pairs: pl.DataFrame, n: int) -> pl.Series:
    """One int64 per pair (``rid_l``, ``rid_r`` < ``n``): set tests on pairs without a
    two-column join."""
    return pairs["rid_l"].cast(pl.Int64) * n + pairs["rid_r"].cast(pl.Int64)


def _rid_mask(n: int, rids: pl.Series) -> "np.ndarray":
    """A boolean array over this run's rids (0..n-1), true at ``rids``."""
    import numpy as np

    mask = np.zeros(n, dtype=bool)
    if rids.len():
        mask[rids.cast(pl.Int64).to_numpy()] = True
    return mask


def _ends(links: pl.DataFrame, mask: "np.ndarray", *, both: bool) -> pl.Series:
    """Per link: are both ends (or either end) of it in ``mask``? (A numpy gather: a
    million-row ``is_in`` costs far more.)"""
    if links.height == 0:
        return pl.Series(dtype=pl.Boolean)
    a, b = mask[links["rid_l"].to_numpy()], mask[links["rid_r"].to_numpy()]
    return pl.Series((a & b) if both else (a | b))


def _choose_mode(full: bool, retrained: bool, prev: dict[str, Any] | None, signature: str,
                 has_keys: bool = True) -> tuple[str, str]:
    """'incremental' or 'full', and why."""
    if full:
        return "full", "asked for (--full)"
    if prev is None:
        return "full", "first run"
    if not has_keys:
        return "full", "the store holds no blocking keys or clustering trace yet"
    if retrained:
        return "full", "new model"
    if prev.get("signature") != signature:
        return "full", "rules, model, clustering or code changed since the last run"
    return "incremental", "same rules, model and clustering as the last run"


def possible_pairs(records: pl.DataFrame, exclusive: list[str]) -> int:
    """How many pairs could be matches: all pairs but those inside an exclusive source."""
    n = records.height
    sizes = records.group_by("source").len()
    inside = sum(k * (k - 1) // 2 for s, k in sizes.iter_rows() if s in exclusive)
    return n * (n - 1) // 2 - inside


# The rule index of pairs scored to complete candidate clusters (not found by blocking).
COMPLETION_RULE = -1


def _model_for(proj: Project, st: Store, records: Callable[[], pl.DataFrame],
               retrain: bool) -> tuple[model_mod.TrainedModel, bool]:
    """The stored model if it still fits the project's comparisons, else one trained on
    ``records()`` (every record with its attributes)."""
    if not retrain:
        stored = scoring.stored_model(st)
        if stored is not None:
            settings, tf, _version = stored
            wanted = comparisons.build_settings(proj)
            if _comparisons_signature(settings) == _comparisons_signature(wanted):
                return model_mod.TrainedModel(settings, tf, ["reused the stored model"]), False
    return training.train(records(), proj), True


def _decision_constraints(st: Store, records: pl.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Must-link and cannot-link rid pairs from the decisions in force (see review.py)."""
    try:
        from idweave.linkage.decisions import constraints
    except ImportError:
        return [], []
    return constraints(st, records)
