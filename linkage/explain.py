"""Why two records are, or are not, one entity: each comparison's level and weight.

>>> from idweave.linkage import link
>>> r = link("fixtures/tiny/project.yaml")
>>> a, b = r.pairs.row(0)[:2], r.pairs.row(0)[2:4]
>>> ex = explain_pair("fixtures/tiny/project.yaml", a, b)
>>> round(ex.match_weight - ex.prior_weight - sum(c.weight for c in ex.comparisons), 6)
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.blocking.pairs import key_frame
from idweave.linkage import model as model_mod
from idweave.linkage import scoring
from idweave.linkage.comparisons import level_labels
from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.project import project_rules, resolve_project
from idweave.linkage.project import Project

__all__ = ["explain_pair", "PairExplanation", "ComparisonEvidence", "parse_record_ref"]


@dataclass
class ComparisonEvidence:
    """One comparison of a pair: the values compared, the level reached, its weight in bits."""

    attribute: str
    left: Any
    right: Any
    level: str
    weight: float


@dataclass
class PairExplanation:
    """Everything :func:`explain_pair` found about a pair."""

    left: tuple[str, str]
    right: tuple[str, str]
    comparisons: list[ComparisonEvidence]
    prior_weight: float
    match_weight: float
    match_probability: float
    blocking_rules: list[str]
    candidate_in_last_run: bool
    same_entity: bool
    entity_left: str | None
    entity_right: str | None
    threshold: float | None
    notes: list[str] = field(default_factory=list)


def parse_record_ref(text: str) -> tuple[str, str]:
    """``SOURCE:ID`` -> (source, id).

    >>> parse_record_ref("tax:T0001")
    ('tax', 'T0001')
    """
    if ":" not in text:
        raise IdweaveError(f"record reference {text!r} must be SOURCE:ID")
    s, r = text.split(":", 1)
    return s, r


def explain_pair(project: Project | str | Path | Mapping[str, Any], left: tuple[str, str],
                 right: tuple[str, str]) -> PairExplanation:
    """Score one pair with the stored model and say which blocking rules would find it."""
    proj = resolve_project(project)
    with Store.open(proj.store, read_only=True) as st:
        st.require(records=True)
        recs = []
        for s, r in (left, right):
            row = st.record_row(s, r)
            if row.height == 0:
                raise IdweaveError(f"no record {s}:{r} in the store", row=r)
            recs.append(row)
        settings, tf, _ = scoring.stored_model(st.require(model=True))
        link_row = st.link_between(left, right)
        threshold = st.last_threshold()
    both = pl.concat(recs, how="vertical_relaxed").with_row_index("rid").with_columns(pl.col("rid").cast(pl.Int64))
    trained = model_mod.TrainedModel(settings, tf)
    scored = scoring.score_pairs(both, pl.DataFrame({"rid_l": [0], "rid_r": [1], "rule": [-1]},
                                                      schema={"rid_l": pl.Int64, "rid_r": pl.Int64,
                                                              "rule": pl.Int32}), trained)
    row = scored.row(0, named=True)
    comps = []
    labels = level_labels(settings)
    for c in settings["comparisons"]:
        name = c["output_column_name"]
        label = labels[name][row[f"level_{name}"]]
        comps.append(ComparisonEvidence(name, both[name][0], both[name][1], label, float(row[f"w_{name}"] or 0.0)))
    prior = trained.prior
    rules = [rule.name for rule in project_rules(proj) if _rule_agrees(rule, both, 0, 1) or _rule_agrees(rule, both, 1, 0)]
    e_l, e_r = recs[0]["entity_id"][0], recs[1]["entity_id"][0]
    notes = []
    if link_row.height == 0 and rules:
        notes.append("the keys agree but the pair was not scored in the last run: its block was too large "
                     "(a very common value) or an exclusive source forbids it")
    return PairExplanation(
        left=left, right=right, comparisons=comps, prior_weight=math.log2(prior / (1 - prior)),
        match_weight=float(row["match_weight"]), match_probability=float(row["match_probability"]),
        blocking_rules=rules, candidate_in_last_run=link_row.height > 0, same_entity=e_l == e_r,
        entity_left=e_l, entity_right=e_r, threshold=threshold,
        notes=notes)


def _rule_agrees(rule, both: pl.DataFrame, a: int, b: int) -> bool:
    """Would ``rule`` put record ``a`` (left) and ``b`` (right) side by side?"""
    left = key_frame(both, rule, "l").filter(pl.col("rid") == a)["key"].to_list()
    right = key_frame(both, rule, "r").filter(pl.col("rid") == b)["key"].to_list()
    return bool(set(left) & set(right))


# --------------------------------------------------------------------------------------
# the entity form: why these records are one entity
# --------------------------------------------------------------------------------------
def _evidence(row: Mapping[str, Any], labels: dict[str, dict[int, str]]) -> dict[str, Any]:
    """A stored link row -> left, right, probability, weight and (attribute, level, weight) evidence."""
    ev = []
    for k in row:
        if k.startswith("level_"):
            attr = k[len("level_"):]
            g = row[k]
            lab = "null" if g is None else labels.get(attr, {}).get(int(g), str(g))
            ev.append((attr, lab, float(row.get(f"w_{attr}") or 0.0)))
    return {"left": (row["source_l"], row["record_id_l"]), "right": (row["source_r"], row["record_id_r"]),
            "match_probability": float(row["match_probability"]),
            "match_weight": float(row["match_weight"]) if row.get("match_weight") is not None else None,
            "evidence": ev}


def link_evidence(row: Mapping[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A stored link row (of the ``links`` table) -> ``left``, ``right``,
    ``match_probability``, ``match_weight`` and ``evidence``: (attribute, level label,
    weight in bits) per comparison, labelled with the model ``settings``. The public form of
    what :func:`explain_entity` shows for each link.

    >>> s = {"comparisons": [{"output_column_name": "ssn", "comparison_levels": [
    ...     {"is_null_level": True}, {"label_for_charts": "exact"}, {"label_for_charts": "else"}]}]}
    >>> row = {"source_l": "a", "record_id_l": "1", "source_r": "b", "record_id_r": "2",
    ...        "match_probability": 0.99, "match_weight": 6.6, "level_ssn": 1, "w_ssn": 9.7}
    >>> link_evidence(row, s)["evidence"]
    [('ssn', 'exact', 9.7)]
    """
    return _evidence(row, level_labels(settings))


