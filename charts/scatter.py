"""Hidden-state projections: tokens as points in 2-D, coloured and shaped by modality, one legend for both."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

from charts.style import finish, modality_color, modality_shape

TOKEN_PARAM = "tok"  # click selection of a point; its field is "token_index"


def projection(data: pd.DataFrame, *, x_title: str, y_title: str, title: str = "",
               x_domain: Sequence[float] | None = None, y_domain: Sequence[float] | None = None,
               selected: int | None = None, select: str | None = TOKEN_PARAM, height: int = 460,
               width: int | str = "container") -> alt.LayerChart:
    """A scatter of tokens in 2-D.

    data: one row per token with x, y (floats), token (display string), modality ("text" | "image" |
    "special"), token_index (record token index); optionally stream. Colour and shape both encode
    modality under one legend. x_domain / y_domain: fixed axis ranges (the same at every layer).
    selected: the token_index drawn larger and opaque, with a ring and its label. select: name of a
    click selection on field ``token_index`` (None: none).
    """
    xs = alt.Scale(domain=list(x_domain)) if x_domain is not None else alt.Scale(zero=False)
    ys = alt.Scale(domain=list(y_domain)) if y_domain is not None else alt.Scale(zero=False)
    enc = dict(x=alt.X("x:Q", scale=xs, title=x_title), y=alt.Y("y:Q", scale=ys, title=y_title))
    tooltip = ["token:N", "modality:N", "token_index:Q"] + (["stream:N"] if "stream" in data else [])
    chosen = alt.datum.token_index == (selected if selected is not None else -1)
    points = alt.Chart(data).mark_point(filled=True).encode(
        **enc, color=modality_color(), shape=modality_shape(), tooltip=tooltip,
        opacity=alt.condition(chosen, alt.value(1.0), alt.value(0.45 if selected is not None else 0.8)),
        size=alt.condition(chosen, alt.value(260), alt.value(70)),
    ).properties(name="points")
    if select is not None:  # a click reports the point; the page decides what is selected (``selected``)
        points = points.add_params(alt.selection_point(name=select, fields=["token_index"], on="click"))
    layers = [points]
    if selected is not None:
        mark = data[data["token_index"] == selected]
        if len(mark):
            layers.append(alt.Chart(mark).mark_point(shape="circle", size=420, filled=False, color="black",
                                                     strokeWidth=2.5).encode(**enc))
            layers.append(alt.Chart(mark).mark_text(align="left", dx=14, dy=-10, fontWeight="bold", fontSize=13)
                          .encode(**enc, text="token:N"))
    chart = finish(alt.layer(*layers).properties(height=height, width=width), fit_width=width == "container")
    return chart.properties(title=title) if title else chart
