"""Shared Altair helpers for the views, and export (PNG / SVG via vl-convert, data as CSV).

Export is lazy: the download buttons get callables, so a chart is rendered to PNG or SVG only
when someone clicks, never on every rerun.
"""
from __future__ import annotations

import base64
import io
from typing import Mapping

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

MODALITY_COLORS = {"text": "#d62728", "image": "#1f77b4", "special": "#7f7f7f"}  # VL-InterpreT: text red, image blue
MODALITY_SHAPES = {"text": "circle", "image": "square", "special": "triangle-up"}

alt.data_transformers.disable_max_rows()


def frame(columns: Mapping[str, np.ndarray] | list[dict]) -> pd.DataFrame:
    """A DataFrame from long-form columns (as analysis/ returns them) or rows."""
    return pd.DataFrame(columns)


def modality_color(field: str = "modality", title: str = "modality") -> alt.Color:
    return alt.Color(f"{field}:N", title=title, scale=alt.Scale(domain=list(MODALITY_COLORS),
                                                                 range=list(MODALITY_COLORS.values())))


def modality_shape(field: str = "modality") -> alt.Shape:
    return alt.Shape(f"{field}:N", scale=alt.Scale(domain=list(MODALITY_SHAPES), range=list(MODALITY_SHAPES.values())),
                     legend=None)


def image_data_url(image: np.ndarray) -> str:
    """A PNG data URL of a (y, x, 3) uint8 image, for an Altair image mark (exports keep it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_layer(image: np.ndarray, size: int) -> alt.Chart:
    """The image stretched over the unit square (x right, y down), ``size`` pixels wide."""
    h, w = image.shape[:2]
    df = pd.DataFrame({"x": [0.0], "x2": [1.0], "y": [0.0], "y2": [1.0], "url": [image_data_url(image)]})
    return alt.Chart(df).mark_image(aspect=False).encode(
        x=alt.X("x:Q", scale=alt.Scale(domain=[0, 1]), axis=None),
        x2="x2:Q",
        y=alt.Y("y:Q", scale=alt.Scale(domain=[0, 1], reverse=True), axis=None),
        y2="y2:Q",
        url="url:N",
    ).properties(width=size, height=int(round(size * h / max(w, 1))))


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


def to_csv(data: pd.DataFrame) -> str:
    return data.to_csv(index=False)


def export_buttons(chart: alt.TopLevelMixin | None, data: pd.DataFrame, name: str, key: str) -> None:
    """PNG, SVG (when there is a chart) and CSV download buttons in one row."""
    cols = st.columns(3 if chart is not None else 1)
    if chart is not None:
        cols[0].download_button("PNG", data=lambda: to_png(chart), file_name=f"{name}.png", mime="image/png",
                                key=f"{key}_png", icon=":material/download:", on_click="ignore")
        cols[1].download_button("SVG", data=lambda: to_svg(chart), file_name=f"{name}.svg", mime="image/svg+xml",
                                key=f"{key}_svg", icon=":material/download:", on_click="ignore")
    cols[-1].download_button("CSV", data=lambda: to_csv(data), file_name=f"{name}.csv", mime="text/csv",
                             key=f"{key}_csv", icon=":material/download:", on_click="ignore")


def heatmap(df: pd.DataFrame, *, x: str, y: str, color: str, x_title: str, y_title: str, color_title: str,
            tooltip: list, x_sort=None, y_sort=None, scheme: str = "viridis", domain_mid: float | None = None,
            width: int | str = "container", height: int = 360, selection=None, x_labels: bool = True,
            y_labels: bool = True) -> alt.Chart:
    """A rect heatmap; ``selection`` (an Altair parameter) is attached when given."""
    scale = alt.Scale(scheme=scheme) if domain_mid is None else alt.Scale(scheme="redblue", domainMid=domain_mid,
                                                                          reverse=True)
    enc = dict(
        x=alt.X(f"{x}:O", title=x_title, sort=x_sort, axis=alt.Axis(labels=x_labels, labelAngle=-60, labelLimit=90)),
        y=alt.Y(f"{y}:O", title=y_title, sort=y_sort, axis=alt.Axis(labels=y_labels, labelLimit=90)),
        color=alt.Color(f"{color}:Q", title=color_title, scale=scale),
        tooltip=tooltip,
    )
    chart = alt.Chart(df).mark_rect().encode(**enc).properties(width=width, height=height)
    if selection is not None:
        chart = chart.add_params(selection).encode(
            opacity=alt.condition(selection, alt.value(1.0), alt.value(0.55)))
    return chart


def selected_points(event, param: str) -> list[dict]:
    """The points an ``on_select`` event reports for a point selection named ``param``."""
    if not event:
        return []
    sel = getattr(event, "selection", None)
    if sel is None and isinstance(event, dict):
        sel = event.get("selection")
    if not sel:
        return []
    pts = sel.get(param) if isinstance(sel, dict) else getattr(sel, param, None)
    return list(pts or [])
