"""link(project): sources -> records -> pairs -> links -> clusters -> persistent entities.

Everything is computed in memory first; the store is then changed in one transaction, so a
run either lands whole or not at all, and bad input never creates or touches a store.

>>> from idweave.linkage import link
>>> result = link("fixtures/tiny/project.yaml")
>>> sorted(result.entities.columns)
['entity_id', 'record_id', 'source']
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import polars as pl

from idweave.linkage._db import query_pl

from idweave.blocking import derive_rules, generate_pairs, parse_rules
from idweave.blocking.pairs import PairStats
from idweave.blocking.rules import Rule
from idweave.linkage import model as model_mod
from idweave.linkage.cluster import choose_threshold, cluster
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store, _now, assign_ids
from idweave.linkage.project import Project, load_project, project_from_dict
from idweave.linkage.sources import LoadReport, load_records

__all__ = ["link", "LinkResult", "resolve_project", "project_rules", "with_rids", "Progress"]

Progress = Callable[[str, str], None]  # (stage, "start" | "end")


@dataclass
class LinkResult:
    """What :func:`link` returns."""

    entities: pl.DataFrame
    pairs: pl.DataFrame
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    run_id: int | None = None


def resolve_project(project: Project | str | Path | Mapping[str, Any], *,
                    sources: Mapping[str, Any] | None = None) -> Project:
    """Accept a Project, a path to a project file, or a dict in the project-file form."""
    if isinstance(project, Project):
        if sources:
            for name, frame in sources.items():
                project.sources[name].frame = frame
        return project
    if isinstance(project, (str, Path)):
        return load_project(project, sources=sources)
    return project_from_dict(project, sources=sources)


def project_rules(project: Project, records: pl.DataFrame | None = None) -> list[Rule]:
    """The project's blocking rules, or the ones derived from its kinds.

    Derived rules only use attributes some record has, so a project with an attribute no
    source maps does not pay for rules that can find nothing.
    """
    kinds = {a.name: a.kind for a in project.attributes.values()}
    if project.blocking is not None:
        return parse_rules(project.blocking, attributes=kinds)
    if records is not None:
        kinds = {a: k for a, k in kinds.items() if records[a].null_count() < records.height}
    return derive_rules(kinds)


def with_rids(records: pl.DataFrame) -> pl.DataFrame:
    """Records in a fixed order (source, record_id) with ``rid`` = row number, so the same
    input always gets the same rids."""
    return records.sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))


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

    >>> r = link("fixtures/tiny/project.yaml")
    >>> r.summary["records"] == r.entities.height
    True
    """
    proj = resolve_project(project, sources=sources)
    if store is not None:
        proj.store = Path(store)
    timer = _Timer(progress)
    report = LoadReport()
    with timer.stage("load"):
        records = with_rids(load_records(proj, report=report))
    rules = project_rules(proj, records)
    exclusive_sources = [s.name for s in proj.sources.values() if s.exclusive]

    with Store.open(proj.store, wait=wait) as st:
        with timer.stage("block"):
            stats = PairStats()
            pairs = generate_pairs(records, rules, exclusive=exclusive_sources, stats=stats)
        with timer.stage("train"):
            trained, retrained = _model_for(proj, st, records, retrain)
        with timer.stage("score"):
            links = model_mod.score_pairs(records, pairs, trained, engine=proj.engine)
        thr = threshold if threshold is not None else proj.threshold
        chosen = thr is None
        if thr is None:
            thr = choose_threshold(links["match_probability"])
        method = str(proj.clustering.get("method", "components"))
        with timer.stage("cluster"):
            must, cannot = _decision_constraints(st, records)
            excl = {rid: s for rid, s in records.filter(pl.col("source").is_in(exclusive_sources))
                    .select("rid", "source").iter_rows()}
            clusters = cluster(links, records["rid"], threshold=thr, exclusive=excl, must_link=must,
                               cannot_link=cannot, method=method,
                               min_average=float(proj.clustering.get("min_average", 0.5)))
        with timer.stage("store"):
            entities, run_id, n_events = _write_run(
                st, proj, records, rules, links, clusters, trained, thr, method, timer.timings, report)
        if retrained or not proj.model_file.exists():
            trained.save(proj.model_file)

    key = records.select("rid", "source", "record_id")
    pair_view = (
        links.select("rid_l", "rid_r", "match_probability")
        .join(key.rename({"rid": "rid_l", "source": "source_l", "record_id": "record_id_l"}), on="rid_l")
        .join(key.rename({"rid": "rid_r", "source": "source_r", "record_id": "record_id_r"}), on="rid_r")
        .select("source_l", "record_id_l", "source_r", "record_id_r", "match_probability")
    )
    sizes = entities.group_by("entity_id").len()["len"]
    summary = {
        "run_id": run_id,
        "records": records.height,
        "records_per_source": report.rows,
        "unparsed_dates": report.unparsed_dates,
        "date_formats": report.date_formats,
        "rules": [r.name for r in rules],
        "pairs_per_rule": stats.added,
        "candidate_pairs": pairs.height,
        "pairs_per_record": round(pairs.height / max(records.height, 1), 2),
        "threshold": thr,
        "threshold_chosen": chosen,
        "clustering": method,
        "links": int((links["match_probability"] >= thr).sum()) if links.height else 0,
        "entities": entities["entity_id"].n_unique(),
        "entity_sizes": {str(k): v for k, v in sizes.value_counts().sort(sizes.name).iter_rows()},
        "model_version": trained.version,
        "retrained": retrained,
        "training_log": trained.training_log,
        "events": n_events,
        "timings": timer.timings,
    }
    return LinkResult(entities=entities, pairs=pair_view, summary=summary, timings=timer.timings, run_id=run_id)


