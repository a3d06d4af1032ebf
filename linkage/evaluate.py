"""Metrics against truth labels: pairwise and B-cubed precision/recall/F1, a threshold sweep,
and the errors (false links, missed links) so a person can see why.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> rep = evaluate("fixtures/tiny/project.yaml", truth="true_person")
>>> 0 <= rep.metrics["pairwise_f1"] <= 1
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import polars as pl

from idweave.linkage.cluster import cluster
from idweave.linkage.errors import IdweaveError, SourceError
from idweave.linkage.graph import Store
from idweave.linkage.model import exclusive_sources
from idweave.linkage.project import resolve_project
from idweave.linkage.project import Project
from idweave.linkage.readers import source_columns
from idweave.linkage.sources import load_records

__all__ = ["evaluate", "cluster_metrics", "EvaluationReport", "SWEEP_THRESHOLDS"]

SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def cluster_metrics(pred: Sequence[Any] | pl.Series, truth: Sequence[Any] | pl.Series) -> dict[str, float]:
    """Pairwise (over all pairs inside predicted clusters) and B-cubed metrics.

    >>> m = cluster_metrics([1, 1, 2, 2, 2, 3], [1, 1, 1, 2, 2, 3])
    >>> m["pairwise_precision"], m["pairwise_recall"]
    (0.5, 0.5)
    """
    df = pl.DataFrame({"p": pl.Series(list(pred)).cast(pl.Utf8), "t": pl.Series(list(truth)).cast(pl.Utf8)})
    n = df.height
    cell = df.group_by("p", "t").len()
    ps = df.group_by("p").len().rename({"len": "np"})
    ts = df.group_by("t").len().rename({"len": "nt"})

    def c2(col: str) -> pl.Expr:
        return (pl.col(col) * (pl.col(col) - 1) // 2).sum()

    tp = int(cell.select(c2("len")).item())
    pp = int(ps.select(c2("np")).item())
    tt = int(ts.select(c2("nt")).item())
    prec = tp / pp if pp else 1.0
    rec = tp / tt if tt else 1.0
    cj = cell.join(ps, on="p").join(ts, on="t")
    bp = float(cj.select((pl.col("len") ** 2 / pl.col("np")).sum()).item()) / n if n else 1.0
    br = float(cj.select((pl.col("len") ** 2 / pl.col("nt")).sum()).item()) / n if n else 1.0
    return {"pairwise_precision": prec, "pairwise_recall": rec, "pairwise_f1": _f1(prec, rec),
            "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f1": _f1(bp, br),
            "predicted_pairs": pp, "true_pairs": tt, "true_positive_pairs": tp,
            "entities": int(ps.height), "true_entities": int(ts.height)}


@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured."""

    metrics: dict[str, float]
    sweep: pl.DataFrame
    false_links: pl.DataFrame
    missed_links: pl.DataFrame
    blocking_recall: float
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _truth_notes(proj: Project, truth: str) -> list[str]:
    """A warning when the truth column is one the model compares (mapped to an attribute):
    agreement with it then measures the model against its own evidence."""
    mapped = [f"{s.name}.columns.{a}" for s in proj.sources.values() for a, c in s.columns.items() if c == truth]
    if not mapped:
        return []
    return [f"the truth column '{truth}' is mapped to an attribute ({', '.join(mapped)}): the model compares it, "
            "so these figures are not measured against an independent truth; use a column of true entity labels"]


