"""Horizontal bar charts as inline SVG, drawn on the server. Pure.

No script and no styles: presentation attributes only (the console's CSP allows no inline
style). Each chart is one ``role="img"`` with a title and a description that says what it
shows in words; the page puts the same figures in a table beside it for anyone who needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from markupsafe import Markup, escape

WIDTH: Final = 720
LABEL_WIDTH: Final = 250
BAR_WIDTH: Final = 330
ROW: Final = 34
BAR_HEIGHT: Final = 22
MAX_LABEL: Final = 30
BLUE: Final = "#005eb8"
TRACK: Final = "#e8edee"
TEXT: Final = "#212b32"


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float
    #: What is written after the bar (``97% (194 of 200)``).
    text: str


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def bar_chart(chart_id: str, title: str, description: str, bars: Sequence[Bar], maximum: float = 0) -> Markup:
    """The chart; bars scale to ``maximum`` (a percentage chart passes 100), else to the largest value."""
    top = max([maximum, *(b.value for b in bars)]) or 1
    height = max(1, len(bars)) * ROW + 8
    parts = [
        f'<svg class="app-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>',
    ]
    for row, bar in enumerate(bars):
        y = 4 + row * ROW
        length = round(BAR_WIDTH * max(0.0, bar.value) / top, 1)
        middle = y + BAR_HEIGHT / 2 + 5
        parts.append(
            f'<text x="{LABEL_WIDTH - 10}" y="{middle}" text-anchor="end" font-size="15" fill="{TEXT}" '
            f'font-family="Arial, sans-serif">{escape(_short(bar.label))}</text>'
        )
        if maximum:
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{y}" width="{BAR_WIDTH}" height="{BAR_HEIGHT}" fill="{TRACK}"/>'
            )
        parts.append(
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{length}" height="{BAR_HEIGHT}" fill="{BLUE}"/>'
        )
        parts.append(
            f'<text x="{LABEL_WIDTH + BAR_WIDTH + 10}" y="{middle}" font-size="15" fill="{TEXT}" '
            f'font-family="Arial, sans-serif">{escape(bar.text)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value above is escaped or a number
