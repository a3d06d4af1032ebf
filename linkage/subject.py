"""Subject access: everything idweave holds about one person, and why.

:func:`subject_access` starts from one record (``(source, record_id)``) or from a record
given as attributes (found with :func:`~idweave.linkage.lookup.lookup`, exactly as a
service would find it) and gathers, for the entity that record belongs to:

* every record of the entity, across sources, with each cleaned attribute as stored;
* the stored links among those records, with their evidence in plain words (each
  comparison's level and weight, as ``idweave explain`` shows it);
* every human decision that named one of the records or one of the entity's ids (who,
  when, why, whether it is still in force);
* every event of the entity's history (:func:`~idweave.linkage.history.history`) and every
  event that named one of its records;
* the runs and model versions that made those events.

The report renders for a terminal (the CLI), as one self-contained HTML page
(:func:`render_html`, every value escaped, no external asset) and as JSON
(:meth:`SubjectReport.to_dict`). It reads the store only.

>>> from idweave.linkage import link
>>> r = link("fixtures/tiny/project.yaml")
>>> first = r.entities.row(0)
>>> rep = subject_access("fixtures/tiny/project.yaml", record=(first[0], first[1]))
>>> rep.entity_id == first[2], (first[0], first[1]) in [(x["source"], x["record_id"]) for x in rep.records]
(True, True)
"""

from __future__ import annotations

import html
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from idweave.linkage.errors import IdweaveError
from idweave.linkage.graph import Store
from idweave.linkage.project import Project

__all__ = ["subject_access", "SubjectReport", "render_html", "printable", "REVIEW_MARGIN_BITS"]

ProjectLike = Project | str | Path | Mapping[str, Any]

#: The review band: match weights within this many bits below the threshold's are doubtful
#: (the review queue's default ``margin_bits``); lookup candidates above its floor are listed.
REVIEW_MARGIN_BITS = 3.0

_INTERNAL = {"source", "record_id", "content_hash", "raw_hash", "rk", "entity_id", "first_seen_run", "last_seen_run"}


@dataclass
class SubjectReport:
    """What :func:`subject_access` found; :meth:`to_dict` is the ``--json`` form."""

    asked: str
    entity_id: str | None
    status: str | None
    threshold: float | None
    records: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[str] = field(default_factory=list)
    match: dict[str, Any] | None = None        # with a record given as attributes: the chosen entity
    candidates: list[dict[str, Any]] = field(default_factory=list)  # other entities above the review band
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _prob(w: float) -> float:
    return 1.0 / (1.0 + 2.0 ** (-w))


def _weight(p: float) -> float:
    p = min(max(p, 1e-300), 1 - 1e-16)
    return math.log2(p / (1 - p))


def review_floor(threshold: float, margin_bits: float = REVIEW_MARGIN_BITS) -> float:
    """The lowest match probability of the review band below ``threshold``.

    >>> round(review_floor(0.9), 4)
    0.5294
    """
    return _prob(_weight(threshold) - margin_bits)


def evidence_words(evidence: list[tuple[str, str, float]]) -> str:
    """Per-comparison evidence in plain words, strongest first; comparisons with a value
    missing on one side give no evidence and are named last.

    >>> evidence_words([("ssn", "exact", 9.7), ("first_name", "null", 0.0), ("postcode", "else", -4.2)])
    'ssn exact: 9.7 bits for; postcode else: 4.2 bits against; missing on one side: first_name'
    """
    parts, missing = [], []
    for attr, level, w in sorted(evidence, key=lambda e: (-abs(e[2]), e[0])):
        if level == "null":
            missing.append(attr)
        else:
            parts.append(f"{attr} {level}: {abs(w):.1f} bits {'for' if w >= 0 else 'against'}")
    if missing:
        parts.append("missing on one side: " + ", ".join(sorted(missing)))
    return "; ".join(parts)


