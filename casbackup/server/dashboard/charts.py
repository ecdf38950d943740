"""Small charts drawn on the server as inline SVG (no script, no library to ship).

An application page shows two: the bytes its snapshots added to the repository, summed over
time (growth), and each backup's duration. The SVG scales to its container (``viewBox`` with
``width=100%``) so it fits a phone as well as a desktop window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from html import escape

from markupsafe import Markup

# viewBox units: narrow enough that 12-unit text stays legible when a phone scales the chart
# down to ~340 px, wide enough for a desktop's half-width column
W, H = 400, 160
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 12, 26  # margins for the axis labels


def _y_ticks(top: float) -> list[float]:
    return [top * i / 4 for i in range(5)]


def chart(
    points: list[tuple[dt.datetime, float]],
    *,
    title: str,
    label: Callable[[float], str],
    bars: bool = False,
    testid: str = "chart",
) -> Markup:
    """An SVG of ``points`` (time, value), oldest first: a line (or bars) with four y grid
    lines labelled by ``label`` and the first and last dates under the x axis. Bars (one per
    backup) are evenly spaced in time order; the line follows the time axis."""
    head = (
        f'<svg class="chart" data-testid="{escape(testid)}" viewBox="0 0 {W} {H}" width="100%" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )
    if not points:
        return Markup(head + f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" '
                      'class="muted">no backups yet</text></svg>')  # fmt: skip
    t0 = points[0][0].timestamp()
    t1 = points[-1][0].timestamp()
    span = max(t1 - t0, 1.0)
    top = max(v for _, v in points) or 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    width = max(min(pw / max(len(points), 1) * 0.6, 24), 2) if bars else 0.0
    inset = width / 2  # a bar at either end stays inside the plot, off the axis labels

    def x(t: dt.datetime) -> float:
        if len(points) == 1:
            return LEFT + pw / 2
        return LEFT + inset + (t.timestamp() - t0) / span * (pw - 2 * inset)

    def y(v: float) -> float:
        return TOP + ph - v / top * ph

    parts = [head]
    for tick in _y_ticks(top):
        yy = y(tick)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
        )
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                     f"{escape(label(tick))}</text>")  # fmt: skip
    if bars:
        # one bar per backup, evenly spaced: two runs a minute apart among nightly ones would
        # sit on top of each other on a time axis
        step = (pw - 2 * inset) / (len(points) - 1) if len(points) > 1 else 0.0
        for i, (t, v) in enumerate(points):
            xx = LEFT + inset + i * step if len(points) > 1 else x(t)
            parts.append(f'<rect class="bar" x="{xx - width / 2:.1f}" y="{y(v):.1f}" '
                         f'width="{width:.1f}" height="{TOP + ph - y(v):.1f}">'
                         f"<title>{t:%Y-%m-%d %H:%M}: {escape(label(v))}</title></rect>")  # fmt: skip
    else:
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline class="line" fill="none" points="{path}"/>')
        for t, v in points:
            parts.append(f'<circle class="dot" cx="{x(t):.1f}" cy="{y(v):.1f}" r="3">'
                         f"<title>{t:%Y-%m-%d %H:%M}: {escape(label(v))}</title></circle>")  # fmt: skip
    first, last = points[0][0], points[-1][0]
    parts.append(f'<text class="axis" x="{LEFT}" y="{H - 8}">{first:%Y-%m-%d}</text>')
    if last.date() != first.date():
        parts.append(f'<text class="axis" x="{W - RIGHT}" y="{H - 8}" text-anchor="end">'
                     f"{last:%Y-%m-%d}</text>")  # fmt: skip
    parts.append("</svg>")
    return Markup("".join(parts))
