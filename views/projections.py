"""Hidden-state projections: one example's tokens in 2-D, one layer at a time, comparable across layers.

All layers are fit once (every layer's tokens stacked), so the axes mean the same at every layer;
the projection is cached per (example, stream, method, centering). A long sequence (a generative
model's hundreds of image tokens) fits t-SNE / UMAP on a sample of its image tokens (every word
kept), and the page says so (analysis/projections.fit_sample).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis.projections import (MAX_FIT_POINTS, METHOD_LABELS, METHOD_NOTES, METHODS, fit_sample, nearest_other_modality,
                                  project_layers, projection_rows, stack_streams)
import charts
from ui.charts import export_buttons
from ui.state import open_store, page_example
from ui.url import click_to_url, qp_get, url_choice, url_flag, url_int

JOINT = "all streams"


@st.cache_data(show_spinner=False, max_entries=64)
def read_hidden(location: str, run: str, eid: str) -> dict:
    reader = open_store(location).run(run)
    return {s: reader.hidden(eid, s) for s in reader.hidden_streams(eid)}


@st.cache_data(show_spinner=False, max_entries=64)
def cached_projection(location: str, run: str, eid: str, stream: str, method: str, center: bool):
    streams = read_hidden(location, run, eid)
    chosen = streams if stream == JOINT else {stream: streams[stream]}
    values, index, owner = stack_streams(chosen)
    modality = open_store(location).run(run).tokens(eid)["modality"]
    sample = fit_sample([modality[t] for t in index], values.shape[0], method, max_points=MAX_FIT_POINTS)
    values, index, owner = values[:, sample.keep], index[sample.keep], [owner[k] for k in sample.keep]
    return project_layers(values, index, method, center=center), owner, values, sample


@st.cache_resource(show_spinner=False, max_entries=1)
def fitted_methods() -> set[str]:
    """Projection methods already fitted in this server process (the first UMAP fit compiles numba code)."""
    return set()


ctx, eid, tok = page_example("Hidden states", key="proj_example")
store, reader = ctx.store, ctx.reader
tokens, modality = tok["tokens"], tok["modality"]
streams = read_hidden(store.location, reader.name, eid)
if not streams:
    st.warning("This example has no recorded hidden states.")
    st.stop()

# Streams can be projected together only when they share depth and width (ViLT: one joint stream).
options = list(streams)
try:
    stack_streams(streams)
    if len(streams) > 1:
        options = [JOINT] + options
except ValueError:
    pass
c1, c2, c3 = st.columns([1, 1, 2])
if len(options) > 1:
    stream = url_choice("Stream", options, param="stream", key="proj_stream", omit_default=True, container=c1,
                        help="Dual-stream models keep text and image states apart; streams of different depth "
                             "are projected one at a time.")
else:
    stream = options[0]
    c1.markdown(f"**Stream:** `{stream}`")
method = url_choice("Method", list(METHODS), param="method", key="proj_method", default="pca", omit_default=True,
                    widget="radio", container=c2, format_func=METHOD_LABELS.get, horizontal=True,
                    help=" · ".join(f"{METHOD_LABELS[m]}: {METHOD_NOTES[m]}" for m in METHODS))
center = url_flag("Center each layer", param="center", key="proj_center", default=True, container=c3,
                  help="Remove each layer's mean token before the joint fit, so the plot shows how tokens "
                       "sit relative to each other rather than the drift of the whole layer.")

fitted = fitted_methods()
if method == "umap" and "umap" not in fitted:
    # UMAP's first fit in a server process compiles its numba code (47 s was seen on a 2-core host).
    fitting = ("Fitting UMAP over all layers. The first UMAP fit after the server starts also compiles UMAP's "
               "numba code, which takes up to a minute on a small CPU; later fits take seconds.")
else:
    fitting = f"Fitting {METHOD_LABELS[method]} over all layers (cached afterwards)..."
with st.spinner(fitting, show_time=True):
    proj, owner, values, sample = cached_projection(store.location, reader.name, eid, stream, method, center)
fitted.add(method)
n_layers = proj.n_layers
@st.fragment
def layer_map() -> None:
    """The layer slider, the map and the chosen token's neighbours: a slider move or a click on a point
    redraws this part only (a fragment), not the page."""
    if n_layers > 1:
        layer = url_int("Layer (0 = embeddings)", 0, n_layers - 1, param="layer", key="proj_layer", default=n_layers - 1)
    else:
        layer = 0
    st.caption(f"{METHOD_LABELS[method]}: one joint fit over all {n_layers} layers' {len(proj.token_index)} tokens "
               f"stacked ({n_layers * len(proj.token_index)} points), so coordinates are comparable across layers"
               f"{'; each layer centered first' if center else ''} · fit in {proj.seconds:.2f} s")
    if sample.sampled:
        st.caption(f"{METHOD_LABELS[method]} fits at most {MAX_FIT_POINTS:,} points: this sequence's words are all kept "
                   f"and a sample of its image tokens, {sample.n_image_kept} of {sample.n_image} (one in "
                   f"{sample.step}, evenly spaced); PCA fits every token.")

    data = pd.DataFrame(projection_rows(proj, layer, tokens, modality, owner if stream == JOINT else None))
    data["position"] = np.arange(len(data))
    # Same axis ranges at every layer, so moving the slider shows movement, not rescaling.
    xs, ys = proj.coords[..., 0], proj.coords[..., 1]
    pad_x, pad_y = 0.05 * float(np.ptp(xs) or 1), 0.05 * float(np.ptp(ys) or 1)
    xdom = [float(xs.min()) - pad_x, float(xs.max()) + pad_x]
    ydom = [float(ys.min()) - pad_y, float(ys.max()) + pad_y]

    choices = [int(t) for t in proj.token_index if modality[t] in ("text", "image")]
    cur = qp_get("token", None, int)
    cur = cur if cur in choices else (choices[0] if choices else None)
    # A click on a point writes ?token= (click_to_url), and the Token box below shows it; the chosen
    # token is drawn larger, opaque and ringed, with its label.
    chart = charts.projection(data, x_title=f"{METHOD_LABELS[method]} 1", y_title=f"{METHOD_LABELS[method]} 2",
                              title=f"{METHOD_LABELS[method]} · layer {layer} · {eid[:8]}", x_domain=xdom, y_domain=ydom,
                              selected=cur)

    left, right = st.columns([3, 2])
    with left:
        st.altair_chart(chart, on_select=click_to_url("proj_chart", charts.TOKEN_PARAM, "token_index", "token"),
                        selection_mode=charts.TOKEN_PARAM, key="proj_chart", width="stretch")
    with right:
        if cur is None:
            st.info("No text or image tokens to compare.")
        else:
            cur = url_choice("Token", choices, param="token", key="proj_token", default=cur,
                             format_func=lambda t: f"{tokens[t]} ({modality[t]}, #{t})")
            # Neighbours in the full hidden space of this layer (the 2-D map distorts distances).
            neigh = nearest_other_modality(values[layer], proj.token_index, modality, cur, k=5)
            other = "image" if modality[cur] == "text" else "text"
            if neigh:
                st.markdown(f"**Nearest {other} tokens to “{tokens[cur]}” at layer {layer}** (cosine, full hidden space)")
                st.dataframe(pd.DataFrame([{"token": tokens[n.token], "#": n.token, "cosine": round(n.similarity, 4)}
                                           for n in neigh]), hide_index=True, key="proj_neighbours")
            else:
                st.info(f"No {other} tokens in this stream to compare with (pick '{JOINT}' if offered).")

    with st.expander("Download"):
        export_buttons(chart, data.drop(columns=["position"]), f"projection_{method}_L{layer}", key="proj_export")
        all_layers = pd.concat([pd.DataFrame(projection_rows(proj, l, tokens, modality)) for l in range(n_layers)])
        st.download_button("CSV, all layers", data=lambda: all_layers.to_csv(index=False),
                           file_name=f"projection_{method}_all_layers.csv", mime="text/csv", key="proj_export_all",
                           on_click="ignore")


layer_map()
