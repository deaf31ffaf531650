"""Shared app state: the store and run pickers in the sidebar (drawn once, by the router), the
page context handed to views, and cached reads.

URL query parameters carry the view state (ui/url.py), so a link reopens the same example, layer
and head.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from store.zarr_store import RunReader, VLStore
from core.errors import StoreError
from core.paths import default_store
from ui.public import check_store, policy_from_env
from ui.url import forget_navigation, qp_get, qp_set, url_choice

# Cached example lists are re-read this often while a record run commits examples into the store.
FRESH_SECONDS = float(os.environ.get("VL_LENS_FRESH_SECONDS", "5") or 5)
_CONTEXT = "_vl_page_context"


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
    bar = st.progress(0.0, text="Building the demo store (first start only; a few minutes on a laptop CPU)...")
    total_models = len(models)
    started = time.perf_counter()

    def on_progress(name, i, total):
        k = models.index(name)
        frac = (k + i / max(total or 1, 1)) / total_models
        bar.progress(min(frac, 1.0), text=f"Building the demo store (first start only): recording easy-VQA examples "
                                          f"with {name}: {i}/{total} · {time_left(time.perf_counter() - started, frac)}")

    def on_wait():
        bar.progress(0.0, text="Another visitor started building the demo store; waiting for it to finish...")

    build_once(location, on_wait=on_wait, on_progress=on_progress, progress=False)
    bar.empty()


@dataclass(frozen=True, kw_only=True)
class PageContext:
    """What the router's sidebar chose, for the page it runs: the open store and the run."""

    store: VLStore
    reader: RunReader

    @property
    def location(self) -> str:
        return self.store.location


def time_left(elapsed_s: float, done: float) -> str:
    """ "about 3 min left" from the time so far and the fraction done (the rate so far, extrapolated)."""
    if done <= 0:
        return "estimating the time left..."
    left = elapsed_s * (1 - done) / done
    return f"about {left:.0f} s left" if left < 90 else f"about {left / 60:.0f} min left"


def draw_sidebar() -> PageContext:
    """Store path and run pickers (drawn once per run, by the router); stops the page when the
    store cannot be opened or holds no run."""
    location = qp_get("store", None) or default_store()
    if location == default_store():
        ensure_demo_store(location)
    with st.sidebar:
        st.caption("Store")
        new_loc = st.text_input("Store path or URL", value=location, key="store_input",
                                help="A VL-Lens Zarr store (record one with `python cli.py record`).")
        if new_loc != location:
            qp_set(store=new_loc if new_loc != default_store() else None, run=None, ex=None)
            forget_navigation("store", "run", "ex")
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
        chosen = url_choice("Run (model)", runs, param="run", key="run_select", default=default_run(store, runs))
        prov = store.run(chosen).provenance
        cfg = prov.get("config", {})
        st.caption(f"{prov.get('adapter', '?')} · {prov.get('architecture', '?')} · "
                   f"{cfg.get('layers', '?')} layers × {cfg.get('heads', '?')} heads")
        if checkpoint := checkpoint_line(prov):
            st.caption(checkpoint, help="Which weights recorded this run: the hub revision, or a content hash "
                                        "of the local checkpoint directory (its rule is in the run's provenance).")
    return PageContext(store=store, reader=store.run(chosen))


def checkpoint_line(provenance: dict) -> str | None:
    """One line naming the weights a run was recorded with: ``hub id @ revision`` or ``local dir · hash``."""
    ck = provenance.get("checkpoint")
    if not isinstance(ck, dict):
        return None
    if ck.get("kind") == "hub":
        rev = ck.get("revision")
        return f"weights: {ck.get('id', '?')} @ {str(rev)[:12] if rev else 'revision unknown'}"
    name = Path(str(ck.get("path", "?"))).name
    digest = str(ck.get("content_hash") or "no content hash")
    return f"weights: {name} · {digest.removeprefix('sha256:')[:12]}"


def default_run(store: VLStore, runs: list[str]) -> str:
    """The run a first visit opens: the first one with a wrong answer to look at (a 99.8% run
    would open onto an empty "incorrect" filter), else the first run."""
    for run in runs:
        df = summaries_table(store.location, run, freshness(None))
        if not df.empty and (df["correct"] == False).any():  # noqa: E712 - a column of True/False/None
            return run
    return runs[0]


