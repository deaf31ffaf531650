"""Shared app state: the store and run pickers in the sidebar, cached reads, and URL state.

URL query parameters carry the view state (``store``, ``run``, ``ex``, ``kind``, ``layer``,
``head``, ``stat``, ``token``), so a link reopens the same example, layer and head.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from store.zarr_store import RunReader, VLStore
from core.errors import StoreError
from core.paths import default_store
from ui.public import check_store, policy_from_env

URL_KEYS = ("store", "run", "ex", "kind", "layer", "head", "stat", "token", "run2", "patch", "dir")


# ---- URL state ---------------------------------------------------------------------------------
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
    for k, v in values.items():
        if v is None:
            if k in st.query_params:
                del st.query_params[k]
        elif st.query_params.get(k) != str(v):
            st.query_params[k] = str(v)


def link(page: str, **params) -> str:
    """Relative link to a page with view state (keeps store/run)."""
    keep = {k: st.query_params.get(k) for k in ("store", "run") if st.query_params.get(k)}
    keep.update({k: v for k, v in params.items() if v is not None})
    from urllib.parse import urlencode

    return f"./{page}?{urlencode(keep)}" if keep else f"./{page}"


# ---- store and runs ----------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=8)
def _open_store(location: str) -> VLStore:
    return VLStore(location, mode="r")


def open_store(location: str) -> VLStore:
    """The store at ``location``, once per process; in public mode only an allowed one (else StoreError)."""
    check_store(location, policy_from_env(default_store()))
    return _open_store(location)


def ensure_demo_store(location: str) -> None:
    """Build the demo store on first start, with a visible progress bar (once, under a file lock)."""
    if Path(location).exists() or "://" in location:
        return
    from demo.build_store import available_demo_models, ensure_demo_store as build_once

    models = available_demo_models()
    if not models:
        st.error("No demo model weights are present (demo/models/). Record a store with `python cli.py record` "
                 "and point VL_LENS_STORE at it.")
        st.stop()
    bar = st.progress(0.0, text="Building the demo store (first start only)...")
    total_models = len(models)

    def on_progress(name, i, total):
        k = models.index(name)
        frac = (k + i / max(total or 1, 1)) / total_models
        bar.progress(min(frac, 1.0), text=f"Recording easy-VQA examples with {name}: {i}/{total}")

    def on_wait():
        bar.progress(0.0, text="Another visitor started building the demo store; waiting for it to finish...")

    build_once(location, on_wait=on_wait, on_progress=on_progress, progress=False)
    bar.empty()


def sidebar() -> tuple[VLStore, RunReader]:
    """Store path and run pickers; returns the open store and the chosen run (or stops the page)."""
    location = qp_get("store", None) or default_store()
    if location == default_store():
        ensure_demo_store(location)
    with st.sidebar:
        st.caption("Store")
        new_loc = st.text_input("Store path or URL", value=location, key="store_input",
                                help="A VL-Lens Zarr store (record one with `python cli.py record`).")
        if new_loc != location:
            qp_set(store=new_loc if new_loc != default_store() else None, run=None, ex=None)
            st.rerun()
        try:
            store = open_store(location)
            runs = store.runs()
        except StoreError as e:
            st.error(str(e))
            st.stop()
        if not runs:
            st.warning("This store has no runs yet.")
            st.stop()
        run = qp_get("run", runs[0])
        if run not in runs:
            run = runs[0]
        chosen = st.selectbox("Run (model)", runs, index=runs.index(run), key="run_select")
        if chosen != qp_get("run"):
            qp_set(run=chosen)
        prov = store.run(chosen).provenance
        cfg = prov.get("config", {})
        st.caption(f"{prov.get('adapter', '?')} · {prov.get('architecture', '?')} · "
                   f"{cfg.get('layers', '?')} layers × {cfg.get('heads', '?')} heads")
    return store, store.run(chosen)


# ---- cached reads (keyed by store location + run + a freshness token) ----------------------------
def freshness(reader: RunReader) -> int:
    """Changes when examples are committed, so caches refresh while a record run writes."""
    return int(time.time() // 5)


@st.cache_data(show_spinner=False, max_entries=64)
def summaries_table(location: str, run: str, _fresh: int):
    import pandas as pd

    rows = [s.as_dict() for s in open_store(location).run(run).summaries()]
    df = pd.DataFrame(rows)
    if not df.empty:
        df["top_answers"] = [", ".join(f"{a} {p:.2f}" for a, p in zip(r["answers"], r["probabilities"]))
                             for r in rows]
    return df


@st.cache_data(show_spinner=False, max_entries=512)
def example_image(location: str, run: str, eid: str) -> np.ndarray:
    return open_store(location).run(run).image(eid)


@st.cache_data(show_spinner=False, max_entries=16)
def thumbnails(location: str, run: str, example_ids: tuple[str, ...], side: int = 56) -> list[str]:
    """Small PNG data URLs of the examples' images, for an image column (one read per example)."""
    import base64
    import io

    from PIL import Image

    reader = open_store(location).run(run)
    out = []
    for eid in example_ids:
        im = Image.fromarray(reader.image(eid))
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


@st.cache_data(show_spinner=False, max_entries=256)
def example_tokens(location: str, run: str, eid: str) -> dict:
    return open_store(location).run(run).tokens(eid)


def pick_example(reader: RunReader, df, key: str = "example") -> str | None:
    """Example selectbox that follows ``?ex=`` and writes back to it."""
    if df.empty:
        st.info("No committed examples in this run yet.")
        return None
    ids = list(df["example_id"])
    # Single spaces: a browser collapses runs of spaces in the option list but not in the box.
    labels = {r.example_id: f"{r.question} [{r.label or '?'}]"
                            + (" ✓" if r.correct else " ✗" if r.correct is False else "")
              for r in df.itertuples()}
    current = qp_get("ex", ids[0])
    if current not in ids:
        current = ids[0]
    eid = st.selectbox("Example", ids, index=ids.index(current), format_func=lambda i: labels[i], key=key)
    if eid != qp_get("ex"):
        qp_set(ex=eid)
    return eid