def _decision_touches(payload: dict[str, Any], recs: set[tuple[str, str]], ids: set[str]) -> bool:
    for key in ("records_a", "records_b", "records", "rest", "left", "right", "moved"):
        for item in payload.get(key) or []:
            if isinstance(item, (list, tuple)) and len(item) >= 2 and (item[0], item[1]) in recs:
                return True
    named = [payload.get(k) for k in ("a", "b", "entity")] + list(payload.get("entities") or [])
    return any(e in ids for e in named if e)


def subject_access(project: ProjectLike, *, record: tuple[str, str] | str | None = None,
                   record_json: Mapping[str, Any] | str | None = None, source: str | None = None,
                   date_format: str | None = None) -> SubjectReport:
    """Everything the store holds about the person of one record, and why (see the module
    docstring). Give ``record`` (``(source, record_id)`` or ``"source:id"``) or
    ``record_json`` (attribute -> value, a dict or its JSON text): the person is then found
    by lookup, and the report states the match probability that chose the entity and the
    other candidates above the review band. Writes nothing.

    >>> from idweave.linkage import link
    >>> _ = link("fixtures/tiny/project.yaml")
    >>> import polars as pl
    >>> row = pl.read_csv("fixtures/tiny/census.csv", infer_schema=False).row(0, named=True)
    >>> rep = subject_access("fixtures/tiny/project.yaml", record_json={"first_name": row["fname"],
    ...     "last_name": row["surname"], "birth_date": row["dob"]}, date_format="%m/%d/%Y")
    >>> rep.match["match_probability"] >= rep.threshold, len(rep.records) >= 1
    (True, True)
    """
    from idweave.linkage.explain import link_evidence, parse_record_ref
    from idweave.linkage.history import history
    from idweave.linkage.project import resolve_project

    if (record is None) == (record_json is None):
        raise IdweaveError("give either a record (SOURCE:ID) or --record JSON, not both or neither")
    proj = resolve_project(project)
    Store.require_file(proj.store)
    match = None
    candidates: list[dict[str, Any]] = []
    notes: list[str] = []
    with Store.open(proj.store, read_only=True) as st:
        info = st.require(records=True).last_run_info() or {}
        thr = float(info["threshold"]) if info.get("threshold") is not None else proj.threshold
    if record is not None:
        s, r = parse_record_ref(record) if isinstance(record, str) else (str(record[0]), str(record[1]))
        asked = f"{s}:{r}"
        with Store.open(proj.store, read_only=True) as st:
            got = st.entity_of(s, r)
            erased = st.is_erased(s, r)
        if got is None:
            if erased:
                raise IdweaveError(f"record {asked} was erased (idweave forget): the store holds nothing of it")
            raise IdweaveError(f"no record {asked} in the store", row=r)
        eid = got
    else:
        from idweave.linkage.lookup import lookup

        if isinstance(record_json, str):
            try:
                record_json = json.loads(record_json)
            except json.JSONDecodeError as exc:
                raise IdweaveError(f"--record is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(record_json, Mapping):
            raise IdweaveError("--record must be one JSON object of attribute -> value")
        asked = "a record given as attributes"
        hits = lookup(proj, dict(record_json), top=10, source=source, date_format=date_format)
        floor = review_floor(thr) if thr is not None else 0.5
        hits = hits.filter(pl.col("match_probability") >= floor) if hits.height else hits
        if hits.height == 0:
            return SubjectReport(asked=asked, entity_id=None, status=None, threshold=thr,
                                 notes=[f"no entity matches this record at or above the review band "
                                        f"(match probability {floor:.4f}): the store holds no record of this person "
                                        "that the model can find"])
        best = hits.row(0, named=True)
        eid = best["entity_id"]
        match = {"entity_id": eid, "match_probability": best["match_probability"],
                 "match_weight": best["match_weight"], "is_match": best["is_match"],
                 "best_record": f"{best['source']}:{best['record_id']}", "rule": best["rule"]}
        if not best["is_match"]:
            notes.append(f"the best entity scores {best['match_probability']:.4f}, below the threshold {thr}: "
                         "it is in the review band, so this may not be the same person")
        for h in hits.iter_rows(named=True):
            if h["rank"] > 1:
                candidates.append({"entity_id": h["entity_id"], "match_probability": h["match_probability"],
                                   "match_weight": h["match_weight"], "is_match": h["is_match"],
                                   "best_record": f"{h['source']}:{h['record_id']}"})
    events = history(proj, eid)
    with Store.open(proj.store, read_only=True) as st:
        res_status = st.entity_status(eid)
        lineage = st.lineage(eid)
        recs = st.entity_records(eid)
        attrs = [a for a in proj.attributes if a in recs.columns]
        keys = {(s, r) for s, r in recs.select("source", "record_id").iter_rows()}
        records = [{"source": row["source"], "record_id": row["record_id"],
                    "attributes": {a: row[a] for a in attrs},
                    "first_seen_run": row.get("first_seen_run"), "last_seen_run": row.get("last_seen_run")}
                   for row in recs.iter_rows(named=True)]
        stored = st.latest_model()
        settings = stored[0] if stored else {"comparisons": []}
        links = []
        if recs.height:
            lk = st.links_among(recs.select("source", "record_id").iter_rows()).sort(
                "match_probability", "source_l", "record_id_l", "source_r", "record_id_r",
                descending=[True, False, False, False, False])
            rec_events = st.events_of_records(recs)
            for row in lk.iter_rows(named=True):
                ev = link_evidence(row, settings)
                links.append({"left": f"{ev['left'][0]}:{ev['left'][1]}", "right": f"{ev['right'][0]}:{ev['right'][1]}",
                              "match_probability": ev["match_probability"], "match_weight": ev["match_weight"],
                              "joins": thr is not None and ev["match_probability"] >= thr,
                              "rule": row.get("rule"),
                              "evidence": [{"attribute": a, "level": lv, "weight": w} for a, lv, w in ev["evidence"]],
                              "in_words": evidence_words(ev["evidence"])})
            if rec_events.height:
                seen = set(events["event_id"].to_list())
                extra = rec_events.filter(~pl.col("event_id").is_in(list(seen))).select(events.columns)
                events = pl.concat([events, extra.cast(events.schema)]).sort("event_id")
        decisions = []
        if st.has_table("decisions"):
            ids = set(lineage)
            for d in st.decision_rows():
                p = d["payload"]
                if _decision_touches(p, keys, ids) or any(e["decision_id"] == d["decision_id"]
                                                          for e in events.iter_rows(named=True)):
                    decisions.append({"decision_id": d["decision_id"], "decided_at": d["decided_at"],
                                      "author": d["author"], "action": d["action"], "reason": d["reason"],
                                      "in_force": d["action"] != "undo" and d["undone_by"] is None,
                                      "undone_by": d["undone_by"]})
        run_ids = {int(x) for x in events["run_id"].drop_nulls().to_list()}
        for rec in records:
            run_ids |= {int(x) for x in (rec["first_seen_run"], rec["last_seen_run"]) if x is not None}
        runs = []
        if run_ids:
            got = st.run_rows(["run_id", "started_at", "finished_at", "mode", "model_version", "threshold",
                               "clustering"])
            runs = [r for r in got.iter_rows(named=True) if r["run_id"] in run_ids]
        versions = sorted({r["model_version"] for r in runs if r["model_version"]})
        models = []
        if versions:
            got = st.model_rows()
            models = [m for m in got.iter_rows(named=True) if m["version"] in versions]
    if lineage and lineage[0] != eid:
        notes.append(f"entity {eid} was merged into {lineage[0]}")
    return SubjectReport(asked=asked, entity_id=eid, status=res_status, threshold=thr,
                         records=records, links=links, decisions=decisions,
                         events=events.to_dicts(), runs=runs, models=models, lineage=lineage, match=match,
                         candidates=candidates, notes=notes)


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
def printable(value: Any) -> str:
    """A data value as text safe to show: control and format characters (escape sequences,
    carriage returns, bidirectional overrides) written as ``\\uXXXX``; ``None`` as ``-``.

    Rich markup in the result is harmless only when it is printed as a ``Text`` (the CLI
    does), never as markup.

    >>> printable("ann\\x1b[31m\\u202e")
    'ann\\\\u001b[31m\\\\u202e'
    >>> printable(None)
    '-'
    """
    if value is None:
        return "-"
    text = str(value)
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
                   for ch in text)