@dataclass
class EntityLink:
    """One link of an entity's spanning tree: ``parent`` reaches ``child`` through it.

    ``decision`` is the id of the human decision that pins the pair when the link is a
    decision rather than a score (then ``match_probability`` is 1 and ``evidence`` empty).
    """

    parent: tuple[str, str]
    child: tuple[str, str]
    depth: int
    match_probability: float
    match_weight: float | None
    evidence: list[tuple[str, str, float]]
    decision: int | None = None


@dataclass
class EntityExplanation:
    """What :func:`explain_entity` found: the strongest tree of links that joins the records.

    ``tree`` lists every record but the root once, as the child of the link that reaches
    it (breadth first from ``root``); among all trees that join the records it is the one
    whose weakest link is strongest, so ``weakest`` is the link the entity hangs by.
    ``unjoined`` are records no stored link or decision reaches (none in a consistent store).
    """

    entity_id: str
    asked: str
    records: list[tuple[str, str]]
    root: tuple[str, str] | None
    tree: list[EntityLink]
    weakest: EntityLink | None
    threshold: float | None
    unjoined: list[tuple[str, str]] = field(default_factory=list)

    def path(self, a: tuple[str, str], b: tuple[str, str]) -> list[EntityLink]:
        """The links of the tree between records ``a`` and ``b``, in order from ``a``."""
        up = {ln.child: ln for ln in self.tree}

        def to_root(x: tuple[str, str]) -> list[EntityLink]:
            out = []
            while x in up:
                out.append(up[x])
                x = up[x].parent
            return out

        pa, pb = to_root(a), to_root(b)
        common = {ln.child for ln in pa} & {ln.child for ln in pb}
        pa = [ln for ln in pa if ln.child not in common]
        pb = [ln for ln in pb if ln.child not in common]
        return pa + list(reversed(pb))


