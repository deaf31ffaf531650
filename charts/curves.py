"""Line charts: deletion curves of attribution maps, and head statistics per relative depth of two models."""
from __future__ import annotations

import altair as alt
import pandas as pd

from charts.style import PAD, SVG, finish

PAIR_COLORS = ("#1f77b4", "#ff7f0e")  # model A blue, model B orange


def deletion_curves(data: pd.DataFrame, *, y_title: str, baseline: str = "random") -> alt.Chart:
    """Probability as regions are removed, one line per order; ``baseline`` dashed.

    data: one row per (order, step): removed (fraction 0..1), probability, order (method name).
    """
    chart = alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("removed:Q", axis=alt.Axis(format="%"), title="regions removed (most important first)"),
        y=alt.Y("probability:Q", title=y_title),
        color=alt.Color("order:N", title="order"),
        strokeDash=alt.condition(alt.datum.order == baseline, alt.value([4, 3]), alt.value([1, 0])),
    ).properties(width="container")
    return finish(chart, fit_width=True)


def depth_profiles(data: pd.DataFrame, *, y_title: str = "mean attention mass", columns: int = 3) -> alt.FacetChart:
    """One panel per statistic: mean over heads per relative depth (line) with a +- spread band, per model.

    data: one row per (model, statistic, layer): model, statistic (display name), layer,
    relative_depth (0..1), mean, low, high, spread, heads. The first model is blue, the second orange.
    """
    models = list(dict.fromkeys(data["model"]))
    color = alt.Color("model:N", title="model", scale=alt.Scale(domain=models, range=list(PAIR_COLORS[:len(models)])))
    base = alt.Chart().encode(x=alt.X("relative_depth:Q", title="relative depth", scale=alt.Scale(domain=[0, 1])))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title=y_title), y2="high:Q", color=color)
    line = base.mark_line(point=True).encode(
        y="mean:Q", color=color,
        tooltip=["model", "statistic", "layer", alt.Tooltip("relative_depth:Q", format=".2f"),
                 alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("spread:Q", format=".3f"), "heads"])
    return alt.layer(band, line, data=data).properties(width=190, height=150).facet(
        facet=alt.Facet("statistic:N", title=None), columns=columns).properties(
        usermeta=SVG, autosize=PAD).configure_legend(orient="top")
