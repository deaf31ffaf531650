"""Streamlit glue for charts: export buttons (PNG / SVG via vl-convert, data as CSV) and reading a
chart's selection. The charts themselves are built by the top-level ``charts`` package (no Streamlit).

Export is lazy: the download buttons get callables, so a chart is rendered to PNG or SVG only
when someone clicks, never on every rerun.
"""
from __future__ import annotations

from typing import Mapping

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from charts.export import to_png, to_svg

def frame(columns: Mapping[str, np.ndarray] | list[dict]) -> pd.DataFrame:
    """A DataFrame from long-form columns (as analysis/ returns them) or rows."""
    return pd.DataFrame(columns)


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
