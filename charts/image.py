"""A picture as an Altair layer over the unit square, drawn at its own aspect ratio."""
from __future__ import annotations

import base64
import io

import altair as alt
import numpy as np
import pandas as pd

# x right, y down, both 0..1 of the image: the same frame as every token box (x0, y0, x1, y1).
UNIT_X = alt.Scale(domain=[0, 1], nice=False, zero=False, padding=0)
UNIT_Y = alt.Scale(domain=[0, 1], nice=False, zero=False, padding=0, reverse=True)


def image_data_url(image: np.ndarray) -> str:
    """A PNG data URL of a (y, x, 3) uint8 image, for an Altair image mark (exports keep it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def drawn_size(image_shape: tuple[int, ...], width: int) -> tuple[int, int]:
    """(width, height) in pixels that keep the image's aspect ratio at ``width`` pixels wide."""
    h, w = image_shape[:2]
    return int(width), max(1, int(round(width * h / max(w, 1))))


def image_layer(image: np.ndarray) -> alt.Chart:
    """The (y, x, 3) image spanning the unit square; its chart's width and height set its drawn size."""
    df = pd.DataFrame({"x": [0.0], "x2": [1.0], "y": [0.0], "y2": [1.0], "url": [image_data_url(image)]})
    # aspect=False: the image fills the square exactly, so it stays under the boxes; the chart's
    # own width : height (drawn_size) is what keeps the picture's proportions.
    return alt.Chart(df).mark_image(aspect=False).encode(
        x=alt.X("x:Q", scale=UNIT_X, axis=None), x2="x2:Q",
        y=alt.Y("y:Q", scale=UNIT_Y, axis=None), y2="y2:Q",
        url="url:N").properties(name="picture")
