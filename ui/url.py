"""View state in the URL: query parameters, links, and widgets whose value lives in ``?param=``.

The URL is the source of truth, so a copied link reopens the same view. A URL widget takes its
value from the URL on every run (a link, the browser's Back, a chart click that rewrote ``?ex=``),
and a person's change goes to the URL in the widget's ``on_change`` callback, which runs before
the script reads the URL again; so the two never fight. A parameter the URL lacks shows its
default (a deterministic one: the first example, the last layer), and nothing is written until a
person changes something: each URL change is a browser history entry, so Back undoes one change.

The choices that span pages (store, run, example) are also remembered in the session: the
sidebar's page links carry no query parameters, and ``restore_navigation`` puts them back.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import streamlit as st

NAV_PARAMS = ("store", "run", "ex")  # kept when a person moves to another page
_NAV_MEMORY = "_vl_nav_params"


# ---- query parameters --------------------------------------------------------------------------
def qp_get(key: str, default=None, cast=str):
    val = st.query_params.get(key)
    if val is None or val == "":
        return default
    try:
        return cast(val)
    except (TypeError, ValueError):
        return default


def qp_set(**values) -> None:
    """Write view state into the URL (None removes a key); only writes what changed."""
    memory = st.session_state.setdefault(_NAV_MEMORY, {})
    for k, v in values.items():
        if v is None:
            if k in st.query_params:
                del st.query_params[k]
            memory.pop(k, None)
        else:
            if st.query_params.get(k) != str(v):
                st.query_params[k] = str(v)
            if k in NAV_PARAMS:
                memory[k] = str(v)


def restore_navigation() -> None:
    """Put back the store / run / example a page opened without (a sidebar link carries none),
    and remember the ones it came with (a deep link)."""
    memory = st.session_state.setdefault(_NAV_MEMORY, {})
    for k in NAV_PARAMS:
        if st.query_params.get(k):
            memory[k] = st.query_params[k]
        elif k in memory:
            st.query_params[k] = memory[k]


def forget_navigation(*keys: str) -> None:
    memory = st.session_state.setdefault(_NAV_MEMORY, {})
    for k in keys:
        memory.pop(k, None)


def nav_params(**params) -> dict[str, str]:
    """Query parameters for another page: the current store and run, plus ``params`` (None dropped)."""
    keep = {k: st.query_params.get(k) for k in ("store", "run") if st.query_params.get(k)}
    keep.update({k: str(v) for k, v in params.items() if v is not None})
    return keep


def link(page: str, **params) -> str:
    """Relative link to a page with view state (keeps store/run)."""
    keep = nav_params(**params)
    return f"./{page}?{urlencode(keep)}" if keep else f"./{page}"


# ---- widgets whose value lives in the URL --------------------------------------------------------
def _to_url(key: str, param: str, encode: Callable[[Any], str | None]) -> None:
    qp_set(**{param: encode(st.session_state[key])})


def _url_widget(draw: Callable, args: tuple, *, value, param: str, key: str,
                encode: Callable[[Any], str | None], **kwargs):
    """Draw ``draw(*args, key=key, ...)`` showing ``value`` (read from the URL by the caller)."""
    # Always assigned: a widget whose range or options changed is a new widget to Streamlit, and
    # would otherwise start from its default instead of the value the URL names.
    st.session_state[key] = value
    # Only a person's change is written (in on_change): writing what a page shows on arrival would
    # add a browser history entry per page load, and Back would never leave the page.
    return draw(*args, key=key, on_change=_to_url, args=(key, param, encode), **kwargs)


def url_choice(label: str, options: Sequence, *, param: str, key: str, default=None, omit_default: bool = False,
               widget: str = "selectbox", container=None, **kwargs):
    """A select box (or ``widget="radio"``) over ``options`` whose choice is ``?param=``.

    Options are matched to the URL by their ``str``; ``default`` (else the first option) is shown
    when the URL names none of them, and left out of the URL when ``omit_default``.
    """
    options = list(options)
    default = default if default in options else options[0]
    by_text = {str(o): o for o in options}
    value = by_text.get(st.query_params.get(param, ""), default)
    draw = getattr(container or st, widget)
    return _url_widget(draw, (label, options), value=value, param=param, key=key,
                       encode=lambda v: None if omit_default and v == default else str(v), **kwargs)


def url_int(label: str, lo: int, hi: int, *, param: str, key: str, default: int, widget: str = "slider",
            omit_default: bool = False, container=None, **kwargs) -> int:
    """An integer slider (or ``widget="number_input"``) in [lo, hi] whose value is ``?param=``."""
    value = min(max(qp_get(param, default, int), lo), hi)
    draw = getattr(container or st, widget)
    return int(_url_widget(draw, (label, lo, hi), value=value, param=param, key=key,
                           encode=lambda v: None if omit_default and v == default else str(int(v)), **kwargs))


def url_flag(label: str, *, param: str, key: str, default: bool = False, widget: str = "toggle", container=None,
             **kwargs) -> bool:
    """A toggle (or checkbox) whose value is ``?param=1`` / ``0``; the default is left out of the URL."""
    value = qp_get(param, "1" if default else "0") == "1"
    draw = getattr(container or st, widget)
    return bool(_url_widget(draw, (label,), value=value, param=param, key=key,
                            encode=lambda v: None if bool(v) == default else ("1" if v else "0"), **kwargs))


def url_text(label: str, *, param: str, key: str, container=None, **kwargs) -> str:
    """A text box whose text is ``?param=`` (empty text: no parameter)."""
    value = qp_get(param, "")
    draw = getattr(container or st, "text_input")
    return _url_widget(draw, (label,), value=value, param=param, key=key, encode=lambda v: v or None, **kwargs)


# ---- chart and table clicks that choose something -----------------------------------------------
def click_to_url(chart_key: str, selection: str, field: str, param: str) -> Callable[[], None]:
    """An ``on_select`` callback for ``st.altair_chart(key=chart_key)``: the clicked point's
    ``field`` goes to ``?param=``, so the URL widget showing that choice follows the click (a
    selection read after the widget was drawn could not move it)."""
    from ui.charts import selected_points

    def on_select() -> None:
        points = selected_points(st.session_state.get(chart_key), selection)
        if points and points[0].get(field) is not None:
            qp_set(**{param: str(points[0][field])})

    return on_select


def row_to_url(table_key: str, values: Sequence, param: str) -> Callable[[], None]:
    """An ``on_select`` callback for ``st.dataframe(key=table_key)``: the picked row's entry of
    ``values`` (one per row, in table order) goes to ``?param=``."""
    def on_select() -> None:
        event = st.session_state.get(table_key)
        rows = list(getattr(getattr(event, "selection", None), "rows", None) or
                    ((event or {}).get("selection", {}).get("rows", []) if isinstance(event, dict) else []))
        if rows and 0 <= rows[0] < len(values):
            qp_set(**{param: str(values[rows[0]])})

    return on_select
