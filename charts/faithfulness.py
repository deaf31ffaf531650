"""The faithfulness curves of one recorded evaluation (commands/faithfulness.py) as one Altair chart, used by
the command's PNG / SVG export and by the Faithfulness page (one renderer for both; moved from ui/, it needs
no Streamlit)."""
from __future__ import annotations

import altair as alt
import pandas as pd

from charts.style import PAD, SVG

CURVE_TITLES = {"image_positive": "image, most relevant removed first (lower = more faithful)",
                "image_negative": "image, least relevant removed first (higher = more faithful)",
                "text_positive": "words, most relevant removed first (lower = more faithful)",
                "text_negative": "words, least relevant removed first (higher = more faithful)"}


def curves_frame(evaluation: dict, metric: str = "accuracy") -> pd.DataFrame:
    """Long form: method, curve, removed (fraction), value (mean accuracy or target probability)."""
    rows = []
    for method, curves in evaluation["summary"].items():
        for curve, data in curves.items():
            for f, v in zip(evaluation["fractions"], data[metric]):
                rows.append({"method": method, "curve": curve, "removed": f, "value": v})
    return pd.DataFrame(rows)


def curves_chart(evaluation: dict, metric: str = "accuracy") -> alt.TopLevelMixin:
    """Four panels (image / words x positive / negative), one line per method, random dashed."""
    df = curves_frame(evaluation, metric)
    df["panel"] = df["curve"].map(CURVE_TITLES)
    y_title = "accuracy" if metric == "accuracy" else "p(target answer)"
    base = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("removed:Q", title="share removed", axis=alt.Axis(format="%")),
        y=alt.Y("value:Q", title=y_title, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("method:N", title="method"),
        strokeDash=alt.condition(alt.datum.method == "random", alt.value([4, 3]), alt.value([1, 0])),
        tooltip=["method", "removed", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=260, height=180)
    title = f"{evaluation.get('model', '')}: {y_title} as regions / words are removed ({evaluation['n_examples']} examples)"
    return base.facet(facet=alt.Facet("panel:N", title=None, sort=list(CURVE_TITLES.values())), columns=2,
                      title=title).properties(usermeta=SVG, autosize=PAD)
