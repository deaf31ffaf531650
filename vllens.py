"""VL-Lens from Python: a thin facade over the store, the adapters, attribution, recording and charts.

Everything here delegates to the modules the CLI and the app use (nothing is computed twice), so a
notebook sees the same numbers and draws the same charts as the app::

    import vllens
    model = vllens.load_model("vilt-easyvqa")                      # device="auto": a GPU when there is one
    res = vllens.attribute(model, image, "what color is the shape?", method="ig", n_steps=30)
    vllens.record(model, "easyvqa:test", "demo.zarr", run="demo", limit=10)
    run = vllens.open_run("demo.zarr", "demo")
    vllens.head_summary_chart(run, stat="text_to_image")          # an Altair chart, as in the app

Shapes: L layers, H heads, Q queries, K keys, N tokens of a Record, R image regions, T text tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

import charts
from adapters.base import Adapter
from adapters.registry import load_model as _load_model
from analysis.attention_views import (head_summary, head_summary_rows, matrix_rows, mean_over_heads, overlay_boxes,
                                      token_attention)
from analysis.attribution import AttributionResult, target_spec
from analysis.attribution import attribute as _attribute
from analysis.head_stats import STAT_LABELS, as_defined
from analysis.projections import project_layers, projection_rows, stack_streams
from core.errors import InputError, StoreError
from pipeline.record import RecordResult, limited, record_examples
from sources import open_source
from sources.images import decode_image
from store.schema import Prediction, Record
from store.zarr_store import RunReader, VLStore, open_store

__all__ = ["open_store", "open_run", "examples", "get_record", "head_attention", "load_model", "run", "predict",
           "attribute", "contributions", "record", "head_summary_chart", "attention_matrix_chart",
           "attention_overlay_chart", "projection_chart", "attribution_heatmap", "word_bars_chart"]

ImageLike = Image.Image | np.ndarray | str | Path


# ---- stores and runs ----------------------------------------------------------------------------
def open_run(location: str | Path | VLStore, run: str | None = None) -> RunReader:
    """One run of a store (read-only); ``run=None`` takes the store's only run."""
    store = location if isinstance(location, VLStore) else open_store(location)
    if run is None:
        runs = store.runs()
        if len(runs) != 1:
            raise StoreError(f"store {store.location} has runs {', '.join(runs) or 'none'}: name one with run=")
        run = runs[0]
    return store.run(run)


def examples(reader: RunReader) -> pd.DataFrame:
    """The run's committed examples, one row each (example_id, question, label, answer, confidence, ...)."""
    return pd.DataFrame([s.as_dict() for s in reader.summaries()])


def get_record(reader: RunReader, example_id: str) -> Record:
    """The full Record of one example (reads all its arrays)."""
    return reader.record(example_id)


def _kind(reader: RunReader, eid: str, kind: str | None) -> str:
    kinds = reader.attention_kinds(eid)
    if kind is None:
        if not kinds:
            raise StoreError(f"example {eid!r} of run {reader.name!r} has no recorded attention")
        return "self" if "self" in kinds else kinds[0]
    if kind not in kinds:
        raise StoreError(f"example {eid!r} has no attention kind {kind!r}; kinds: {', '.join(kinds)}")
    return kind


