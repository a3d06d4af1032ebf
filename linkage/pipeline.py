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

from idweave.blocking import generate_pairs
from idweave.blocking.pairs import PairStats
from idweave.linkage import model as model_mod
from idweave.linkage.cluster import DEFAULT_CLUSTERING, choose_threshold, closure, cluster, completion_pairs
from idweave.linkage.errors import IdweaveError, StoreBusyError
from idweave.linkage.graph import Store, utc_now
from idweave.linkage.project import Project, project_rules, resolve_project
from idweave.linkage.sources import LoadReport, load_records

if TYPE_CHECKING:
    import numpy as np

__all__ = ["link", "LinkResult", "Progress"]

Progress = Callable[[str, str], None]  # (stage, "start" | "end")


@dataclass
class LinkResult:
    """What :func:`link` returns: the ``entities`` (``source``, ``record_id``,
    ``entity_id``), every scored pair (``pairs``, built on first use: ``source_l``,
    ``record_id_l``, ``source_r``, ``record_id_r``, ``match_probability``), the ``summary``,
    the time per stage and the run id."""

    entities: pl.DataFrame
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None
    _pairs: pl.DataFrame | Callable[[], pl.DataFrame] | None = field(default=None, repr=False)

    @property
    def pairs(self) -> pl.DataFrame:
        if callable(self._pairs):
            self._pairs = self._pairs()
        assert self._pairs is not None
        return self._pairs


