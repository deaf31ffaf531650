"""Charts rendered to SVG by vl-convert (Vega's own layout), read back as marks: what a person would see."""
from __future__ import annotations

import html
import re

import altair as alt

RECT = re.compile(r'aria-roledescription="rect mark" d="M(-?[\d.]+),(-?[\d.]+)h(-?[\d.]+)v(-?[\d.]+)')
BAR = re.compile(r'aria-roledescription="bar" d="M(-?[\d.]+),(-?[\d.]+)h(-?[\d.]+)v(-?[\d.]+)')
IMAGE = re.compile(r'<image [^>]*width="([\d.]+)" height="([\d.]+)"')
AXIS_LABELS = re.compile(r'<g class="mark-text role-axis-label"[^>]*>(.*?)</g>')
TEXT = re.compile(r"<text [^>]*>(.*?)</text>")


def render(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


def rects(svg: str) -> list[tuple[float, float, float, float]]:
    """(x, y, width, height) of every rect mark (heatmap cells, overlay regions)."""
    return [tuple(float(v) for v in m) for m in RECT.findall(svg)]


def bars(svg: str) -> list[tuple[float, float, float, float]]:
    return [tuple(float(v) for v in m) for m in BAR.findall(svg)]


def images(svg: str) -> list[tuple[float, float]]:
    """(width, height) of every drawn image mark."""
    return [(float(w), float(h)) for w, h in IMAGE.findall(svg)]


def axis_labels(svg: str) -> list[list[str]]:
    """The labels each axis draws, one list per axis (labels Vega hid for overlap are absent)."""
    return [[html.unescape(t) for t in TEXT.findall(group)] for group in AXIS_LABELS.findall(svg)]


def legend_titles(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'role-legend-title"[^>]*><text [^>]*>(.*?)</text>', svg)]
