"""The one overlay renderer: scores of image regions drawn over the image (attention or attribution).

Every page that puts weights on a picture calls ``overlay``: Attention (a text token's attention,
the patch picker), Compare (a word's attention in each model) and Ask (attribution maps).
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from analysis.attention_views import overlay_heat
from charts.image import UNIT_X, UNIT_Y, drawn_size, image_layer
from charts.style import OUTLINE, colormap, finish, heat_scale

PATCH_PARAM = "patch"  # default name of the click selection on regions; its field is "token"


def overlay(image: np.ndarray, boxes: np.ndarray, weights: np.ndarray | None, *,
            tokens: Sequence[int] | None = None, labels: Sequence[str] | None = None, title: str = "",
            value_title: str = "attention", width: int = 320, opacity: float = 0.7, signed: bool = False,
            smooth: bool = False, select: str | None = None, highlight: int | None = None) -> alt.LayerChart:
    """Regions of ``image`` coloured by weight, drawn at the image's aspect ratio, with a legend.

    image: (y, x, 3) uint8. boxes: (R, 4) x0, y0, x1, y1 in 0..1 of the image. weights: (R,) floats,
    or None for outlines only (a picker). tokens: (R,) ids reported by a click (default 0..R-1);
    labels: (R,) tooltip names. Colour: dark to bright over 0..max(weight) (``signed``: a dark-middle
    diverging scale over -max|w|..max|w|), painted at ``opacity``, so low weights dim the picture and
    high ones glow whatever its colours. smooth: the regions' heat blurred into the picture (same
    scale; the regions stay as hover targets). select: name of a point selection on field
    ``token`` (click a region). highlight: a token id outlined in white.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    df = pd.DataFrame({"token": np.arange(n) if tokens is None else np.asarray(tokens, dtype=np.int64),
                       "x0": boxes[:, 0], "y0": boxes[:, 1], "x1": boxes[:, 2], "y1": boxes[:, 3]})
    df["label"] = [str(t) for t in df["token"]] if labels is None else [str(x) for x in labels]
    width, height = drawn_size(image.shape, width)
    pos = dict(x=alt.X("x0:Q", scale=UNIT_X, axis=None), x2="x1:Q", y=alt.Y("y0:Q", scale=UNIT_Y, axis=None), y2="y1:Q")
    if weights is None:
        base, rects = image_layer(image), alt.Chart(df).mark_rect(fillOpacity=0, **OUTLINE).encode(
            **pos, tooltip=["label:N"]).properties(name="regions")
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w) != n:
            raise ValueError(f"{len(w)} weights for {n} boxes")
        df["weight"] = w
        peak = float(np.abs(w).max()) if n else 0.0
        base = image_layer(_smoothed(image, df, peak, opacity, signed) if smooth else image)
        rects = _weighted_regions(df, pos, peak, opacity=opacity, signed=signed, smooth=smooth,
                                  value_title=value_title, width=width)
    if select is not None:
        rects = rects.add_params(alt.selection_point(name=select, fields=["token"], on="click"))
    layers = [base, rects]
    if highlight is not None and (df["token"] == highlight).any():
        layers.append(alt.Chart(df[df["token"] == highlight]).mark_rect(
            fillOpacity=0, stroke="white", strokeWidth=2.5).encode(**pos))
    chart = finish(alt.layer(*layers).properties(width=width, height=height, view=alt.ViewBackground(strokeWidth=0)))
    return chart.properties(title=alt.TitleParams(title, anchor="start", fontSize=12, limit=width)) if title else chart


def _weighted_regions(df: pd.DataFrame, pos: dict, peak: float, *, opacity: float, signed: bool, smooth: bool,
                      value_title: str, width: int) -> alt.Chart:
    """Regions filled by ``heat_scale`` at ``opacity`` (transparent when smoothed), legend below the picture."""
    legend = alt.Legend(orient="bottom", direction="horizontal", gradientLength=max(60, min(200, width - 40)),
                        title=f"{value_title} (smoothed)" if smooth else f"{value_title} (opacity {opacity:.0%})")
    return alt.Chart(df).mark_rect(fillOpacity=0.0 if smooth else float(opacity), **OUTLINE).encode(
        **pos, color=alt.Color("weight:Q", scale=heat_scale(peak, signed=signed), legend=legend, title=value_title),
        tooltip=["label:N", alt.Tooltip("weight:Q", title=value_title, format=".4f")]).properties(name="regions")


def _smoothed(image: np.ndarray, df: pd.DataFrame, peak: float, opacity: float, signed: bool) -> np.ndarray:
    """The image with the blurred heat of the regions painted in, colours as ``heat_scale``."""
    h, w = image.shape[:2]
    share = (df["weight"].to_numpy() / peak) if peak > 0 else np.zeros(len(df))
    boxes = {k: df[k].to_numpy() for k in ("x0", "y0", "x1", "y1")}
    if signed:  # blur the positive and negative parts apart so they do not cancel into black
        heat = (overlay_heat({**boxes, "share": np.clip(share, 0, None)}, h, w, smooth=True)
                - overlay_heat({**boxes, "share": np.clip(-share, 0, None)}, h, w, smooth=True))
    else:
        heat = overlay_heat({**boxes, "share": share}, h, w, smooth=True)
    tint = colormap(heat, signed=signed).astype(np.float32)
    out = np.asarray(image, np.float32)[..., :3] * (1 - opacity) + tint * opacity
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
