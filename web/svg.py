"""Charts drawn on the server as inline SVG: no JavaScript library, nothing fetched.

Every text that reaches the SVG goes through :func:`html.escape`; numbers are formatted
here. The functions only draw: what to draw comes from :mod:`idweave.linkage.views`.

>>> "<svg" in sparkline([0.2, 0.95, 0.99], threshold=0.9)
True
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

__all__ = ["probability_colour", "sparkline", "entity_graph", "waterfall", "weights_chart"]


def probability_colour(p: float) -> str:
    """A colour from red (0) through amber to green (1), as ``hsl(...)``.

    >>> probability_colour(1.0), probability_colour(0.0)
    ('hsl(120,65%,38%)', 'hsl(0,65%,38%)')
    """
    p = min(max(float(p), 0.0), 1.0)
    return f"hsl({round(120 * p)},65%,38%)"


def _t(x: Any) -> str:
    return escape(str(x), quote=True)


def sparkline(probabilities: Sequence[float], *, threshold: float | None = None, width: int = 120,
              height: int = 22) -> str:
    """The link probabilities of an item, lowest first, as one bar each (coloured by
    probability), with the threshold as a line.

    >>> s = sparkline([0.5, 0.99], threshold=0.9); s.count("<rect") == 2 and "<line" in s
    True
    >>> "no links" in sparkline([])
    True
    """
    ps = list(probabilities)
    label = f"{len(ps)} link probabilities" if ps else "no links"
    parts = [f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{_t(label)}"><title>{_t(label)}</title>']
    if ps:
        n = len(ps)
        bw = width / n
        for i, p in enumerate(ps):
            h = max(1.5, (height - 2) * min(max(p, 0.0), 1.0))
            parts.append(f'<rect x="{i * bw:.2f}" y="{height - 1 - h:.2f}" width="{max(bw - 1, 0.8):.2f}" '
                         f'height="{h:.2f}" fill="{probability_colour(p)}"/>')
        if threshold is not None:
            y = height - 1 - (height - 2) * threshold
            parts.append(f'<line x1="0" x2="{width}" y1="{y:.2f}" y2="{y:.2f}" stroke="#333" '
                         'stroke-dasharray="2,2" stroke-width="0.8"/>')
    parts.append("</svg>")
    return "".join(parts)


def entity_graph(labels: Sequence[str], links: Sequence[tuple[int, int, float]], *, threshold: float,
                 tree: set[tuple[int, int]] = frozenset(), weakest: tuple[int, int] | None = None,
                 selected: int | None = None, hrefs: Sequence[str] | None = None, size: int = 420) -> str:
    """Records on a circle and their links as lines coloured by probability: solid at or
    above the threshold, dotted below; the links of the strongest tree drawn thicker; the
    weakest link marked. ``links`` are (record index, record index, probability); ``hrefs``
    (one per link) make a link clickable.

    >>> s = entity_graph(["a", "b", "c"], [(0, 1, 0.99), (1, 2, 0.92)], threshold=0.9, weakest=(1, 2))
    >>> s.count('r="8"') == 3 and "weakest link" in s
    True
    """
    n = len(labels)
    width = size + 260
    cx, cy = width / 2, size / 2
    r = size / 2 - 50 if n > 1 else 0
    pos = [(cx + r * math.cos(2 * math.pi * i / max(n, 1) - math.pi / 2),
            cy + r * math.sin(2 * math.pi * i / max(n, 1) - math.pi / 2)) for i in range(n)]
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{size}" '
             f'viewBox="0 0 {width} {size}" role="img" aria-label="records and links">']
    wk = tuple(sorted(weakest)) if weakest else None
    for k, (a, b, p) in enumerate(links):
        (x1, y1), (x2, y2) = pos[a], pos[b]
        key = tuple(sorted((a, b)))
        strong = p >= threshold
        stroke = 4 if key in {tuple(sorted(t)) for t in tree} else 2
        dash = "" if strong else ' stroke-dasharray="4,4"'
        title = f"{labels[a]} - {labels[b]}: p={p:.4f}"
        line = (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{probability_colour(p)}" '
                f'stroke-width="{stroke}"{dash}><title>{_t(title)}</title></line>')
        if selected == k:
            line = (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#1f77b4" '
                    f'stroke-opacity="0.35" stroke-width="{stroke + 8}"/>') + line
        if hrefs:
            line = f'<a href="{_t(hrefs[k])}">{line}</a>'
        parts.append(line)
        if wk == key:
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            parts.append(f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="9" fill="white" stroke="#d62728" stroke-width="2"/>'
                         f'<text x="{mx:.1f}" y="{my + 4:.1f}" text-anchor="middle" font-size="11" fill="#d62728" '
                         f'font-weight="bold">!</text>'
                         f'<text x="{mx + 12:.1f}" y="{my - 10:.1f}" font-size="11" fill="#d62728">weakest link '
                         f'p={p:.4f}</text>')
    for i, (x, y) in enumerate(pos):
        anchor = "start" if x > cx + 1 else ("end" if x < cx - 1 else "middle")
        dx = 12 if anchor == "start" else (-12 if anchor == "end" else 0)
        dy = -14 if (anchor == "middle" and y < cy) else (22 if anchor == "middle" else 4)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="8" fill="#fff" stroke="#333" stroke-width="1.5"/>'
                     f'<text x="{x + dx:.1f}" y="{y + dy:.1f}" text-anchor="{anchor}" font-size="12">'
                     f'{_t(labels[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def waterfall(prior_weight: float, evidence: Sequence[tuple[str, str, float]], *, threshold_weight: float | None = None,
              width: int = 640) -> str:
    """The evidence of a link as a waterfall: the prior, then each comparison's weight (in
    bits) added in turn, ending at the match weight; the threshold's weight as a line.

    >>> s = waterfall(-8.0, [("first_name", "exact", 6.5), ("birth_date", "else", -3.0)], threshold_weight=3.2)
    >>> "first_name: exact" in s and "match weight" in s and "-4.50" in s
    True
    """
    rows = [("prior", prior_weight, 0.0, prior_weight)]
    cum = prior_weight
    for attr, level, w in evidence:
        rows.append((f"{attr}: {level}", w, cum, cum + w))
        cum += w
    rows.append(("match weight", cum, 0.0, cum))
    lo = min([0.0] + [min(a, b) for _, _, a, b in rows] + ([threshold_weight] if threshold_weight is not None else []))
    hi = max([0.0] + [max(a, b) for _, _, a, b in rows] + ([threshold_weight] if threshold_weight is not None else []))
    lo, hi = math.floor(lo) - 1, math.ceil(hi) + 1
    label_w, bar_h, gap, top = 210, 18, 6, 24
    plot_w = width - label_w - 70
    height = top + len(rows) * (bar_h + gap) + 24

    def x(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    parts = [f'<svg class="waterfall" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="evidence waterfall" font-size="12">',
             f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top - 6}" y2="{height - 18}" stroke="#999"/>',
             f'<text x="{x(0):.1f}" y="{top - 10}" text-anchor="middle" fill="#666">0</text>']
    if threshold_weight is not None:
        tx = x(threshold_weight)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top - 6}" y2="{height - 18}" stroke="#333" '
                     f'stroke-dasharray="4,3"/><text x="{tx:.1f}" y="{height - 4}" text-anchor="middle" '
                     f'fill="#333">threshold {threshold_weight:+.2f}</text>')
    for i, (label, w, a, b) in enumerate(rows):
        y = top + i * (bar_h + gap)
        total = i in (0, len(rows) - 1)
        colour = "#555" if total else ("#2ca02c" if w >= 0 else "#d62728")
        x0, x1 = sorted((x(a), x(b)))
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h - 5}" text-anchor="end">{_t(label)}</text>'
                     f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h}" fill="{colour}">'
                     f'<title>{_t(label)} {w:+.2f}</title></rect>'
                     f'<text x="{max(x(a), x(b)) + 4:.1f}" y="{y + bar_h - 5}" fill="#333">'
                     f'{w:+.2f}</text>')
        if not total and i + 1 < len(rows):
            parts.append(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="{y + bar_h}" y2="{y + bar_h + gap}" stroke="#aaa"/>')
    parts.append("</svg>")
    return "".join(parts)


def weights_chart(comparisons: Sequence[dict[str, Any]], *, width: int = 820) -> str:
    """Every comparison's levels as horizontal bars of match weight (bits), green above zero
    and red below, each labelled with its m and u.

    >>> s = weights_chart([{"name": "ssn", "levels": [{"label": "exact", "m": 0.9, "u": 0.001, "weight": 9.8},
    ...                                                {"label": "else", "m": 0.1, "u": 0.999, "weight": -3.3}]}])
    >>> "ssn" in s and s.count("<rect") == 2
    True
    """
    ws = [lv["weight"] for c in comparisons for lv in c["levels"] if lv["weight"] is not None]
    lo = math.floor(min([0.0] + ws)) - 1
    hi = math.ceil(max([0.0] + ws)) + 1
    label_w, bar_h, gap, head = 230, 16, 4, 22
    plot_w = width - label_w - 250
    n_rows = sum(len(c["levels"]) for c in comparisons)
    height = 20 + len(comparisons) * head + n_rows * (bar_h + gap) + 10

    def x(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    parts = [f'<svg class="weights" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="match weights per comparison level" font-size="12">',
             f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="10" y2="{height - 6}" stroke="#999"/>']
    y = 14
    for c in comparisons:
        parts.append(f'<text x="4" y="{y + 12}" font-weight="bold">{_t(c["name"])}</text>')
        y += head
        for lv in c["levels"]:
            w = lv["weight"]
            text = f'{lv["label"]}'
            parts.append(f'<text x="{label_w - 8}" y="{y + bar_h - 4}" text-anchor="end">{_t(text)}</text>')
            if w is not None:
                x0, x1 = sorted((x(0), x(w)))
                mu = f'm {lv["m"]:.3g}  u {lv["u"]:.3g}'
                parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h}" '
                             f'fill="{"#2ca02c" if w >= 0 else "#d62728"}"><title>{_t(text)}: {w:+.2f} bits, '
                             f'{_t(mu)}</title></rect>'
                             f'<text x="{width - 240}" y="{y + bar_h - 4}" fill="#333">{w:+.2f}   {_t(mu)}</text>')
            else:
                parts.append(f'<text x="{x(0) + 4:.1f}" y="{y + bar_h - 4}" fill="#999">not trained</text>')
            y += bar_h + gap
    parts.append("</svg>")
    return "".join(parts)
