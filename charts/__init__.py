"""VL-Lens charts: pure Altair builders (no Streamlit), so a notebook draws what the app draws.

Each function takes plain arrays / long-form frames (shapes in its docstring) and returns an Altair
chart. Sizes follow the data: rows and bars are at least ``style.MIN_STEP`` px tall, axes drop no
label, pictures keep their aspect ratio (show them at their own width: Streamlit's
``st.altair_chart(chart, width="content")``, not stretched to the column).

Builders
    overlay(image, boxes, weights, ...)      regions' weights over the image (attention, attribution, a picker)
    head_summary(rows, ...)                  layer x head map of one statistic
    attention_matrix(data, ...)              query x key attention with modality strips
    token_bars(labels, weights, modality)    one bar per token (a patch's attention on the text)
    word_bars(words, scores, special=...)    one bar per word (attribution; join word pieces first)
    attribution_overlay / attribution_word_bars   an AttributionResult as the Ask page draws it
    projection(data, ...)                    hidden states in 2-D, modality as colour and shape, one token ringed
    agreement / depth_heatmap / depth_profiles / deletion_curves   the Ask and Compare extras
    faithfulness.curves_chart(evaluation)    a recorded faithfulness evaluation's four panels
    export.to_png / to_svg / save_chart      files, by vl-convert

Selections (names of Altair point parameters, read from ``st.altair_chart(..., on_select=...)``):
    overlay(select=PATCH_PARAM)   "patch": a clicked region, field ``token``
    head_summary(select=CELL_PARAM) "cell": a clicked head, fields ``layer`` (int) and ``head`` (str, or "mean")
    projection(select=TOKEN_PARAM)  "tok": a clicked point, field ``token_index``
"""
import altair as alt

from charts.attribution import attribution_overlay, attribution_word_bars
from charts.bars import token_bars, word_bars
from charts.curves import deletion_curves, depth_profiles
from charts.heatmaps import CELL_PARAM, agreement, attention_matrix, depth_heatmap, head_summary
from charts.overlay import PATCH_PARAM, overlay
from charts.scatter import TOKEN_PARAM, projection
from charts.style import tagged

__all__ = ["CELL_PARAM", "PATCH_PARAM", "TOKEN_PARAM", "agreement", "attribution_overlay", "attribution_word_bars", "attention_matrix", "deletion_curves",
           "depth_heatmap", "depth_profiles", "head_summary", "overlay", "projection", "tagged", "token_bars", "word_bars"]

# An attention matrix of ~80 tokens is 6,400 rows, over Altair's default cap of 5,000 inlined rows.
alt.data_transformers.disable_max_rows()
