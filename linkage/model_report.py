"""The model, readable: what decides whether two records are one person, published.

:func:`model_report` reads the model of the store's latest run through the public
:class:`~idweave.linkage.model.TrainedModel` API (``weights_table()``, ``comparisons()``,
``prior``) and the store (``models``, ``runs``, ``links``) and gives:

* every comparison's levels, most similar first, with m (how often matches reach the level),
  u (how often non-matches do), the match weight log2(m/u) in bits, whether the weight is
  adjusted by term frequency, and how many stored links fell in the level (from the links
  table's ``level_<attribute>`` columns);
* the prior (the share of random pairs that match) as a probability and in bits;
* the training log of the run that made the model, in plain words;
* where the model came from: the run that trained it, when, on how many records of which
  sources, with which Splink.

:func:`render_html` draws the match weights as a horizontal bar chart (the chart Splink users
know from ``match_weights_chart``), inline SVG in one self-contained, escaped HTML page.

>>> from idweave.linkage import link
>>> _ = link("fixtures/tiny/project.yaml")
>>> rep = model_report("fixtures/tiny/project.yaml")
>>> rep.comparisons[0]["levels"][0]["level"], rep.prior < 0.5
('exact', True)
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from idweave.linkage.graph import Store
from idweave.linkage.project import Project

__all__ = ["model_report", "ModelReport", "render_html"]

ProjectLike = Project | str | Path | Mapping[str, Any]


@dataclass
class ModelReport:
    """What :func:`model_report` found; :meth:`to_dict` is the ``--json`` form."""

    version: str
    prior: float
    prior_weight: float
    threshold: float | None
    comparisons: list[dict[str, Any]]
    training_log: list[str]
    origin: dict[str, Any]
    links: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def model_report(project: ProjectLike) -> ModelReport:
    """The stored model of the latest run, level by level, with where it came from (see the
    module docstring). Writes nothing."""
    from idweave.linkage.comparisons import level_labels
    from idweave.linkage.model import TrainedModel
    from idweave.linkage.project import resolve_project

    proj = resolve_project(project)
    Store.require_file(proj.store)
    with Store.open(proj.store, read_only=True) as st:
        settings, tf, version = st.require(model=True).latest_model()
        info = st.last_run_info() or {}
        model_row = st.model_rows(version).to_dicts()
        created = model_row[0]["created_run"] if model_row else None
        run = st.run_rows(["run_id", "started_at", "finished_at", "mode", "n_records", "project_hash", "summary"],
                          created).to_dicts() if created is not None else []
        # The log of the first run with this model that trained it (a retrain can give the
        # same version again, bit for bit; runs that reused it logged only that).
        later = [json.loads(x or "{}").get("training_log") or [] for x in st.run_summaries(version)]
        trained_log = next((lg for lg in later if lg and lg != ["reused the stored model"]), [])
        link_cols = set(st.columns("links"))
        counts: dict[str, dict[int, int]] = {}
        n_links = 0
        if link_cols:
            n_links = st.link_count()
            for c in settings.get("comparisons", []):
                col = f"level_{c['output_column_name']}"
                if col in link_cols:
                    counts[c["output_column_name"]] = st.link_level_counts(col)
    trained = TrainedModel(settings, tf)
    weights = trained.weights_table()
    comps = []
    numbers = level_labels(settings)
    for c in trained.comparisons():
        name = c["output_column_name"]
        levels_spec = [lv for lv in c["comparison_levels"] if not lv.get("is_null_level")]
        rows = weights.filter(weights["comparison"] == name).to_dicts()
        by = counts.get(name, {})
        levels = []
        # The level numbers of the non-null levels, most similar first (as the weights' rows).
        gammas = sorted((g for g in numbers[name] if g >= 0), reverse=True)
        for spec, row, gamma in zip(levels_spec, rows, gammas):
            levels.append({"level": row["level"], "m": row["m"], "u": row["u"], "weight": row["weight"],
                           "term_frequency": bool(spec.get("tf_adjustment_column")), "links": by.get(gamma, 0)})
        comps.append({"comparison": name, "levels": levels, "null_links": by.get(-1, 0)})
    summary: dict[str, Any] = {}
    if run:
        try:
            summary = json.loads(run[0].get("summary") or "{}")
        except (TypeError, ValueError):
            summary = {}
    log = list(trained_log)
    notes = []
    if not log:
        notes.append("the run that made this model kept no training log (stores written before it was kept)")
    origin = {"run": created, "trained_at": model_row[0]["created_at"] if model_row else None,
              "mode": run[0]["mode"] if run else None, "records": run[0]["n_records"] if run else None,
              "records_per_source": (summary.get("report") or {}).get("rows"),
              "project_hash": run[0]["project_hash"] if run else None,
              "splink_version": model_row[0]["splink_version"] if model_row else None,
              "model_file": str(proj.model_file)}
    prior = trained.prior
    return ModelReport(version=version, prior=prior, prior_weight=math.log2(prior / (1 - prior)),
                       threshold=info.get("threshold"), comparisons=comps, training_log=log, origin=origin,
                       links=n_links, notes=notes)


def in_words(rep: ModelReport) -> list[str]:
    """The model in plain words, one line per fact.

    >>> rep = ModelReport("v", 0.001, math.log2(0.001 / 0.999), 0.9, [{"comparison": "ssn", "null_links": 0,
    ...     "levels": [{"level": "exact", "m": 0.9, "u": 0.001, "weight": 9.81, "term_frequency": False, "links": 3}]}],
    ...     [], {"run": 1}, 3)
    >>> in_words(rep)[1]
    'ssn exact: 9.8 bits for (90% of matches, 0.1% of non-matches reach it); 3 stored link(s)'
    """
    one_in = 1 / rep.prior if rep.prior else float("inf")
    out = [f"prior: about 1 in {one_in:,.0f} pairs of records is the same person before any comparison "
           f"(probability {rep.prior:.3g}, {rep.prior_weight:+.1f} bits); a pair's match weight is the prior "
           "plus the weights of the levels it reaches"]
    for c in rep.comparisons:
        for lv in c["levels"]:
            if lv["weight"] is None:
                out.append(f"{c['comparison']} {lv['level']}: no weight (untrained); {lv['links']} stored link(s)")
                continue
            side = "for" if lv["weight"] >= 0 else "against"
            tf = ", adjusted by how common the value is" if lv["term_frequency"] else ""
            out.append(f"{c['comparison']} {lv['level']}: {abs(lv['weight']):.1f} bits {side}{tf} "
                       f"({100 * (lv['m'] or 0):.3g}% of matches, {100 * (lv['u'] or 0):.3g}% of non-matches "
                       f"reach it); {lv['links']} stored link(s)")
    return out


def _h(value: Any) -> str:
    from idweave.linkage.subject import printable

    return html.escape(printable(value), quote=True)


def weights_svg(rep: ModelReport) -> str:
    """The match weights as horizontal bars, one row per level grouped by comparison (green
    for, red against), with the prior on top: inline SVG, every label escaped."""
    rows: list[tuple[str, str, float | None]] = [("prior", "", rep.prior_weight)]
    for c in rep.comparisons:
        rows += [(c["comparison"], lv["level"], lv["weight"]) for lv in c["levels"]]
    known = [abs(w) for _, _, w in rows if w is not None] or [1.0]
    top = max(known)
    row_h, label_w, bar_w, pad = 20, 330, 420, 16
    width, height = label_w + bar_w + 2 * pad + 60, pad * 2 + row_h * (len(rows) + 1)
    mid = label_w + pad + bar_w / 2
    scale = (bar_w / 2) / top
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             'aria-label="match weights" font-family="sans-serif" font-size="12">',
             f'<line x1="{mid}" y1="{pad}" x2="{mid}" y2="{height - pad}" stroke="#444"/>']
    prev = None
    for i, (comp, level, w) in enumerate(rows):
        y = pad + row_h * i
        label = comp if comp != prev else ""
        prev = comp
        parts.append(f'<text x="{pad}" y="{y + 14}" font-weight="bold">{_h(label)}</text>')
        parts.append(f'<text x="{label_w - 4 + pad}" y="{y + 14}" text-anchor="end">{_h(level)}</text>')
        if w is None:
            parts.append(f'<text x="{mid + 4}" y="{y + 14}" fill="#888">untrained</text>')
            continue
        x = mid if w >= 0 else mid + w * scale
        colour = "#2e7d32" if w >= 0 else "#c62828"
        if comp == "prior":
            colour = "#555"
        parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{max(abs(w) * scale, 1):.1f}" height="{row_h - 6}" '
                     f'fill="{colour}"><title>{_h(comp)} {_h(level)}: {w:+.2f} bits</title></rect>')
        tx = mid + w * scale + (4 if w >= 0 else -4)
        parts.append(f'<text x="{tx:.1f}" y="{y + 14}" text-anchor="{"start" if w >= 0 else "end"}">{w:+.1f}</text>')
    parts.append(f'<text x="{mid}" y="{height - 2}" text-anchor="middle">match weight (bits)</text></svg>')
    return "".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .5em;"
        "text-align:left}th{background:#f3f3f3}td.n{text-align:right}")


def _num(v: float | None) -> str:
    return "" if v is None else format(v, ".4g")


def render_html(rep: ModelReport) -> str:
    """The report as one self-contained HTML page (inline style and SVG, no script, no
    external asset, every value escaped)."""
    o = rep.origin
    out = ["<!doctype html><html><head><meta charset=\"utf-8\">",
           f"<title>idweave model {_h(rep.version)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Model {_h(rep.version)}</h1>",
           f"<p>Trained in run {_h(o.get('run'))} ({_h(o.get('mode'))}) at {_h(o.get('trained_at'))} on "
           f"{_h(o.get('records'))} records ({_h(', '.join(f'{k}: {v}' for k, v in (o.get('records_per_source') or {}).items()))}); "
           f"Splink {_h(o.get('splink_version'))}; model file {_h(o.get('model_file'))}. "
           f"Threshold of the last run: {_h(rep.threshold)}. Stored links: {_h(rep.links)}.</p>",
           "<h2>Match weights</h2>", weights_svg(rep), "<h2>Levels</h2>",
           "<table><thead><tr><th>comparison</th><th>level</th><th>m</th><th>u</th><th>weight (bits)</th>"
           "<th>term frequency</th><th>stored links</th></tr></thead><tbody>"]
    for c in rep.comparisons:
        for lv in c["levels"]:
            w = "" if lv["weight"] is None else f"{lv['weight']:+.2f}"
            out.append(f"<tr><td>{_h(c['comparison'])}</td><td>{_h(lv['level'])}</td>"
                       f"<td class=\"n\">{_h(_num(lv['m']))}</td><td class=\"n\">{_h(_num(lv['u']))}</td>"
                       f"<td class=\"n\">{_h(w)}</td><td>{'yes' if lv['term_frequency'] else ''}</td>"
                       f"<td class=\"n\">{lv['links']}</td></tr>")
        out.append(f"<tr><td>{_h(c['comparison'])}</td><td>null (missing)</td><td></td><td></td>"
                   f"<td class=\"n\">0</td><td></td><td class=\"n\">{c['null_links']}</td></tr>")
    out.append("</tbody></table><h2>In words</h2><ul>")
    out += [f"<li>{_h(line)}</li>" for line in in_words(rep)]
    out.append("</ul><h2>Training log</h2><ul>")
    out += [f"<li>{_h(line)}</li>" for line in rep.training_log] or ["<li>none kept</li>"]
    out.append("</ul>")
    out += [f"<p>{_h(n)}</p>" for n in rep.notes]
    out.append("</body></html>")
    return "".join(out)