def evaluate(project: Project | str | Path | Mapping[str, Any], *, truth: str,
             thresholds: Sequence[float] = SWEEP_THRESHOLDS, max_errors: int = 50) -> EvaluationReport:
    """Score the stored entities against a truth column present in the sources.

    Reads the store (never writes it). The sweep re-clusters the stored links at each
    threshold with the same constraints a run uses, so it shows what ``--threshold`` would do.
    """
    proj = resolve_project(project)
    if not any(truth in source_columns(s) for s in proj.sources.values()):
        raise SourceError(f"no source has the truth column '{truth}'", column=truth)
    records = load_records(proj, extra_columns=[truth]).select("source", "record_id", truth)
    with Store.open(proj.store, read_only=True) as st:
        ents = st.require(records=True).record_entity_index()
        links = st.link_keys()
        run = st.last_run_clustering()
        excl_sources = exclusive_sources(proj, st)  # as the runs cluster
    df = records.join(ents, on=["source", "record_id"], how="inner")
    # Records without a truth label are their own entity (a singleton can only cost recall).
    df = df.with_columns(pl.col(truth).fill_null(pl.concat_str([pl.lit("__none__"), pl.col("source"),
                                                                pl.col("record_id")])))
    metrics = cluster_metrics(df["entity_id"], df[truth])
    thr = float(run["threshold"][0])
    method = str(run["clustering"][0])

    # Number records exactly as a run does, so the sweep breaks ties as the run did.
    key = df.sort("source", "record_id").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    lk = (links.join(key.select(pl.col("rid").alias("rid_l"), pl.col("source").alias("source_l"),
                                pl.col("record_id").alias("record_id_l"), pl.col(truth).alias("t_l")),
                     on=["source_l", "record_id_l"])
          .join(key.select(pl.col("rid").alias("rid_r"), pl.col("source").alias("source_r"),
                           pl.col("record_id").alias("record_id_r"), pl.col(truth).alias("t_r")),
                on=["source_r", "record_id_r"]))
    true_pairs = metrics["true_pairs"]
    found = int(lk.filter(pl.col("t_l") == pl.col("t_r")).height)
    blocking_recall = found / true_pairs if true_pairs else 1.0

    excl = {r: s for r, s in key.filter(pl.col("source").is_in(sorted(excl_sources))).select("rid", "source").iter_rows()}
    rows = []
    for t in thresholds:
        cl = cluster(lk, key["rid"], threshold=t, exclusive=excl, method=method,
                     min_average=float(proj.clustering.get("min_average", 0.5)))
        m = cluster_metrics(cl["cluster"], key[truth])
        rows.append({"threshold": t, **{k: m[k] for k in ("pairwise_precision", "pairwise_recall", "pairwise_f1",
                                                           "bcubed_precision", "bcubed_recall", "bcubed_f1",
                                                           "entities")}})
    sweep = pl.DataFrame(rows)

    same_pred = key.select("source", "record_id", "entity_id")
    pe = (lk.join(same_pred.rename({"source": "source_l", "record_id": "record_id_l", "entity_id": "e_l"}),
                  on=["source_l", "record_id_l"])
          .join(same_pred.rename({"source": "source_r", "record_id": "record_id_r", "entity_id": "e_r"}),
                on=["source_r", "record_id_r"]))
    cols = ["source_l", "record_id_l", "source_r", "record_id_r", "match_probability"]
    false_links = (pe.filter((pl.col("e_l") == pl.col("e_r")) & (pl.col("t_l") != pl.col("t_r")))
                   .sort("match_probability", descending=True).select(cols).head(max_errors))
    missed_links = (pe.filter((pl.col("e_l") != pl.col("e_r")) & (pl.col("t_l") == pl.col("t_r")))
                    .sort("match_probability", descending=True).select(cols).head(max_errors))
    n_false = int(pe.filter((pl.col("e_l") == pl.col("e_r")) & (pl.col("t_l") != pl.col("t_r"))).height)
    n_missed = int(pe.filter((pl.col("e_l") != pl.col("e_r")) & (pl.col("t_l") == pl.col("t_r"))).height)
    return EvaluationReport(metrics=metrics, sweep=sweep, false_links=false_links, missed_links=missed_links,
                            blocking_recall=blocking_recall, threshold=thr,
                            extra={"false_link_pairs_scored": n_false, "missed_pairs_scored": n_missed,
                                   "true_pairs_not_blocked": true_pairs - found},
                            notes=_truth_notes(proj, truth))


# --------------------------------------------------------------------------------------
# labelled pairs (Splink's clerical format): human decisions as a yardstick
# --------------------------------------------------------------------------------------
@dataclass
class LabelEvaluation:
    """What :func:`evaluate_labels` measured: the stored entities against labelled pairs.

    ``metrics``: labelled pairs, pairs whose two records are both in the store, and the
    confusion counts, precision, recall, F1 and accuracy of "same entity" against the label
    (``clerical_match_score`` >= 0.5 means a match). ``disagreements`` lists the pairs where
    the store and the label differ, with the stored match probability where the pair was scored.
    """

    metrics: dict[str, float]
    disagreements: pl.DataFrame
    notes: list[str] = field(default_factory=list)


_LABEL_COLUMNS = ("unique_id_l", "source_dataset_l", "unique_id_r", "source_dataset_r", "clerical_match_score")