def head_attention(reader: RunReader, example_id: str, layer: int, head: int | None = None, *,
                   kind: str | None = None) -> xr.DataArray:
    """One head's attention (or the mean over heads when ``head`` is None) as a labelled (query, key) array.

    Reads one chunk. Coordinates along each axis: ``*_token`` (index into the Record's tokens),
    ``*_label`` (the token string) and ``*_modality`` ("text" | "image" | "special"), e.g.
    ``a.where(a.key_modality == "image", drop=True)``. Rows sum to 1 over the keys.
    """
    kind = _kind(reader, example_id, kind)
    n_layers, n_heads = reader.attention_array(example_id, kind).shape[:2]
    if not 0 <= layer < n_layers or not (head is None or 0 <= head < n_heads):
        raise InputError(f"layer {layer}, head {head}: kind {kind!r} has layers 0..{n_layers - 1}, "
                         f"heads 0..{n_heads - 1}")
    values = (mean_over_heads(reader.attention(example_id, kind, layer)) if head is None
              else reader.attention(example_id, kind, layer, head))
    qi, ki = reader.attention_index(example_id, kind)
    tok = reader.tokens(example_id)
    labels, modality = np.asarray(tok["tokens"], dtype=object), np.asarray(tok["modality"], dtype=object)
    coords = {f"{axis}_{name}": (axis, col[idx])
              for axis, idx in (("query", qi), ("key", ki))
              for name, col in (("token", np.arange(len(labels))), ("label", labels), ("modality", modality))}
    return xr.DataArray(values, dims=("query", "key"), coords=coords, name="attention",
                        attrs={"example_id": example_id, "kind": kind, "layer": int(layer),
                               "head": "mean" if head is None else int(head)})


# ---- models -------------------------------------------------------------------------------------
def load_model(name: str, *, device: str = "auto") -> Adapter:
    """A model by registry name ("vilt-easyvqa", "lxmert-easyvqa", ...) or "ADAPTER:HUB_ID_OR_DIR"."""
    return _load_model(name, device=device)


