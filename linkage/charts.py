"""Charts a person would rather look at than read: self-contained HTML with inline SVG
(no JavaScript, no network, no extra dependency).

>>> import polars as pl
>>> html = sweep_chart_html(pl.DataFrame({"threshold": [0.5, 0.9], "pairwise_precision": [0.8, 0.95],
...     "pairwise_recall": [0.9, 0.85], "pairwise_f1": [0.85, 0.9], "bcubed_f1": [0.88, 0.91]}))
>>> html.startswith("<!doctype html>") and "<svg" in html
True
"""

from __future__ import annotations

import html as _html

import polars as pl

__all__ = ["sweep_chart_html"]

_SERIES = (("pairwise_precision", "pairwise precision", "#1f77b4"),
           ("pairwise_recall", "pairwise recall", "#ff7f0e"),
           ("pairwise_f1", "pairwise F1", "#2ca02c"),
           ("bcubed_f1", "B-cubed F1", "#9467bd"))


def sweep_chart_html(sweep: pl.DataFrame, *, title: str = "threshold sweep", current: float | None = None) -> str:
    """A line chart of precision, recall and F1 against the threshold (one point per row);
    ``current`` marks the threshold the last run used."""
    w, h, pad, legend = 860, 420, 60, 180
    xs = list(range(sweep.height))
    lo = min(min(sweep[c]) for c, _, _ in _SERIES if c in sweep.columns)
    lo = max(0.0, min(lo, 1.0) - 0.02)

    def px(i: int) -> float:
        return pad + (w - 2 * pad - legend) * (i / max(len(xs) - 1, 1))

    def py(v: float) -> float:
        return h - pad - (h - 2 * pad) * ((v - lo) / max(1.0 - lo, 1e-9))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad - legend}" y2="{h - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>']
    for k in range(6):
        v = lo + (1 - lo) * k / 5
        parts.append(f'<line x1="{pad}" y1="{py(v):.1f}" x2="{w - pad - legend}" y2="{py(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{pad - 8}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    for i, t in enumerate(sweep["threshold"].to_list()):
        parts.append(f'<text x="{px(i):.1f}" y="{h - pad + 18}" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{(w - legend) / 2}" y="{h - 15}" text-anchor="middle">match probability threshold</text>')
    thresholds = sweep["threshold"].to_list()
    if current is not None and current in thresholds:
        x = px(thresholds.index(current))
        parts.append(f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{h - pad}" stroke="#999" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x + 4:.1f}" y="{pad - 6}" fill="#666">last run</text>')
    for j, (col, label, colour) in enumerate(_SERIES):
        if col not in sweep.columns:
            continue
        pts = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(sweep[col].to_list()))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in enumerate(sweep[col].to_list()):
            parts.append(f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"><title>{label} at '
                         f'{sweep["threshold"][i]}: {v:.4f}</title></circle>')
        parts.append(f'<rect x="{w - legend}" y="{pad + 18 * j - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{w - legend + 18}" y="{pad + 18 * j}">{label}</text>')
    parts.append("</svg>")
    rows = "".join("<tr>" + "".join(f"<td>{_html.escape(f'{v:.4f}' if isinstance(v, float) else str(v))}</td>"
                                    for v in r) + "</tr>" for r in sweep.iter_rows())
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in sweep.columns)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style></head>"
            f"<body><h2>{_html.escape(title)}</h2>{''.join(parts)}<table><tr>{head}</tr>{rows}</table></body></html>")
