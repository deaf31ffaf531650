"""charts/: the specs the app draws, rendered by Vega (vl-convert) and measured as a person would see them.

Every cell or bar at least 14 px tall, every axis label drawn, pictures at their own aspect ratio,
overlays with a legend.
"""
import numpy as np
import pandas as pd
import pytest

import charts
from analysis.attention_views import head_summary, head_summary_rows, matrix_rows
from charts.style import MIN_STEP, colormap, heat_scale
from tests.svg_marks import axis_labels, bars, images, legend_titles, rects, render

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _quads(n_rows: int, n_cols: int) -> np.ndarray:
    """(rows * cols, 4) boxes of a grid over the unit square, row by row."""
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    return np.stack([c / n_cols, r / n_rows, (c + 1) / n_cols, (r + 1) / n_rows], axis=1)


def _params(spec: dict) -> list[dict]:
    """Selection parameters wherever Altair put them (a layer's own, or lifted to the top)."""
    return spec.get("params", []) + [p for layer in spec.get("layer", []) for p in layer.get("params", [])]


def _clean(labels):
    return [lab.replace("\u200b", "") for lab in labels]


def test_head_summary_of_a_4_layer_model_has_tall_cells_and_every_label():
    rng = np.random.default_rng(0)
    s = head_summary(rng.random((1, 4, 4)), ["entropy"], "entropy")
    chart = charts.head_summary(head_summary_rows(s), value_title="entropy", title="t").properties(width=400)
    spec = chart.to_dict()
    assert spec["height"] >= MIN_STEP * 4
    assert spec["encoding"]["y"]["axis"]["labelOverlap"] is False
    assert _params(spec)[0]["name"] == charts.CELL_PARAM
    svg = render(chart)
    cells = rects(svg)
    assert len(cells) == 4 * 5  # 4 heads + the mean column, 4 layers
    assert min(h for _x, _y, _w, h in cells) >= MIN_STEP
    x_labels, y_labels = axis_labels(svg)
    assert x_labels == ["0", "1", "2", "3", "mean"]
    assert y_labels == ["3", "2", "1", "0"]  # layer 0 at the bottom, all four labelled


def test_attention_matrix_cells_labels_and_strips_on_their_columns():
    n_text, n_img = 8, 16
    tokens = ["[CLS]"] + [f"w{i}" for i in range(n_text - 2)] + ["[SEP]"] + [f"p{i}" for i in range(n_img)]
    modality = ["special"] + ["text"] * (n_text - 2) + ["special"] + ["image"] * n_img
    n = len(tokens)
    m = np.full((n, n), 1.0 / n, np.float32)
    data = pd.DataFrame(matrix_rows(m, np.arange(n), np.arange(n), tokens, modality))
    chart = charts.attention_matrix(data, title="self · layer 0")
    svg = render(chart)
    cells = rects(svg)
    heat = [c for c in cells if c[2] > 0 and c[1] >= 0 and c[0] >= 0]  # strips sit at negative x or y
    assert len(heat) >= n * n
    assert min(h for *_, h in heat[: n * n]) >= MIN_STEP
    labels = axis_labels(svg)
    assert len(labels) == 2 and all(len(a) == n for a in labels)  # every query and key labelled
    # the key strip (above the plot, y < 0) has one cell per key, at the x of that key's column
    strip = sorted((c for c in cells if c[1] < 0), key=lambda c: c[0])
    columns = sorted({round(c[0], 3) for c in heat[: n * n]})
    assert [round(c[0], 3) for c in strip] == columns
    assert legend_titles(svg) == ["attention", "modality"]  # one modality legend for both strips