def evaluate_labels(project: Project | str | Path | Mapping[str, Any], labels_path: str | Path, *,
                    max_errors: int = 50) -> LabelEvaluation:
    """Score the stored entities against a labels file in Splink's clerical format
    (``unique_id_l, source_dataset_l, unique_id_r, source_dataset_r, clerical_match_score``),
    such as ``idweave export-labels`` writes. Reads the store, never writes it.

    When the project has one source and the labels name another dataset (Splink's own label
    files name theirs), the labels are read as being about that one source.

    >>> from idweave.linkage import link
    >>> r = link("fixtures/tiny/project.yaml")
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> a, b = r.pairs.row(0)[:2], r.pairs.row(0)[2:4]
    >>> _ = pl.DataFrame({"unique_id_l": [a[1]], "source_dataset_l": [a[0]], "unique_id_r": [b[1]],
    ...                   "source_dataset_r": [b[0]], "clerical_match_score": [1.0]}).write_csv(path)
    >>> evaluate_labels("fixtures/tiny/project.yaml", path).metrics["labelled_pairs"]
    1
    """
    proj = resolve_project(project)
    path = Path(labels_path)
    if not path.exists():
        raise IdweaveError("labels file not found", file=str(path))
    try:
        labels = pl.read_csv(path, infer_schema=False)
    except Exception as exc:  # noqa: BLE001 - polars raises several kinds for a malformed CSV
        raise IdweaveError(f"cannot read the labels file: {str(exc).splitlines()[0]}", file=str(path)) from None
    missing = [c for c in _LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise IdweaveError(f"the labels file lacks the columns {', '.join(missing)}; found: "
                           f"{', '.join(labels.columns)}", file=str(path))
    score = labels["clerical_match_score"].cast(pl.Float64, strict=False)
    bad = labels.filter(score.is_null())
    if bad.height:
        raise IdweaveError("clerical_match_score must be a number from 0 to 1", file=str(path),
                           column="clerical_match_score", row=f"{bad['unique_id_l'][0]} / {bad['unique_id_r'][0]}")
    labels = labels.with_columns(score.alias("clerical_match_score"))
    notes = []
    names = set(proj.sources)
    if len(names) == 1:
        only = next(iter(names))
        used = set(labels["source_dataset_l"].to_list()) | set(labels["source_dataset_r"].to_list())
        if not used & names:
            labels = labels.with_columns(pl.lit(only).alias("source_dataset_l"), pl.lit(only).alias("source_dataset_r"))
            notes.append(f"labels name {', '.join(sorted(str(u) for u in used))}; read as source '{only}'")
    with Store.open(proj.store, read_only=True) as st:
        ents = st.require(records=True).record_entity_index()
        links = st.link_keys()
    lab = (labels.rename({"source_dataset_l": "source_l", "unique_id_l": "record_id_l",
                          "source_dataset_r": "source_r", "unique_id_r": "record_id_r"})
           .join(ents.rename({"source": "source_l", "record_id": "record_id_l", "entity_id": "e_l"}),
                 on=["source_l", "record_id_l"], how="left")
           .join(ents.rename({"source": "source_r", "record_id": "record_id_r", "entity_id": "e_r"}),
                 on=["source_r", "record_id_r"], how="left"))
    both = pl.concat([links, links.select(pl.col("source_r").alias("source_l"), pl.col("record_id_r").alias("record_id_l"),
                                          pl.col("source_l").alias("source_r"), pl.col("record_id_l").alias("record_id_r"),
                                          "match_probability")])
    lab = lab.join(both, on=["source_l", "record_id_l", "source_r", "record_id_r"], how="left")
    usable = lab.filter(pl.col("e_l").is_not_null() & pl.col("e_r").is_not_null()).with_columns(
        (pl.col("clerical_match_score") >= 0.5).alias("label"), (pl.col("e_l") == pl.col("e_r")).alias("same_entity"))
    tp = int(usable.filter(pl.col("label") & pl.col("same_entity")).height)
    fp = int(usable.filter(~pl.col("label") & pl.col("same_entity")).height)
    fn = int(usable.filter(pl.col("label") & ~pl.col("same_entity")).height)
    tn = int(usable.filter(~pl.col("label") & ~pl.col("same_entity")).height)
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / (tp + fn) if tp + fn else 1.0
    metrics = {"labelled_pairs": labels.height, "pairs_in_store": usable.height,
               "pairs_missing_records": labels.height - usable.height, "true_positives": tp,
               "false_positives": fp, "false_negatives": fn, "true_negatives": tn, "precision": prec,
               "recall": rec, "f1": _f1(prec, rec), "accuracy": (tp + tn) / usable.height if usable.height else 1.0}
    disagreements = (usable.filter(pl.col("label") != pl.col("same_entity"))
                     .select("source_l", "record_id_l", "source_r", "record_id_r", "clerical_match_score",
                             "same_entity", "match_probability")
                     .sort("source_l", "record_id_l", "source_r", "record_id_r").head(max_errors))
    return LabelEvaluation(metrics=metrics, disagreements=disagreements, notes=notes)


__all__ += ["evaluate_labels", "LabelEvaluation"]
