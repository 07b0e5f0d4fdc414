"""A small figure of where a score's interval sits on the 1-5 scale among the training faces' scores.

An inline SVG (no plotting library, a few hundred bytes): the training faces' score histogram
(from :class:`mdnet.percentiles.ScoreReference`) in grey, the interval as a shaded band over it, the
score as a line. Embedded in the page's Markdown as an ``<img>`` with a data URI, so that the page's
HTML sanitiser keeps it.
"""

from __future__ import annotations

import base64

import numpy as np

from mdnet.percentiles import ScoreReference

WIDTH, HEIGHT, BINS = 320, 64, 32
_PAD, _AXIS = 8, 14  # side padding; height of the tick labels under the bars


def interval_svg(score: float, low: float, high: float, reference: ScoreReference | None,
                 score_range: tuple[float, float] = (1.0, 5.0)) -> str:
    """The figure as SVG text. Without a reference, the band and the score on a bare scale."""
    lo_s, hi_s = score_range
    span = hi_s - lo_s

    def x(v: float) -> float:
        return _PAD + (min(max(v, lo_s), hi_s) - lo_s) / span * (WIDTH - 2 * _PAD)

    top, base = 4, HEIGHT - _AXIS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="10">']
    if reference is not None:
        edges = np.linspace(lo_s, hi_s, BINS + 1)
        shares = reference.shares(edges)
        tallest = shares.max() if shares.max() > 0 else 1.0
        bar = (WIDTH - 2 * _PAD) / BINS
        for i, share in enumerate(shares):
            h = share / tallest * (base - top - 2)
            if h > 0:
                parts.append(f'<rect x="{x(edges[i]) + 0.5:.1f}" y="{base - h:.1f}" width="{bar - 1:.1f}" '
                             f'height="{h:.1f}" fill="#9ca3af"/>')
    parts.append(f'<rect id="band" x="{x(low):.1f}" y="{top}" width="{max(x(high) - x(low), 1.0):.1f}" '
                 f'height="{base - top}" fill="#f59e0b" fill-opacity="0.35" stroke="#d97706"/>')
    parts.append(f'<line x1="{_PAD}" y1="{base}" x2="{WIDTH - _PAD}" y2="{base}" stroke="#6b7280"/>')
    for tick in np.arange(np.ceil(lo_s), np.floor(hi_s) + 1):
        parts.append(f'<text x="{x(tick):.1f}" y="{HEIGHT - 2}" text-anchor="middle" fill="#6b7280">{tick:g}</text>')
    parts.append(f'<line x1="{x(score):.1f}" y1="{top}" x2="{x(score):.1f}" y2="{base}" stroke="#b45309" '
                 'stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def interval_img(score: float, low: float, high: float, reference: ScoreReference | None,
                 score_range: tuple[float, float] = (1.0, 5.0), alt: str = "") -> str:
    """:func:`interval_svg` as an HTML ``<img>`` with a data URI (for Markdown)."""
    data = base64.b64encode(interval_svg(score, low, high, reference, score_range).encode()).decode()
    return f'<img src="data:image/svg+xml;base64,{data}" alt="{alt}" width="{WIDTH}" height="{HEIGHT}">'
