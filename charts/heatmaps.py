"""Heatmaps: the head summary (layer x head), an attention matrix (query x key) and a method-agreement matrix.

Every row is at least ``MIN_STEP`` pixels tall and every axis label is drawn.
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from analysis.attention_views import modality_blocks
from charts.style import MIN_STEP, axis, finish, modality_color

CELL_PARAM = "cell"  # click selection of the head summary; fields "layer" (int) and "head" (str)
HEAD_ROW = 24  # px per layer row: a cell to click, not only to read
MATRIX_ROW = MIN_STEP + 1  # px per query row of an attention matrix (a pixel above the minimum, for rounding)
MATRIX_WIDTH = 680  # px the key columns share (the page's main column is ~820 px at 1280 px) before the minimum
MATRIX_MIN_COL, MATRIX_MAX_COL = 9, 18  # px per key column (labels are turned upright, 8 px font)
STRIP = (-11, -3)  # px of the modality strips outside the plot (above for keys, left of it for queries)


def head_summary(rows: pd.DataFrame | list[dict], *, value_title: str, title: str = "", zscored: bool = False,
                 mean_column: str = "mean", select: str | None = CELL_PARAM) -> alt.Chart:
    """A layers x heads map of one statistic.

    rows: long form, one per (layer, head) as ``analysis.attention_views.head_summary_rows`` gives:
    layer (int), head (str "0".."H-1", or ``mean_column`` for the per-layer mean, drawn last),
    value (float or None). Layer 0 at the bottom; ``HEAD_ROW`` px per layer. zscored: a diverging
    scale centred on 0. select: name of a click selection on fields layer and head (None: none).
    """
    df = pd.DataFrame(rows)
    layers = sorted(df["layer"].unique())
    heads = sorted((h for h in df["head"].unique() if h != mean_column), key=int) + [mean_column]
    scale = (alt.Scale(scheme="redblue", domainMid=0.0, reverse=True) if zscored else alt.Scale(scheme="viridis"))
    chart = alt.Chart(df).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("head:O", sort=heads, axis=axis(f"head (last column: {mean_column} over heads)")),
        y=alt.Y("layer:O", sort="descending", axis=axis("layer")),
        color=alt.Color("value:Q", title=value_title, scale=scale),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("head:N"), alt.Tooltip("value:Q", title=value_title, format=".3f")],
    ).properties(width="container", height=HEAD_ROW * len(layers), name="head_cells")
    chart = finish(chart, fit_width=True)
    chart = chart.properties(title=title) if title else chart
    if select is not None:
        param = alt.selection_point(name=select, fields=["layer", "head"], on="click", clear="dblclick")
        chart = chart.add_params(param).encode(opacity=alt.condition(param, alt.value(1.0), alt.value(0.55)))
    return chart


def matrix_size(n_queries: int, n_keys: int) -> tuple[int, int]:
    """(column width, row height) in px of an attention matrix's cells."""
    col = int(np.clip(MATRIX_WIDTH // max(n_keys, 1), MATRIX_MIN_COL, MATRIX_MAX_COL))
    return col, MATRIX_ROW


def attention_matrix(data: pd.DataFrame, *, title: str = "", value_title: str = "attention") -> alt.LayerChart:
    """A query x key attention heatmap with a modality strip along each axis and a rule between blocks.

    data: long form as ``analysis.attention_views.matrix_rows`` gives, one row per (query, key) cell:
    query_pos, key_pos (positions), query, key (unique axis labels), query_modality, key_modality, weight.
    Rows are ``MATRIX_ROW`` px tall; the strips share the matrix's own scales, so they sit on its columns.
    """
    q = data.drop_duplicates("query_pos").sort_values("query_pos")
    k = data.drop_duplicates("key_pos").sort_values("key_pos")
    qlabels, klabels = q["query"].tolist(), k["key"].tolist()
    col, row = matrix_size(len(qlabels), len(klabels))
    xs, ys = alt.Scale(domain=klabels), alt.Scale(domain=qlabels)
    heat = alt.Chart(data).mark_rect().encode(
        x=alt.X("key:O", scale=xs, axis=axis("key", angle=-90, font_size=8)),
        y=alt.Y("query:O", scale=ys, axis=axis("query", font_size=9, offset=-STRIP[0] + 1)),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis"), title=value_title,
                        legend=alt.Legend(orient="bottom")),  # below: the width goes to the key columns
        tooltip=["query:N", "key:N", alt.Tooltip("weight:Q", format=".4f")]).properties(name="matrix_cells")
    layers = [heat]
    for field, labels, mods, scale in (("key", klabels, k["key_modality"].tolist(), xs),
                                       ("query", qlabels, q["query_modality"].tolist(), ys)):
        starts = [labels[b.start] for b in modality_blocks(mods)[1:]]
        enc = alt.X if field == "key" else alt.Y
        if starts:  # a white rule where one modality's block gives way to the next
            layers.append(alt.Chart(pd.DataFrame({field: starts})).mark_rule(color="white", strokeWidth=1.5).encode(
                **{"x" if field == "key" else "y": enc(f"{field}:O", scale=scale, bandPosition=0)}))
        strip = pd.DataFrame({field: labels, "modality": mods})
        where = (dict(x=alt.X(f"{field}:O", scale=scale), y=alt.value(STRIP[0]), y2=alt.value(STRIP[1]))
                 if field == "key" else
                 dict(y=alt.Y(f"{field}:O", scale=scale), x=alt.value(STRIP[0]), x2=alt.value(STRIP[1])))
        # one modality legend for both strips (the query strip's colours are the key strip's)
        legend = "bottom" if field == "key" else None
        layers.append(alt.Chart(strip).mark_rect().encode(**where, color=modality_color(legend_orient=legend),
                                                          tooltip=[f"{field}:N", "modality:N"])
                      .properties(name=f"{field}_strip"))
    chart = alt.layer(*layers).resolve_scale(color="independent").properties(
        width=col * len(klabels), height=row * len(qlabels))
    chart = finish(chart)
    return chart.properties(title=alt.TitleParams(title, anchor="start", offset=-STRIP[0] + 4)) if title else chart


def agreement(methods: Sequence[str], matrix: np.ndarray, *, value_title: str = "Spearman") -> alt.LayerChart:
    """A methods x methods correlation matrix (values in -1..1) with each value written in its cell.

    matrix: (method, method).
    """
    m = list(methods)
    df = pd.DataFrame([{"a": a, "b": b, "rho": float(matrix[i, j])} for i, a in enumerate(m) for j, b in enumerate(m)])
    base = alt.Chart(df).encode(x=alt.X("a:N", sort=m, axis=axis(None)), y=alt.Y("b:N", sort=m, axis=axis(None)))
    chart = alt.layer(
        base.mark_rect().encode(color=alt.Color("rho:Q", title=value_title,
                                                scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True))),
        base.mark_text().encode(text=alt.Text("rho:Q", format=".2f")),
    ).properties(width=max(160, 60 * len(m)), height=max(MIN_STEP, 28) * len(m))
    return finish(chart)


def depth_heatmap(rows: pd.DataFrame | list[dict], *, value_title: str, title: str = "") -> alt.Chart:
    """Head x relative depth map of one statistic, so models of different depth line up.

    rows: one per (layer, head): layer, head (int), relative_depth, x0, x1 (the layer's span of
    relative depth in 0..1), value.
    """
    df = pd.DataFrame(rows)
    n_heads = df["head"].nunique()
    chart = alt.Chart(df).mark_rect().encode(
        x=alt.X("x0:Q", title="relative depth", scale=alt.Scale(domain=[0, 1])), x2="x1:Q",
        y=alt.Y("head:O", axis=axis("head")),
        color=alt.Color("value:Q", title=value_title, scale=alt.Scale(scheme="viridis")),
        tooltip=["layer", "head", alt.Tooltip("relative_depth:Q", format=".2f"), alt.Tooltip("value:Q", format=".3f")],
    ).properties(width="container", height=max(20, MIN_STEP) * n_heads)
    chart = finish(chart, fit_width=True)
    return chart.properties(title=title) if title else chart

