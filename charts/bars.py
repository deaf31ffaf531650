"""Horizontal bars, one labelled row per token or word: a patch's attention on the text, and word attributions.

Rows are ``STEP`` px tall and every label shows: repeated words get zero-width suffixes
(``unique_labels``) instead of a label expression, so "the" twice is two rows both reading "the".
"""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from charts.style import STEP, axis, finish, modality_color, unique_labels

WORD_COLORS = {"for": "#c0392b", "against": "#2e6da4", "special": "#bbbbbb"}


def _rows(labels: Sequence[str], values: np.ndarray, value_field: str) -> pd.DataFrame:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) != len(labels):
        raise ValueError(f"{len(v)} values for {len(labels)} labels")
    return pd.DataFrame({"row": unique_labels([str(x) for x in labels]), "label": [str(x) for x in labels],
                         value_field: v})


def _bars(df: pd.DataFrame, value_field: str, value_title: str, color: alt.Color, title: str,
          width: int | str) -> alt.Chart:
    order = df["row"].tolist()
    chart = alt.Chart(df).mark_bar(height={"band": 1}).encode(  # the scale pads; the theme would shrink bars to 85%
        x=alt.X(f"{value_field}:Q", title=value_title),
        # explicit padding: Streamlit's theme pads bands more, which took a 18 px row's bar under 14 px
        y=alt.Y("row:N", sort=order, scale=alt.Scale(domain=order, paddingInner=0.15, paddingOuter=0.1),
                axis=axis(None)),
        color=color,
        tooltip=[alt.Tooltip("label:N", title="token"), alt.Tooltip(f"{value_field}:Q", title=value_title, format=".4f")],
    ).properties(width=width, height=STEP * max(len(df), 1), name="bars")
    chart = finish(chart, fit_width=width == "container")
    return chart.properties(title=title) if title else chart


def token_bars(labels: Sequence[str], weights: np.ndarray, modality: Sequence[str], *, title: str = "",
               value_title: str = "attention", width: int | str = "container") -> alt.Chart:
    """One bar per token, coloured by modality, in the given order.

    labels, modality: (T,) strings; weights: (T,) floats (e.g. an image patch's attention on each text token).
    """
    df = _rows(labels, weights, "weight")
    df["modality"] = [str(m) for m in modality]
    return _bars(df, "weight", value_title, modality_color(), title, width)


def word_bars(words: Sequence[str], scores: np.ndarray, *, special: Sequence[bool] | None = None, title: str = "",
              value_title: str = "attribution", width: int | str = "container") -> alt.Chart:
    """One bar per word, red for the answer, blue against it, grey for special tokens, with a legend.

    words: (W,) display words (word pieces already joined, see ``analysis.words.group_word_pieces``);
    scores: (W,) floats; special: (W,) bools.
    """
    df = _rows(words, scores, "score")
    sp = np.zeros(len(df), bool) if special is None else np.asarray(special, bool).reshape(-1)
    df["kind"] = np.where(sp, "special", np.where(df["score"] >= 0, "for", "against"))
    color = alt.Color("kind:N", title=None, scale=alt.Scale(domain=list(WORD_COLORS), range=list(WORD_COLORS.values())),
                      legend=alt.Legend(orient="bottom", direction="horizontal"))
    return _bars(df, "score", value_title, color, title, width)