def explain_entity(project: Project | str | Path | Mapping[str, Any], entity_id: str) -> EntityExplanation:
    """Why an entity's records are one entity: the tree of links (and human decisions) that
    joins them, strongest first, and the weakest link it hangs by.

    A merged-away id is followed to the entity it was merged into.

    >>> from idweave.linkage import link
    >>> r = link("fixtures/tiny/project.yaml")
    >>> eid = r.entities.group_by("entity_id").len().sort("len", "entity_id", descending=True)["entity_id"][0]
    >>> ex = explain_entity("fixtures/tiny/project.yaml", eid)
    >>> len(ex.tree) == len(ex.records) - 1 - len(ex.unjoined)
    True
    """
    from idweave.linkage.decisions import decision_rows as _decision_rows, replay as _replay

    proj = resolve_project(project)
    with Store.open(proj.store, read_only=True) as st:
        st.require(records=True)
        eid = st.resolve(str(entity_id))
        if eid is None:
            raise IdweaveError(f"no entity {entity_id} in the store")
        recs = st.members(eid)
        thr = st.last_threshold()
        stored = st.latest_model()
        # (their order does not matter: the tree's edges are sorted below)
        links = st.links_among(recs) if recs else pl.DataFrame()
        rows = _decision_rows(st)
    labels = level_labels(stored[0]) if stored else {}
    mine = set(recs)
    # Candidate edges: decision pins first (certain), then stored links at or above the threshold.
    edges: list[tuple[float, tuple[str, str], tuple[str, str], dict[str, Any] | None, int | None]] = []
    cons = _replay(rows)
    for g, members in cons.groups.items():
        present = sorted(m for m in members if m in mine)
        for m in present[1:]:
            edges.append((2.0, present[0], m, None, cons.group_decisions[g][-1]))
    for row in links.iter_rows(named=True) if links.height else []:
        if thr is None or row["match_probability"] >= thr:
            ev = _evidence(row, labels)
            edges.append((ev["match_probability"], ev["left"], ev["right"], ev, None))
    parent = {r: r for r in recs}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    adj: dict[tuple[str, str], list] = {r: [] for r in recs}
    for e in sorted(edges, key=lambda e: (-e[0], e[1], e[2])):
        a, b = find(e[1]), find(e[2])
        if a != b:
            parent[a] = b
            adj[e[1]].append((e[2], e))
            adj[e[2]].append((e[1], e))
    root = recs[0] if recs else None
    tree: list[EntityLink] = []
    seen = set()
    if root is not None:
        # Root: the record with the most tree links, so paths are short.
        root = min(recs, key=lambda r: (-len(adj[r]), r))
        seen.add(root)
        frontier = [(root, 0)]
        while frontier:
            nxt = []
            for node, depth in frontier:
                for other, e in sorted(adj[node], key=lambda x: x[0]):
                    if other in seen:
                        continue
                    seen.add(other)
                    p, _a, _b, ev, did = e
                    tree.append(EntityLink(parent=node, child=other, depth=depth + 1,
                                           match_probability=1.0 if did is not None else p,
                                           match_weight=None if ev is None else ev["match_weight"],
                                           evidence=[] if ev is None else ev["evidence"], decision=did))
                    nxt.append((other, depth + 1))
            frontier = nxt
    scored = [ln for ln in tree if ln.decision is None]
    weakest = min(scored, key=lambda ln: (ln.match_probability, ln.child)) if scored else None
    return EntityExplanation(entity_id=eid, asked=str(entity_id), records=recs, root=root, tree=tree,
                             weakest=weakest, threshold=thr, unjoined=[r for r in recs if r not in seen])


__all__ += ["explain_entity", "EntityExplanation", "EntityLink", "link_evidence"]