def set_page_context(ctx: PageContext | None) -> None:
    """The router hands the sidebar's choice to the page it is about to run."""
    st.session_state[_CONTEXT] = ctx


def page_context() -> PageContext:
    """The store and run of this page: the router's sidebar of this run (taken, so a later run
    never sees a stale one), or, for a view run on its own as a test does, a sidebar drawn here."""
    ctx = st.session_state.pop(_CONTEXT, None)
    return ctx if ctx is not None else draw_sidebar()


# ---- cached reads (keyed by store location + run + a freshness token) ----------------------------
def freshness(reader: RunReader | None = None) -> int:
    """A token that changes every FRESH_SECONDS, so cached example lists are re-read while a record
    run commits examples (a cache key argument: Streamlit does not hash ``_``-prefixed ones)."""
    return int(time.time() // FRESH_SECONDS)


@st.cache_data(show_spinner=False, max_entries=64)
def summaries_table(location: str, run: str, fresh: int):
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


def verdict(correct) -> str:
    """ "correct" / "incorrect" / "unlabelled" for a summary's ``correct`` (True, False, None; numpy
    and pandas give np.bool_ and NaN, which ``is False`` would call unlabelled)."""
    if correct is None or (isinstance(correct, float) and correct != correct):
        return "unlabelled"
    return "correct" if bool(correct) else "incorrect"


def unique_labels(labels: dict[str, str]) -> dict[str, str]:
    """Option labels made unique: a label shared by several ids gets a short id after it.

    Streamlit keeps a select box's choice as its label text, so two examples with one label
    (two images asked the same question) would collapse onto the first.
    """
    counts: dict[str, int] = {}
    for text in labels.values():
        counts[text] = counts.get(text, 0) + 1
    out = {}
    for eid, text in labels.items():
        out[eid] = text if counts[text] == 1 else f"{text} · {eid[:8]}"
    if len(set(out.values())) < len(out):  # ids sharing 8 leading digits: the full id
        out = {eid: text if counts[text] == 1 else f"{text} · {eid}" for eid, text in labels.items()}
    return out


def example_labels(df) -> dict[str, str]:
    """Example id -> "question [true answer] ✓" (✗ wrong, nothing unlabelled), with a short id
    after the examples that share question and true answer."""
    base = unique_labels({r.example_id: f"{r.question} [{r.label or '?'}]" for r in df.itertuples()})
    # Single spaces: a browser collapses runs of spaces in the option list but not in the box.
    mark = {"correct": " ✓", "incorrect": " ✗", "unlabelled": ""}
    return {r.example_id: base[r.example_id] + mark[verdict(r.correct)] for r in df.itertuples()}


def pick_example(df, key: str = "example", container=None) -> str | None:
    """Example select box whose choice is ``?ex=`` (options are example ids, labels unique)."""
    if df.empty:
        st.info("No committed examples in this run yet.")
        return None
    labels = example_labels(df)
    return url_choice("Example", list(labels), param="ex", key=key, format_func=labels.__getitem__,
                      container=container)


def page_example(title: str, key: str) -> tuple[PageContext, str, dict]:
    """A one-example page's top: its title and example picker. (context, example id, the example's
    tokens and modality); stops the page while the run has no committed example."""
    ctx = page_context()
    st.title(title)
    df = summaries_table(ctx.store.location, ctx.reader.name, freshness(ctx.reader))
    eid = pick_example(df, key=key)
    if eid is None:
        st.stop()
    return ctx, eid, example_tokens(ctx.store.location, ctx.reader.name, eid)


def pick_kind(kinds: list[str], *, key: str, container, help: str) -> str:
    """The attention kind (``?kind=``): a select box when the model records several, else a caption."""
    if len(kinds) > 1:
        return url_choice("Attention kind", kinds, param="kind", key=key, default="self", container=container,
                          help=help)
    container.markdown(f"**Attention kind:** `{kinds[0]}`")
    return kinds[0]

