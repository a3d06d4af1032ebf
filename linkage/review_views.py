"""Read-only presentations of review state: an entity side by side (:func:`show`, with
:func:`diff_spans` marking what differs) and the decisions as labelled pairs
(:func:`export_labels`). Nothing here writes to the store.

>>> from idweave.linkage import link
>>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
>>> show("fixtures/tiny/project.yaml", eid).entity_id == eid
True
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rapidfuzz.distance import Levenshtein

from idweave.linkage.csvsafe import write_csv
from idweave.linkage.decisions import ProjectLike, Rec, in_force, open_store, records_from_json, run_info
from idweave.linkage.errors import IdweaveError
from idweave.linkage.explain import link_evidence

__all__ = ["show", "EntityView", "diff_spans", "export_labels"]


def diff_spans(reference: str | None, value: str | None) -> list[tuple[int, int]]:
    """Character spans of ``value`` that differ from ``reference`` (rapidfuzz opcodes).

    >>> diff_spans("jonathan", "jonathon")
    [(6, 7)]
    >>> diff_spans("smith", "smith")
    []
    >>> diff_spans(None, "x")
    [(0, 1)]
    """
    if value is None:
        return []
    value = str(value)
    if reference is None:
        return [(0, len(value))] if value else []
    spans = []
    for op in Levenshtein.opcodes(str(reference), value):
        if op.tag in ("replace", "insert") and op.dest_end > op.dest_start:
            spans.append((op.dest_start, op.dest_end))
    return spans



# --------------------------------------------------------------------------------------
# the side-by-side view
# --------------------------------------------------------------------------------------
@dataclass
class EntityView:
    """An entity's records side by side, what differs, and the evidence of its links.

    ``records``: source, record_id and the attributes any of them has. ``reference``: per
    attribute the commonest value, which ``diffs`` compares against: (record index,
    attribute) -> spans of differing characters. ``links``: the scored pairs among its
    records with probability, weight and per-attribute ``level``/``weight``.
    ``nearby``: the best links to records of other entities.
    """

    entity_id: str
    asked: str
    status: str
    records: pl.DataFrame
    attributes: list[str]
    reference: dict[str, str | None]
    diffs: dict[tuple[int, str], list[tuple[int, int]]]
    links: list[dict[str, Any]]
    nearby: pl.DataFrame
    threshold: float
    decisions: list[int]


def show(project: ProjectLike, entity_id: str, *, nearby: int = 5) -> EntityView:
    """An entity's records side by side with differing characters marked, and its links.

    >>> from idweave.linkage import link
    >>> eid = link("fixtures/tiny/project.yaml").entities["entity_id"][0]
    >>> v = show("fixtures/tiny/project.yaml", eid)
    >>> v.records.height >= 1 and set(v.records.columns) >= {"source", "record_id"}
    True
    """
    proj, st = open_store(project, read_only=True)
    with st:
        eid = st.resolve(str(entity_id))
        if eid is None:
            raise IdweaveError(f"no entity {entity_id} in the store")
        status = st.entity_status(eid)
        thr, _, _ = run_info(st, proj)
        recs = st.entity_records(eid)
        mem = [(s, r) for s, r in recs.select("source", "record_id").iter_rows()]
        lk = st.links_among(mem).sort("match_probability", descending=True) if mem else pl.DataFrame()
        stored = st.latest_model()
        near = pl.DataFrame()
        if mem:
            near = st.links_leaving(mem, eid, int(nearby))
        rows = st.decision_rows()
    attrs = [a for a in proj.attributes if a in recs.columns and recs[a].null_count() < recs.height]
    reference: dict[str, str | None] = {}
    diffs: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for a in attrs:
        vals = [v for v in recs[a].to_list()]
        counts = Counter(v for v in vals if v is not None)
        ref = min(counts, key=lambda v: (-counts[v], vals.index(v))) if counts else None
        reference[a] = ref
        for i, v in enumerate(vals):
            spans = diff_spans(ref, v)
            if spans:
                diffs[(i, a)] = spans
    settings = stored[0] if stored else {}
    link_rows = [link_evidence(r, settings) for r in lk.iter_rows(named=True)] if lk.height else []
    mine = set(mem)
    involved = [d["decision_id"] for d in rows
                if any((s, r) in mine for key in ("records_a", "records_b", "records", "rest", "left", "right")
                       for s, r in d["payload"].get(key, []))]
    return EntityView(entity_id=eid, asked=str(entity_id), status=status or "unknown",
                      records=recs.select("source", "record_id", *attrs), attributes=attrs, reference=reference,
                      diffs=diffs, links=link_rows, nearby=near, threshold=thr, decisions=involved)


# --------------------------------------------------------------------------------------
# feedback: decisions as labelled pairs
# --------------------------------------------------------------------------------------
def export_labels(project: ProjectLike, out: str | Path | None = None) -> pl.DataFrame:
    """Decisions in force as labelled record pairs in Splink's clerical format
    (``unique_id_l, source_dataset_l, unique_id_r, source_dataset_r, clerical_match_score``).

    A merge labels 1 every pair of the records it joined, a confirm every pair of its
    entity, a split 1 inside the part and 0 across, a keep-apart 0 across; a later decision
    overrides an earlier label of the same pair. Written to ``out`` (.csv) if given.

    >>> export_labels("fixtures/tiny/project.yaml").columns
    ['unique_id_l', 'source_dataset_l', 'unique_id_r', 'source_dataset_r', 'clerical_match_score']
    """
    proj, st = open_store(project, read_only=True)
    with st:
        rows = st.decision_rows()
    label: dict[tuple[Rec, Rec], float] = {}

    def same(recs: list[Rec], score: float) -> None:
        recs = sorted(set(recs))
        for i, a in enumerate(recs):
            for b in recs[i + 1:]:
                label[(a, b)] = score

    def across(left: list[Rec], right: list[Rec], score: float) -> None:
        for a in set(left):
            for b in set(right):
                if a != b:
                    label[tuple(sorted([a, b]))] = score  # type: ignore[index]

    for d in in_force(rows):
        p = d["payload"]
        if d["action"] == "merge":
            same(records_from_json(p["records_a"]) + records_from_json(p["records_b"]), 1.0)
        elif d["action"] == "confirm":
            same(records_from_json(p["records"]), 1.0)
        elif d["action"] == "split":
            same(records_from_json(p["records"]), 1.0)
            across(records_from_json(p["records"]), records_from_json(p["rest"]), 0.0)
        elif d["action"] == "keep_apart":
            across(records_from_json(p["left"]), records_from_json(p["right"]), 0.0)
    keys = sorted(label)
    df = pl.DataFrame({"unique_id_l": [k[0][1] for k in keys], "source_dataset_l": [k[0][0] for k in keys],
                       "unique_id_r": [k[1][1] for k in keys], "source_dataset_r": [k[1][0] for k in keys],
                       "clerical_match_score": [label[k] for k in keys]},
                      schema={"unique_id_l": pl.Utf8, "source_dataset_l": pl.Utf8, "unique_id_r": pl.Utf8,
                              "source_dataset_r": pl.Utf8, "clerical_match_score": pl.Float64})
    if out is not None:
        out = Path(out)
        if out.suffix.lower() != ".csv":
            raise IdweaveError("the labels file must end in .csv", file=str(out))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            write_csv(df, tmp)  # formulas neutralised, as every CSV
            tmp.replace(out)
        except OSError as exc:
            raise IdweaveError(f"cannot write the labels: {exc.strerror}", file=str(out)) from None
    return df