class _Timer:
    def __init__(self, progress: Progress | None):
        self.timings: dict[str, float] = {}
        self.progress = progress

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
    ``full=True`` recomputes every pair and cluster (ids are still inherited). A store held by
    another run raises :class:`~idweave.linkage.errors.StoreBusyError` after ``wait`` seconds.

    >>> r = link("fixtures/tiny/project.yaml")
    >>> r.summary["records"] == r.entities.height
    True
    >>> link("fixtures/tiny/project.yaml").summary["events"]  # the same input again: nothing changes
    0
    """
    proj = resolve_project(project, sources=sources)
    if store is not None:
        proj.store = Path(store)
    fresh = not proj.store.exists()
    try:
        return _link(proj, threshold=threshold, retrain=retrain, full=full, progress=progress, wait=wait)
    except StoreBusyError:
        raise
    except BaseException:
        # A first run that fails (after the checks, e.g. in training) leaves no empty store.
        if fresh:
            for f in (proj.store, proj.store.with_name(proj.store.name + ".wal")):
                f.unlink(missing_ok=True)
        raise


def _link(proj: Project, *, threshold: float | None, retrain: bool, full: bool, progress: Progress | None,
          wait: float) -> LinkResult:
    """The body of :func:`link`, on a resolved project."""
    from idweave.blocking.pairs import DEFAULT_MAX_BLOCK
    from idweave.linkage import _blockkeys as bk
    from idweave.linkage import _incremental as inc
    from idweave.linkage.forget import erased_neighbours, screen_erased
    from idweave.linkage.privacy import check_project_store, check_store

    started = utc_now()
    timer = _Timer(progress)
    report = LoadReport()
    with timer.stage("load"):
        check_project_store(proj)  # a missing or wrong pseudonymisation key stops the run here
        index = _stored_index(proj.store if not full else None)
        loaded = load_records(proj, report=report, stored=index.by_source)
        loaded, n_erased = screen_erased(proj, loaded, report)  # erased records refused or skipped
    exclusive_sources = [s.name for s in proj.sources.values() if s.exclusive]
    method = str(proj.clustering.get("method", DEFAULT_CLUSTERING))
    min_average = float(proj.clustering.get("min_average", 0.5))
    light_cols = ["rid_l", "rid_r", "rule", "match_probability"]

    with Store.open(proj.store, wait=wait) as st:
        check_store(proj, st)  # again, in case the store was busy when loading looked
        if n_erased is None:  # the store was busy when loading looked
            loaded, n_erased = screen_erased(proj, loaded, report, st=st)
        with timer.stage("compare"):
            try:
                delta = inc.compare(st, proj, loaded, index)
            except inc.StaleReuse:  # the store changed after loading read it: load again
                report = LoadReport()
                index = inc.StoredIndex.read(st)
                delta = inc.compare(st, proj, screen_erased(proj, load_records(proj, report=report,
                                                                               stored=index.by_source), report, st=st)[0], index)
        # In an incremental run the records carry no attributes: those of the records cleaned
        # now are in delta.fresh, the others stay in the store until a pair needs them.
        records = delta.records
        with_attributes = functools.cache(lambda: inc.attributes(st, delta))  # every record's, read once if needed
        rules = project_rules(proj, present=inc.present_attributes(st, delta, list(proj.attributes)))
        with timer.stage("train"):
            trained, retrained = _model_for(proj, st, with_attributes, retrain)
        version = trained.version  # a hash of the model and its term-frequency tables: once
        sig = inc.signature(proj, rules, exclusive_sources, DEFAULT_MAX_BLOCK, version,
                            model_mod.splink_version(), method, min_average)
        prev = st.last_run_info()
        mode, why = _choose_mode(full, retrained, prev, sig,
                                 st.has_table("block_keys") and st.has_table("joins")
                                 and "rk_l" in st.columns("links"))
        incremental = mode == "incremental"
        if not incremental and delta.fresh is not None:
            with timer.stage("read stored attributes"):
                records = with_attributes()
        rule_names = {i: r.name for i, r in enumerate(rules)}
        rule_names[COMPLETION_RULE] = "cluster completion"
        stats = PairStats()
        no_pairs = pl.DataFrame(schema={"rid_l": pl.Int64, "rid_r": pl.Int64})
        with timer.stage("block"):
            if incremental:
                plan = bk.plan_pairs(st, records, inc.attributes(st, delta, delta.dirty_rids), delta.gone_rks,
                                     rules, max_block=DEFAULT_MAX_BLOCK, exclusive=exclusive_sources)
                pairs, dirty, flip_pairs, flipped = plan.pairs, plan.dirty, plan.flip_pairs, plan.flipped_members
                new_keys = plan.new_keys
            else:
                keys, new_keys = bk.all_keys(records, rules)
                pairs = generate_pairs(records, rules, exclusive=exclusive_sources, stats=stats, keys=keys)
                dirty, flip_pairs, flipped = records["rid"], no_pairs, 0
                del keys
        with timer.stage("score"):
            scored = model_mod.score_pairs(inc.records_of(records, pairs, st, delta), pairs, trained,
                                           engine=proj.engine)
            if retrained:
                # A new model's prior comes from its own candidate pairs (a retrain is always
                # a full run, so every pair was scored).
                trained, scored = model_mod.refine_prior(trained, scored, possible_pairs(records, exclusive_sources))
                version = trained.version
                sig = inc.signature(proj, rules, exclusive_sources, DEFAULT_MAX_BLOCK, version,
                                    model_mod.splink_version(), method, min_average)
            scored = inc.canonical_scores(scored, trained.prior)
            blocking = scored.select(light_cols)
            derived_stored = blocking.clear()
            seeds = dirty
            gone_neighbours = dirty.clear()
            flip_old = blocking.clear()
            if incremental:
                # Stored links stand unless they touch a new or changed record or lie in a
                # block that crossed its cap; the ends of those that go are re-clustered.
                stored = inc.stored_links(st, records, {n: i for i, n in rule_names.items()},
                                          derived=COMPLETION_RULE)
                goes = _ends(stored, _rid_mask(records.height, dirty), both=False)
                if flip_pairs.height:
                    in_flip = _pair_key(stored, records.height).is_in(_pair_key(flip_pairs, records.height).implode())
                    flip_old = stored.filter(in_flip)
                    goes = goes | in_flip
                hit, kept = stored.filter(goes), stored.filter(~goes)
                gone_neighbours = pl.concat([inc.removed_neighbours(st, records, delta.removed),
                                             erased_neighbours(st, records)])
                seeds = pl.concat([dirty, hit["rid_l"], hit["rid_r"], pairs["rid_l"], pairs["rid_r"], gone_neighbours])
                derived_stored = kept.filter(pl.col("rule") == COMPLETION_RULE)
                blocking = pl.concat([kept.filter(pl.col("rule") != COMPLETION_RULE), blocking])
        with timer.stage("affected"):  # the threshold, and the part of the graph to cluster again
            thr = threshold if threshold is not None else proj.threshold
            chosen = thr is None
            if thr is None:
                thr = choose_threshold(blocking["match_probability"])
            must, cannot = _decision_constraints(st, records)
            reclustered_all = not (incremental and prev is not None and prev["threshold"] == thr)
            constrained = pl.Series("rid", [r for pair in [*must, *cannot] for r in pair], dtype=pl.Int64)
            if reclustered_all:
                affected = records["rid"]
            else:
                strong = pl.concat([blocking.filter(pl.col("match_probability") >= thr).select("rid_l", "rid_r"),
                                    pl.DataFrame(must, schema={"rid_l": pl.Int64, "rid_r": pl.Int64}, orient="row")])
                affected = closure(pl.concat([seeds.cast(pl.Int64), constrained]), strong, records["rid"])
        aff = affected.implode()
        aff_mask = _rid_mask(records.height, affected)
        blocking_affected = blocking.filter(_ends(blocking, aff_mask, both=True))
        touches_affected = _ends(derived_stored, aff_mask, both=False)
        # Completion links are a function of each component: those of untouched components
        # stand; inside the re-clustered part they are recomputed, scoring only pairs not
        # already stored (a stored score is the score).
        derived = scored.clear()
        derived_kept = derived_stored.filter(~touches_affected)
        derived_reused = derived_stored.clear()
        derived_drop = no_pairs
        if method == "average":
            with timer.stage("complete"):
                extra = completion_pairs(blocking_affected, affected, threshold=thr)
                old = derived_stored.filter(touches_affected)
                old_key, extra_key = _pair_key(old, records.height), _pair_key(extra, records.height)
                wanted = old_key.is_in(extra_key.implode())
                derived_reused = old.filter(wanted)
                derived_drop = old.filter(~wanted).select("rid_l", "rid_r")
                extra = extra.filter(~extra_key.is_in(old_key.implode()))
                if extra.height:
                    derived = inc.canonical_scores(model_mod.score_pairs(
                        inc.records_of(records, extra, st, delta),
                        extra.with_columns(pl.lit(COMPLETION_RULE, pl.Int32).alias("rule")), trained,
                        engine=proj.engine), trained.prior).select(scored.columns)
        elif derived_stored.height:
            derived_drop = derived_stored.select("rid_l", "rid_r")
        derived_light = pl.concat([derived_reused, derived.select(light_cols)])
        with timer.stage("cluster"):
            cl_links = pl.concat([blocking_affected, derived_light]).sort("rid_l", "rid_r")
            excl = {rid: s for rid, s in records.filter(pl.col("source").is_in(exclusive_sources)
                                                        & pl.col("rid").is_in(aff))
                    .select("rid", "source").iter_rows()}
            replay = {}
            if not reclustered_all:
                # Replay the last run's joins: only decisions touching a record whose links
                # may differ from the last run's are made again (see cluster()); every other
                # record's links among the re-clustered ones are as they were.
                # A link of a flipped block changed only if it is not the same pair with the
                # same probability before and after (most are: another rule still makes them).
                flip_new = pl.concat([scored.select(light_cols), derived_light]).join(
                    flip_pairs, on=["rid_l", "rid_r"], how="semi")
                on = ["rid_l", "rid_r", "match_probability"]
                flip_changed = pl.concat([flip_old.join(flip_new, on=on, how="anti").select("rid_l", "rid_r"),
                                          flip_new.join(flip_old, on=on, how="anti").select("rid_l", "rid_r")])
                changed_links = pl.concat([flip_changed, derived_drop, derived.select("rid_l", "rid_r")])
                replay = {"previous_joined": inc.stored_joins(st, records, affected),
                          "dirty": pl.concat([dirty, changed_links["rid_l"], changed_links["rid_r"],
                                              gone_neighbours, constrained]).unique()}
            clusters, joined = cluster(cl_links, affected, threshold=thr, exclusive=excl, must_link=must,
                                       cannot_link=cannot, method=method, min_average=min_average,
                                       with_trace=True, **replay)
        links = pl.concat([blocking, derived_kept, derived_light])
        n_strong = int((links["match_probability"] >= thr).sum()) if links.height else 0
        with timer.stage("store"):
            write = inc.RunWrite(
                mode=mode, records=records, seen=delta.seen, delta=delta,
                new_links=pl.concat([scored, derived]), rule_names=rule_names, rescored=dirty,
                drop_pairs=pl.concat([flip_pairs, derived_drop]), affected=affected, clusters=clusters,
                new_keys=new_keys, joined=joined, reclustered_all=reclustered_all,
                n_links_total=links.height, n_strong_total=n_strong, started=started,
                row={"project_hash": proj.config_hash(), "model_version": version, "threshold": thr,
                     "clustering": method, "signature": sig,
                     "summary": json.dumps({"timings": timer.timings, "report": report.__dict__,
                                            "mode_reason": why, "training_log": trained.training_log})})
            entities, sizes, run_id, n_events = inc.write_run(st, proj, write, trained, model_mod.splink_version())
        if retrained or not proj.model_file.exists():
            trained.save(proj.model_file)

    key = records.select("rid", "source", "record_id")

    def pair_view() -> pl.DataFrame:
        return (links.select("rid_l", "rid_r", "match_probability").sort("rid_l", "rid_r")
                .join(key.rename({"rid": "rid_l", "source": "source_l", "record_id": "record_id_l"}), on="rid_l")
                .join(key.rename({"rid": "rid_r", "source": "source_r", "record_id": "record_id_r"}), on="rid_r")
                .select("source_l", "record_id_l", "source_r", "record_id_r", "match_probability"))
    per_rule = dict(blocking.group_by("rule").len().iter_rows())
    summary = {
        "run_id": run_id,
        "mode": mode,
        "mode_reason": why,
        "records": records.height,
        "records_per_source": report.rows,
        **inc.summary_counts(delta),
        "erased_skipped": n_erased,
        "unparsed_dates": report.unparsed_dates,
        "date_formats": report.date_formats,
        "rules": [r.name for r in rules],
        "pairs_per_rule": [int(per_rule.get(i, 0)) for i in range(len(rules))],
        "candidate_pairs": blocking.height,
        "pairs_per_record": round(blocking.height / max(records.height, 1), 2),
        "scored_pairs": scored.height + derived.height,
        "rescored_records": int(dirty.len()),
        "flipped_block_records": int(flipped),
        "reclustered_records": int(affected.len()),
        "threshold": thr,
        "threshold_chosen": chosen,
        "clustering": method,
        "links": n_strong,
        "entities": sum(sizes.values()),
        "entity_sizes": {str(k): v for k, v in sizes.items()},
        "model_version": version,
        "retrained": retrained,
        "training_log": trained.training_log,
        "events": n_events,
        "timings": timer.timings,
    }
    return LinkResult(entities=entities, summary=summary, timings=timer.timings, run_id=run_id, _pairs=pair_view)


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
        stored = st.latest_model()
        if stored is not None:
            settings, tf, _version = stored
            wanted = model_mod.build_settings(proj)
            if _comparisons_signature(settings) == _comparisons_signature(wanted):
                return model_mod.TrainedModel(settings, tf, ["reused the stored model"]), False
    return model_mod.train(records(), proj), True


def _decision_constraints(st: Store, records: pl.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Must-link and cannot-link rid pairs from the decisions in force (see review.py)."""
    try:
        from idweave.linkage.review import constraints
    except ImportError:
        return [], []
    return constraints(st, records)