def _image(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image, an (y, x, 3) uint8 array or an image file's path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise InputError(f"image: {path} is not a file")
    return decode_image(path.read_bytes(), name=str(path))


def run(model: Adapter, image: ImageLike, question: str, *, top_k: int = 5) -> Record:
    """One forward pass with attention and hidden states captured: the Record the store would hold."""
    return model.run(_image(image), question, top_k=top_k)


def predict(model: Adapter, image: ImageLike, question: str, *, top_k: int = 5) -> Prediction:
    """The top-k answers and their probabilities (no attention captured)."""
    return model.predict(_image(image), question, top_k=top_k)


def attribute(model: Adapter, image: ImageLike, question: str, target: str | int | None = None, *,
              method: str = "ig", **params) -> AttributionResult:
    """Explain an answer: region_scores (R,) over region_boxes (R, 4) and token_scores (T,) over tokens.

    target: None (the top answer), an answer name, or "A rather than B"; for a generative model None or k
    (generated token k, default the first), "whole" (the whole generated answer), an answer text, or "A rather
    than B". method: ig, rollout, relevance, occlusion, attention; params go to the method (ig: n_steps,
    internal_batch_size, ...). For ig, ``delta`` is the convergence delta.
    """
    spec, resolved = target_spec(model, _image(image), question, target)
    return _attribute(model, spec, resolved, method, **params)


def contributions(result: AttributionResult) -> dict[str, float | None]:
    """Total image and text attribution, and for ig the convergence delta and f(x) - f(baseline)."""
    return {"image": float(np.sum(result.region_scores)), "text": float(np.sum(result.token_scores)),
            "delta": result.delta, "score_difference": result.score_difference}


# ---- recording ----------------------------------------------------------------------------------
def record(model: Adapter, dataset: str, location: str | Path, *, run: str, limit: int | None = None,
           split: str | None = None, batch_size: int = 1, progress: bool = True) -> RecordResult:
    """Record a data set (a spec such as "easyvqa:test", see docs/data.md) into the store at ``location``
    under run ``run``, with a progress bar. Resumes: examples already in the run are skipped."""
    source = open_source(dataset, split=split)
    store = open_store(location, mode="a")
    total = len(source) if limit is None else min(limit, len(source))
    return record_examples(model, limited(iter(source), limit), store, run, total=total, progress=progress,
                           batch_size=batch_size)


# ---- charts (what the app draws) ----------------------------------------------------------------
def head_summary_chart(reader: RunReader, example_ids: str | Sequence[str] | None = None, *, stat: str,
                       kind: str | None = None, zscore: bool = False) -> alt.Chart:
    """The layers x heads map of one head statistic (plus a mean column), for one example or the mean
    over ``example_ids`` (None: every example of the run). Data: L x (H + 1) rows."""
    ids = [example_ids] if isinstance(example_ids, str) else (None if example_ids is None else list(example_ids))
    kinds = reader.attention_kinds()
    kind = kind or ("self" if "self" in kinds or not kinds else kinds[0])
    _, names, values = reader.head_stats_all(kind, ids)
    if not len(values):
        raise StoreError(f"run {reader.name!r} has no head statistics of kind {kind!r} for these examples")
    summary = head_summary(as_defined(kind, names, values), names, stat, zscore=zscore)
    title = f"z({STAT_LABELS.get(stat, stat)})" if zscore else STAT_LABELS.get(stat, stat)
    return charts.head_summary(pd.DataFrame(head_summary_rows(summary)), value_title=title,
                               title=f"{title} · kind {kind}", zscored=zscore, select=None)


def attention_matrix_chart(reader: RunReader, example_id: str, layer: int, head: int | None = None, *,
                           kind: str | None = None) -> alt.LayerChart:
    """The query x key heatmap of one head (or the mean over heads). Data: Q x K rows."""
    a = head_attention(reader, example_id, layer, head, kind=kind)
    tok = reader.tokens(example_id)
    data = pd.DataFrame(matrix_rows(a.values, a.query_token.values, a.key_token.values, tok["tokens"], tok["modality"]))
    return charts.attention_matrix(data, title=f"{a.attrs['kind']} · layer {layer} · head {a.attrs['head']}")


def attention_overlay_chart(reader: RunReader, example_id: str, token: int, layer: int, head: int | None = None, *,
                            kind: str | None = None, smooth: bool = False, width: int = 360) -> alt.LayerChart:
    """Where token ``token`` (a Record token index, a query of the kind) attends on the image: one
    region per image key, coloured by its weight. Data: one row per image key."""
    a = head_attention(reader, example_id, layer, head, kind=kind)
    att = token_attention(a.values, a.query_token.values, a.key_token.values, token)
    if att is None:
        raise InputError(f"token {token} is not a query of kind {a.attrs['kind']!r}")
    tok = reader.tokens(example_id)
    boxes = overlay_boxes(att, tok["token_boxes"], tok["modality"])
    return charts.overlay(reader.image(example_id), np.stack([boxes[k] for k in ("x0", "y0", "x1", "y1")], axis=1),
                          boxes["weight"], tokens=boxes["token"], labels=[tok["tokens"][t] for t in boxes["token"]],
                          title=f"“{tok['tokens'][token]}” · layer {layer} · head {a.attrs['head']}", smooth=smooth,
                          width=width)


def projection_chart(reader: RunReader, example_id: str, layer: int, *, method: str = "pca",
                     center: bool = True) -> alt.LayerChart:
    """One layer of the example's hidden states in 2-D (one joint fit over all layers, as the app).
    Data: one row per token with a hidden state."""
    streams = {s: reader.hidden(example_id, s) for s in reader.hidden_streams(example_id)}
    values, index, _ = stack_streams(streams)
    proj = project_layers(values, index, method, center=center)
    tok = reader.tokens(example_id)
    data = pd.DataFrame(projection_rows(proj, layer, tok["tokens"], tok["modality"]))
    return charts.projection(data, x_title=f"{method} 1", y_title=f"{method} 2", title=f"{method} · layer {layer}",
                             select=None, width=420)


def attribution_heatmap(result: AttributionResult, image: ImageLike, *, opacity: float = 0.7,
                        width: int = 320) -> alt.LayerChart:
    """The result's region scores over the image (diverging colours when some are negative). Data: R rows."""
    return charts.attribution_overlay(np.asarray(_image(image)), result, opacity=opacity, width=width)


def word_bars_chart(result: AttributionResult, question: str | None = None) -> alt.Chart:
    """One bar per word (word pieces joined, their scores summed). Data: one row per word."""
    return charts.attribution_word_bars(result, question)