def test_overlay_keeps_the_image_aspect_ratio_and_has_a_legend():
    image = np.full((150, 200, 3), 90, np.uint8)  # 200 x 150, as an upload
    weights = np.arange(12, dtype=float)
    chart = charts.overlay(image, _quads(3, 4), weights, width=300, title="“red” attends to image")
    svg = render(chart)
    (w, h), = images(svg)
    assert w / h == pytest.approx(200 / 150, rel=0.02)
    boxes = rects(svg)
    # the regions tile exactly the drawn image: boxes stay aligned with the picture
    assert max(x + bw for x, _y, bw, _h in boxes) == pytest.approx(w, abs=1)
    assert max(y + bh for _x, y, _w, bh in boxes) == pytest.approx(h, abs=1)
    assert legend_titles(svg) == ["attention (opacity 70%)"]
    square = render(charts.overlay(np.zeros((64, 64, 3), np.uint8), _quads(8, 8), np.ones(64), width=260))
    assert images(square) == [(260.0, 260.0)]


def test_overlay_scale_is_dark_to_bright_and_the_smoothed_picture_uses_the_same_colours():
    scale = heat_scale(0.5).to_dict()
    assert scale["domain"] == [0.0, 0.5] and scale["interpolate"] == "rgb"
    lo, hi = colormap(np.array([0.0, 1.0]))
    assert lo.sum() < 30 and hi.min() > 160  # black-ish to bright: reads on any image, a red shape included
    # signed: dark at 0, bright at both ends, different hues
    neg, zero, pos = colormap(np.array([-1.0, 0.0, 1.0]), signed=True)
    assert zero.sum() < 60 and neg.sum() > 400 and pos.sum() > 400 and neg[2] > pos[2]
    image = np.full((40, 40, 3), 200, np.uint8)
    chart = charts.overlay(image, _quads(2, 2), np.array([0.0, 0.0, 0.0, 1.0]), smooth=True, opacity=1.0, width=100)
    assert legend_titles(render(chart)) == ["attention (smoothed)"]


def test_overlay_picker_and_selection_names():
    image = np.zeros((64, 64, 3), np.uint8)
    spec = charts.overlay(image, _quads(2, 2), None, tokens=[5, 6, 7, 8], select=charts.PATCH_PARAM,
                          highlight=7).to_dict()
    params = _params(spec)
    assert params[0]["name"] == "patch" and params[0]["select"]["fields"] == ["token"]
    assert len(spec["layer"]) == 3  # image, regions, the ring around token 7
    with pytest.raises(ValueError, match="3 weights for 4 boxes"):
        charts.overlay(image, _quads(2, 2), np.ones(3))


def test_token_bars_are_tall_and_every_word_is_labelled():
    labels = [f"word{i}" for i in range(8)]
    chart = charts.token_bars(labels, np.linspace(0.01, 0.3, 8), ["text"] * 8, title="patch").properties(width=300)
    svg = render(chart)
    drawn = bars(svg)
    assert len(drawn) == 8 and min(h for *_, h in drawn) >= MIN_STEP
    assert labels in [_clean(a) for a in axis_labels(svg)]


def test_word_bars_keep_repeated_words_apart_with_a_legend():
    words = ["[CLS]", "is", "the", "circle", "the", "?", "[SEP]"]
    chart = charts.word_bars(words, np.array([0, .1, -.2, .5, .3, 0, 0]), special=[1, 0, 0, 0, 0, 0, 1])
    svg = render(chart.properties(width=260))
    assert len(bars(svg)) == 7  # "the" twice is two bars
    assert words in [_clean(a) for a in axis_labels(svg)]
    assert "role-legend" in svg


def test_projection_has_one_legend_for_colour_and_shape_and_rings_the_selected_token():
    data = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5], "token": ["[CLS]", "red", "p0"],
                         "modality": ["special", "text", "image"], "token_index": [0, 1, 2]})
    chart = charts.projection(data, x_title="PC1", y_title="PC2", selected=1).properties(width=300)
    spec = chart.to_dict()
    enc = spec["layer"][0]["encoding"]
    assert enc["color"]["title"] == enc["shape"]["title"] == "modality"  # Vega merges the two legends
    assert _params(spec)[0]["name"] == charts.TOKEN_PARAM
    svg = render(chart)
    assert legend_titles(svg) == ["modality"]
    assert ">red</text>" in svg  # the selected token's label is written next to its ring


def test_charts_import_no_streamlit_so_a_notebook_can_use_them():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, charts, charts.faithfulness, charts.export; "
            "print(sorted(m for m in ('streamlit', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