def _h(value: Any) -> str:
    return html.escape(printable(value), quote=True)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}.note{color:#8a4b00}")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: SubjectReport) -> str:
    """The report as one self-contained HTML page: inline style, no script, no external
    asset, every value HTML-escaped.

    >>> rep = SubjectReport(asked="a:<b>", entity_id="E1", status="active", threshold=0.9,
    ...                     records=[{"source": "a", "record_id": "<b>", "attributes": {"first_name": "<script>"},
    ...                               "first_seen_run": 1, "last_seen_run": 1}])
    >>> page = render_html(rep)
    >>> "<script>" in page, "&lt;script&gt;" in page
    (False, True)
    """
    out = ["<!doctype html><html><head><meta charset=\"utf-8\">",
           f"<title>Subject access: {_h(report.asked)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Subject access report</h1><p>Asked for: {_h(report.asked)}</p>"]
    if report.entity_id is None:
        out += [f"<p class=\"note\">{_h(n)}</p>" for n in report.notes]
        out.append("</body></html>")
        return "".join(out)
    out.append(f"<p>Entity {_h(report.entity_id)} ({_h(report.status)}); threshold {_h(report.threshold)}; "
               f"ids that stand for it: {_h(', '.join(report.lineage))}</p>")
    if report.match:
        m = report.match
        out.append(f"<p>Found by lookup: best record {_h(m['best_record'])}, match probability "
                   f"{_h(format(m['match_probability'], '.4f'))}.</p>")
    out += [f"<p class=\"note\">{_h(n)}</p>" for n in report.notes]
    if report.candidates:
        out.append("<h2>Other candidates above the review band</h2>")
        out.append(_table(["entity", "match probability", "best record"],
                          [[c["entity_id"], f"{c['match_probability']:.4f}", c["best_record"]]
                           for c in report.candidates]))
    attrs = sorted({a for r in report.records for a in r["attributes"]},
                   key=lambda a: list(report.records[0]["attributes"]).index(a)
                   if report.records and a in report.records[0]["attributes"] else 99)
    out.append(f"<h2>Records held ({len(report.records)})</h2>")
    out.append(_table(["source", "record id", *attrs, "first seen run", "last seen run"],
                      [[r["source"], r["record_id"], *[r["attributes"].get(a) for a in attrs],
                        r["first_seen_run"], r["last_seen_run"]] for r in report.records]))
    out.append(f"<h2>Links between them ({len(report.links)})</h2>")
    out.append(_table(["left", "right", "match probability", "joins at threshold", "evidence"],
                      [[lk["left"], lk["right"], f"{lk['match_probability']:.4f}", "yes" if lk["joins"] else "no",
                        lk["in_words"]] for lk in report.links]))
    out.append(f"<h2>Decisions ({len(report.decisions)})</h2>")
    out.append(_table(["#", "when", "who", "action", "why", "in force"],
                      [[d["decision_id"], d["decided_at"], d["author"], d["action"], d["reason"],
                        "yes" if d["in_force"] else "no"] for d in report.decisions]))
    out.append(f"<h2>History ({len(report.events)} events)</h2>")
    out.append(_table(["event", "run", "decision", "when", "what", "entity", "other", "record", "detail"],
                      [[e["event_id"], e["run_id"], e["decision_id"], e["happened_at"], e["type"], e["entity_id"],
                        e["other_entity_id"], f"{e['source']}:{e['record_id']}" if e["source"] else None,
                        e["detail"]] for e in report.events]))
    out.append("<h2>Runs and models</h2>")
    out.append(_table(["run", "started", "mode", "model version", "threshold"],
                      [[r["run_id"], r["started_at"], r["mode"], r["model_version"], r["threshold"]]
                       for r in report.runs]))
    out.append(_table(["model version", "created in run", "created at", "splink"],
                      [[m["version"], m["created_run"], m["created_at"], m["splink_version"]] for m in report.models]))
    out.append("</body></html>")
    return "".join(out)
