"""Golden records: one best value per attribute for every entity (survivorship), with the
source and record each value came from, as master-data hubs provide.

A survivorship rule picks, among the non-null cleaned values an entity's records hold for an
attribute, the one that survives:

* ``most_frequent``: the value most records agree on;
* ``longest``: the longest value (a full name over an initial);
* ``most_recent``: the value of the record seen in the latest run;
* ``first_non_null``: the first record, in the order of the project's sources;
* ``{"source_priority": [SOURCE, ...]}``: the first listed source that has a value.

Ties fall to the defaults after the rule: most frequent, then longest, then the order of the
project's sources, then the record id, so the result never depends on row order. The default
rule per kind: ``most_recent`` for what a person changes (``postcode``, ``address``,
``phone``, ``email``), ``most_frequent`` for every other kind. The project file's
``survivorship:`` key sets a rule per attribute (validated with the project file).

A steward can pin a value (:func:`idweave.linkage.decisions.pin`, a decision like the
others): a pin in force wins over every rule, and its ``<attr>_source`` is ``pinned`` and
``<attr>_record_id`` the decision (``#12``). Pins follow the entity through merges and
persist across runs with its id; undoing the pin lets the rule decide again.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> g = golden("fixtures/tiny/project.yaml")
>>> g.columns[:4]
['entity_id', 'first_name', 'first_name_source', 'first_name_record_id']
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.linkage.errors import IdweaveError
from idweave.linkage.project import SURVIVORSHIP_RULES, Project, resolve_project

__all__ = ["golden", "RULES", "default_rule", "pinned"]

ProjectLike = Project | str | Path | Mapping[str, Any]

#: The survivorship rules by name (``source_priority`` takes a list of sources).
RULES = SURVIVORSHIP_RULES
_CHANGING = {"postcode", "address", "phone", "email"}


def default_rule(kind: str) -> str:
    """The survivorship rule of an attribute kind when none is given.

    >>> default_rule("given_name"), default_rule("postcode")
    ('most_frequent', 'most_recent')
    """
    return "most_recent" if kind in _CHANGING else "most_frequent"


def _rule_key(rule: Any, attr: str, sources: list[str]):
    if isinstance(rule, Mapping) and set(rule) == {"source_priority"}:
        order = [str(s) for s in rule["source_priority"]]
        unknown = [s for s in order if s not in sources]
        if unknown:
            raise IdweaveError(f"survivorship.{attr}.source_priority: no source {', '.join(unknown)}; "
                               f"sources are {', '.join(sources)}")
        rank = {s: i for i, s in enumerate(order)}
        return lambda c: (rank.get(c["source"], len(rank)),)
    if rule == "most_frequent":
        return lambda c: (-c["count"],)
    if rule == "longest":
        return lambda c: (-len(c["value"]),)
    if rule == "most_recent":
        return lambda c: (-c["run"],)
    if rule == "first_non_null":
        return lambda c: (c["order"],)
    raise IdweaveError(f"survivorship.{attr}: unknown rule {rule!r}; expected one of {', '.join(RULES)}")


def pinned(st: Any) -> dict[tuple[str, str], tuple[int, str]]:
    """(active entity, attribute) -> (decision id, value) of the pins in force in the store
    ``st``: each pin's entity followed through merges, a later pin of the same attribute
    over an earlier one.

    >>> from idweave.linkage.decisions import open_store
    >>> _, st = open_store("fixtures/tiny/project.yaml", read_only=True)
    >>> with st:
    ...     isinstance(pinned(st), dict)
    True
    """
    from idweave.linkage.decisions import in_force

    out: dict[tuple[str, str], tuple[int, str]] = {}
    for d in in_force(st.decision_rows()):
        if d["action"] == "pin":
            p = d["payload"]
            e = st.resolve(str(p["entity"]))
            if e is not None:
                out[(e, str(p["attribute"]))] = (int(d["decision_id"]), str(p["value"]))
    return out


def golden(project: ProjectLike, out: str | Path | None = None, *,
           rules: Mapping[str, Any] | None = None, entity_id: str | None = None) -> pl.DataFrame:
    """One row per active entity: ``entity_id``, then for each attribute its surviving value,
    ``<attr>_source`` and ``<attr>_record_id`` (where it came from). ``rules`` maps
    attributes to survivorship rules (see the module docstring), over the project file's
    ``survivorship:`` and the default per kind; a pinned value wins over any rule. ``entity_id`` limits it to one entity (merges followed). Written to ``out``
    (``.csv``, formulas neutralised, or ``.parquet``) if given.

    >>> g = golden("fixtures/tiny/project.yaml", rules={"last_name": "longest"})
    >>> g.height == g["entity_id"].n_unique()
    True
    >>> golden("fixtures/tiny/project.yaml", rules={"last_name": "shortest"})
    Traceback (most recent call last):
    ...
    idweave.linkage.errors.IdweaveError: survivorship.last_name: unknown rule 'shortest'; expected one of most_frequent, longest, most_recent, first_non_null, source_priority
    """
    from idweave.linkage import review

    proj = resolve_project(project)
    rules = {**proj.survivorship, **dict(rules or {})}
    unknown = sorted(set(rules) - set(proj.attributes))
    if unknown:
        raise IdweaveError(f"survivorship: no attribute {', '.join(unknown)} in the project")
    sources = list(proj.sources)
    proj, st = review.open_store(proj, read_only=True)
    with st:
        stored_cols = set(st.columns("records"))
        attrs = [a for a in proj.attributes if a in stored_cols]
        eid = review.active_entity(st, entity_id) if entity_id is not None else None
        recs = st.entity_record_columns(attrs, eid)
        pins = pinned(st)
    src_rank = {s: i for i, s in enumerate(sources)}
    keys = {}
    for a in attrs:
        kind = proj.attributes[a].kind
        keys[a] = _rule_key(rules.get(a, default_rule(kind)), a, sources)
    by_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in recs.sort("source", "record_id").iter_rows(named=True):
        by_entity[row["entity_id"]].append(row)
    out_rows = []
    for e in sorted(by_entity):
        rows = sorted(by_entity[e], key=lambda r: (src_rank.get(r["source"], len(src_rank)), r["record_id"]))
        g: dict[str, Any] = {"entity_id": e}
        for a in attrs:
            counts = Counter(str(r[a]) for r in rows if r[a] is not None)
            cands = [{"value": str(r[a]), "source": r["source"], "record_id": r["record_id"],
                      "run": int(r["last_seen_run"] or 0), "order": i, "count": counts[str(r[a])]}
                     for i, r in enumerate(rows) if r[a] is not None]
            if (e, a) in pins:
                did, value = pins[(e, a)]
                g[a], g[f"{a}_source"], g[f"{a}_record_id"] = value, "pinned", f"#{did}"
            elif cands:
                best = min(cands, key=lambda c: (*keys[a](c), -c["count"], -len(c["value"]), c["order"]))
                g[a], g[f"{a}_source"], g[f"{a}_record_id"] = best["value"], best["source"], best["record_id"]
            else:
                g[a] = g[f"{a}_source"] = g[f"{a}_record_id"] = None
        out_rows.append(g)
    schema = {"entity_id": pl.Utf8, **{k: pl.Utf8 for a in attrs for k in (a, f"{a}_source", f"{a}_record_id")}}
    df = pl.DataFrame(out_rows, schema=schema)
    if out is not None:
        from idweave.linkage.csvsafe import write_csv

        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise IdweaveError("the golden records file must end in .csv or .parquet", file=str(out))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            write_csv(df, tmp) if suffix == ".csv" else df.write_parquet(tmp)
            tmp.replace(out)
        except OSError as exc:
            raise IdweaveError(f"cannot write the golden records: {exc.strerror}", file=str(out)) from None
    return df
