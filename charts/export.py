"""Charts to files: PNG and SVG by vl-convert (the same Vega renderer the tests measure), no browser needed."""
from __future__ import annotations

import altair as alt


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=scale)


def to_svg(chart: alt.TopLevelMixin) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


def save_chart(chart: alt.TopLevelMixin, fmt: str) -> bytes:
    """PNG or SVG bytes."""
    return to_png(chart) if fmt == "png" else to_svg(chart).encode()
