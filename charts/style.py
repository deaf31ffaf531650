"""Colours, scales and sizes every chart shares, so the same value looks the same on every page.

Sizes follow the row count: a cell or bar is ``STEP`` pixels tall (never under ``MIN_STEP``), and
axes never drop labels (``labelOverlap=False``): a person reading a 4-layer model sees 4 labelled rows.
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np

MODALITY_COLORS = {"text": "#d62728", "image": "#1f77b4", "special": "#7f7f7f"}  # VL-InterpreT: text red, image blue
MODALITY_SHAPES = {"text": "circle", "image": "square", "special": "triangle-up"}

MIN_STEP = 14  # px: the smallest row a person can read and click
STEP = 20  # px per heatmap row or bar (a bar is 85% of its row)
LABEL_LIMIT = 120  # px before an axis label is cut with an ellipsis

# Dark to bright (inferno's stops): low values dim the picture under them and high values glow,
# so the scale reads on any image, a red shape included. Interpolated in RGB by Vega and by numpy alike.
HEAT_STOPS = ("#000004", "#420a68", "#932667", "#dd513a", "#fca50a", "#fcffa4")
# Signed scores: bright cyan (against) -> near black (0) -> bright yellow (for), dark in the middle for the same reason.
SIGNED_STOPS = ("#7ff6ff", "#1b6f9b", "#101010", "#b4500c", "#ffe14d")
OUTLINE = {"stroke": "black", "strokeOpacity": 0.35, "strokeWidth": 0.5}

# Streamlit draws with canvas above 2000 data points unless told; SVG keeps every mark in the page's DOM,
# where the browser test measures it.
SVG = {"embedOptions": {"renderer": "svg"}}


# Streamlit's theme makes every chart "fit" its width x height, axes, title and legend included, which
# squeezes a 4-row heatmap into 96 px. A chart says how it grows instead: "pad" keeps width x height for
# the plot itself; "fit-x" (width "container") fills the column's width and pads only the height.
PAD = alt.AutoSizeParams(type="pad")
FIT_X = alt.AutoSizeParams(type="fit-x", contains="padding")


def finish(chart, *, fit_width: bool = False):
    """The chart drawn as SVG, sized by its own width and height (or the column's width when ``fit_width``)."""
    return chart.properties(usermeta=SVG, autosize=FIT_X if fit_width else PAD)


def tagged(chart, name: str):
    """The chart with ``usermeta.chart = name`` (tests find a chart on a page by it), still drawn as SVG."""
    return chart.properties(usermeta={**SVG, "chart": name})


def modality_color(field: str = "modality", title: str = "modality", legend_orient: str | None = "right") -> alt.Color:
    """Colour by modality (text red, image blue, special grey); ``legend_orient`` None: no legend."""
    return alt.Color(f"{field}:N", title=title, legend=alt.Legend(orient=legend_orient) if legend_orient else None,
                     scale=alt.Scale(domain=list(MODALITY_COLORS), range=list(MODALITY_COLORS.values())))


def modality_shape(field: str = "modality", title: str = "modality") -> alt.Shape:
    """Shape by modality; with the same field and title as ``modality_color`` Vega merges the two legends."""
    return alt.Shape(f"{field}:N", title=title,
                     scale=alt.Scale(domain=list(MODALITY_SHAPES), range=list(MODALITY_SHAPES.values())))


def heat_scale(peak: float, *, signed: bool = False) -> alt.Scale:
    """The overlay scale: 0..peak dark to bright, or -peak..peak with a dark middle when ``signed``."""
    peak = float(peak) if np.isfinite(peak) and peak > 0 else 1.0
    if signed:
        return alt.Scale(domain=[-peak, -peak / 2, 0.0, peak / 2, peak], range=list(SIGNED_STOPS), interpolate="rgb")
    return alt.Scale(domain=[0.0, peak], range=list(HEAT_STOPS), interpolate="rgb")


def colormap(values: np.ndarray, *, signed: bool = False) -> np.ndarray:
    """(...) values in 0..1 (or -1..1 when signed) -> (..., 3) uint8 colours of ``heat_scale``."""
    stops = np.array([_rgb(c) for c in (SIGNED_STOPS if signed else HEAT_STOPS)], np.float32)
    v = np.clip(np.asarray(values, np.float32), -1.0 if signed else 0.0, 1.0)
    pos = (v + 1) / 2 if signed else v
    at = np.linspace(0.0, 1.0, len(stops))
    out = np.stack([np.interp(pos, at, stops[:, c]) for c in range(3)], axis=-1)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def axis(title: str | None = None, *, angle: int = 0, font_size: int = 11, **kw) -> alt.Axis:
    """An axis that shows every label (no overlap culling), cut only past ``LABEL_LIMIT`` pixels."""
    return alt.Axis(title=title, labelOverlap=False, labelAngle=angle, labelLimit=LABEL_LIMIT,
                    labelFontSize=font_size, **kw)


def unique_labels(labels: Sequence[str]) -> list[str]:
    """Labels made unique by trailing zero-width spaces: repeated words ("the" twice) stay separate
    bars or rows of a nominal axis yet read the same, with no label expression to hide them."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        out.append(lab + "\u200b" * n)
    return out