def _model_for(proj: Project, st: Store, records: pl.DataFrame, retrain: bool) -> tuple[model_mod.TrainedModel, bool]:
    """The stored model if it still fits the project's comparisons, else a newly trained one."""
    if not retrain:
        stored = st.latest_model()
        if stored is not None:
            settings, tf, _version = stored
            wanted = model_mod.build_settings(proj)
            if _comparisons_signature(settings) == _comparisons_signature(wanted):
                return model_mod.TrainedModel(settings, tf, ["reused the stored model"]), False
    return model_mod.train(records, proj), True


def _decision_constraints(st: Store, records: pl.DataFrame) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Must-link and cannot-link rid pairs from the decisions in force (see review.py)."""
    try:
        from idweave.linkage.review import constraints
    except ImportError:
        return [], []
    return constraints(st, records)


def _write_run(st: Store, proj: Project, records: pl.DataFrame, rules: list[Rule], links: pl.DataFrame,
               clusters: pl.DataFrame, trained: model_mod.TrainedModel, thr: float, method: str,
               timings: dict[str, float], report: LoadReport) -> tuple[pl.DataFrame, int, int]:
    """Assign persistent ids and write the whole run in one transaction."""
    old = st.records()
    old_entity_of = {(s, r): e for s, r, e in old.select("source", "record_id", "entity_id").iter_rows()} \
        if old.height else {}
    old_hash = {(s, r): h for s, r, h in old.select("source", "record_id", "content_hash").iter_rows()} \
        if old.height else {}
    lab = clusters.join(records.select("rid", "source", "record_id"), on="rid")
    cl = {(s, r): c for s, r, c in lab.select("source", "record_id", "cluster").iter_rows()}
    assignment = assign_ids(cl, old_entity_of, st.entity_ages())
    current = set(cl)
    removed = sorted(set(old_entity_of) - current)
    run_id = st.last_run() + 1
    now = _now()
    events = list(assignment.events)
    for s, r in removed:
        events.append({"type": "record_removed", "entity_id": old_entity_of[(s, r)], "source": s, "record_id": r})
    # Entities that lost every record (and were not merged away) retire.
    alive = set(assignment.entity_of.values())
    merged_away = {m for m, _ in assignment.merged}
    retired = sorted(set(old_entity_of.values()) - alive - merged_away)
    for e in retired:
        events.append({"type": "entity_retired", "entity_id": e})
    new_hash = {(s, r): h for s, r, h in records.select("source", "record_id", "content_hash").iter_rows()}
    changed = sum(1 for k in current if k in old_hash and old_hash[k] != new_hash[k])
    new = sum(1 for k in current if k not in old_hash)

    ent = pl.DataFrame({"source": [k[0] for k in assignment.entity_of],
                        "record_id": [k[1] for k in assignment.entity_of],
                        "entity_id": list(assignment.entity_of.values())})
    attrs = list(proj.attributes)
    prev_seen = old.select("source", "record_id", "first_seen_run") if old.height and "first_seen_run" in old.columns \
        else pl.DataFrame(schema={"source": pl.Utf8, "record_id": pl.Utf8, "first_seen_run": pl.Int32})
    rec_table = (
        records.select("source", "record_id", *attrs, "content_hash")
        .join(ent, on=["source", "record_id"])
        .join(prev_seen, on=["source", "record_id"], how="left")
        .with_columns(pl.col("first_seen_run").fill_null(run_id).cast(pl.Int32),
                      pl.lit(run_id, pl.Int32).alias("last_seen_run"))
        .sort("source", "record_id")
    )
    key = records.select("rid", "source", "record_id")
    rule_names = pl.DataFrame({"rule": list(range(len(rules))), "rule_name": [r.name for r in rules]},
                              schema={"rule": pl.Int32, "rule_name": pl.Utf8})
    link_table = (
        links.join(key.rename({"rid": "rid_l", "source": "source_l", "record_id": "record_id_l"}), on="rid_l")
        .join(key.rename({"rid": "rid_r", "source": "source_r", "record_id": "record_id_r"}), on="rid_r")
        .join(rule_names, on="rule", how="left")
        .drop("rid_l", "rid_r", "rule")
        .rename({"rule_name": "rule"})
    )
    link_table = link_table.select("source_l", "record_id_l", "source_r", "record_id_r", "rule",
                                   "match_weight", "match_probability",
                                   *[c for c in link_table.columns if c.startswith(("level_", "w_"))])
    sizes = ent.group_by("entity_id").len().rename({"len": "size"})
    try:
        st.begin()
        st.save_model(trained.version, trained.settings, trained.tf_tables, run_id, model_mod.splink_version())
        st.replace_table("records", rec_table)
        st.replace_table("links", link_table)
        # entities: update the ones this run touched; insert new ones.
        ent_old = query_pl(st.con, "select * from entities")
        touched = assignment.touched | set(retired)
        rows = {r["entity_id"]: r for r in ent_old.iter_rows(named=True)}
        size_of = dict(sizes.iter_rows())
        for eid, split_from in assignment.created:
            rows[eid] = {"entity_id": eid, "status": "active", "merged_into": None, "split_from": split_from,
                         "created_run": run_id, "changed_run": run_id, "size": size_of.get(eid, 0)}
        for loser, survivor in assignment.merged:
            rows[loser].update(status="merged", merged_into=survivor, changed_run=run_id, size=0)
        for e in retired:
            rows[e].update(status="retired", changed_run=run_id, size=0)
        for eid, n in size_of.items():
            r = rows[eid]
            if r.get("size") != n or eid in touched:
                r.update(size=n)
                if eid in touched:
                    r.update(changed_run=run_id)
        schema = {"entity_id": pl.Utf8, "status": pl.Utf8, "merged_into": pl.Utf8, "split_from": pl.Utf8,
                  "created_run": pl.Int32, "changed_run": pl.Int32, "size": pl.Int32}
        st.con.execute("delete from entities")
        if rows:
            st.con.register("_ent", pl.DataFrame(list(rows.values()), schema=schema).to_arrow())
            st.con.execute("insert into entities by name select * from _ent")
            st.con.unregister("_ent")
        n_events = st.append_events(events, run_id=run_id)
        st.con.execute(
            "insert into runs values (?, ?, ?, 'full', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, now, _now(), proj.config_hash(), trained.version, thr, method, records.height, new, changed,
             len(removed), links.height, int((links["match_probability"] >= thr).sum()) if links.height else 0,
             ent["entity_id"].n_unique(), n_events, json.dumps({"timings": timings, "report": report.__dict__})])
        st.commit()
    except BaseException:
        st.rollback()
        raise
    return ent.sort("source", "record_id"), run_id, n_events

