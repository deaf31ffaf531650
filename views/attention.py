"""Attention: one head (or the mean over heads) of one layer and attention kind.

Reads one (layer, head) chunk per draw (or one layer's heads for the mean), never the whole
example. Works for any kind: queries and keys are each kind's own token sets, so a matrix may
be text x image (LXMERT cross_l2v) rather than a square joint sequence.

Generative models: an answer token's overlay shows, by default, the row of the decoding step that
generated it (the token before it), or its own row; its attention over the prompt is drawn as bars.
Attention sinks of the shown layer are flagged (analysis/sinks.py) and can be left out, each row
renormalized over the other keys.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import charts
from analysis.attention_views import (DIRECTIONS, IMAGE_PARTS, generating_row, grid_shape, image_parts, matrix_rows,
                                      mean_over_heads, only_tokens, overlay_boxes, patch_at, prompt_part, restrict,
                                      token_attention, top_k)
from analysis.sinks import SINK_THRESHOLD, LayerSinks, layer_sinks, without_sinks
from ui.charts import export_buttons, frame
from ui.state import example_image, open_store, page_example, pick_kind
from ui.player import play_layers
from ui.url import click_to_url, qp_get, qp_set, url_choice, url_flag, url_int

MEAN = "mean"


@st.cache_data(show_spinner=False, max_entries=256)
def read_attention(location: str, run: str, eid: str, kind: str, layer: int,
                   head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((query, key) of one head or the mean over heads, query_index, key_index) of one layer: every
    query row where the layer (and head, or every head for the mean) was recorded in full
    (``record --full-layers``), else the kind's rows. Reads one layer's chunks."""
    values, qi, ki = open_store(location).run(run).attention_rows(eid, kind, layer, None if head == MEAN else int(head))
    return (mean_over_heads(values) if head == MEAN else values), qi, ki


@st.cache_data(show_spinner=False, max_entries=256)
def kind_layout(location: str, run: str, eid: str, kind: str):
    """(layers, heads, query_index, key_index) from metadata only."""
    reader = open_store(location).run(run)
    arr = reader.attention_array(eid, kind)
    qi, ki = reader.attention_index(eid, kind)
    return int(arr.shape[0]), int(arr.shape[1]), qi, ki


@st.cache_data(show_spinner=False, max_entries=256)
def sinks_at(location: str, run: str, eid: str, kind: str, layer: int, causal: bool) -> LayerSinks:
    """The attention sinks of one layer (all its heads), judged by the rows of the words."""
    reader = open_store(location).run(run)
    qi, ki = reader.attention_index(eid, kind)
    judges = np.asarray(reader.tokens(eid)["modality"])[qi] == "text"
    return layer_sinks(reader.attention(eid, kind, layer), qi, ki, causal=causal, judges=judges)


def sink_line(sinks: LayerSinks, layer: int, dropped: bool) -> str:
    rule = (f"keys that receive on average at least {SINK_THRESHOLD:.0%} of the attention of the rows that see them, "
            "mean over heads; judged on keys every word's row can see")
    if not sinks.tokens:
        return f"No attention sink at layer {layer} ({rule})."
    names = ", ".join(f"“{tokens[t]}” (#{t}) {sinks.share(t):.0%}" for t in sinks.tokens)
    tail = " Left out: each row renormalized over the other keys." if dropped else ""
    return f"Attention sinks at layer {layer}: {names} ({rule}).{tail}"


ctx, eid, tok = page_example("Attention", key="att_example")
store, reader = ctx.store, ctx.reader
tokens, modality, role = tok["tokens"], tok["modality"], tok["role"]
# A generative model's rows are causal (a query sees the keys up to itself) and it has answer tokens.
generative = reader.provenance.get("architecture") == "generative" or "answer" in role
kinds = reader.attention_kinds(eid)
if not kinds:
    st.warning("This example has no recorded attention.")
    st.stop()

c1, c2, c3 = st.columns([1, 3, 1])
kind = pick_kind(kinds, key="att_kind", container=c1,
                 help="Each kind has its own query and key tokens (e.g. cross_l2v: text queries, image keys).")
n_layers, n_heads, kind_q, kind_k = kind_layout(store.location, reader.name, eid, kind)
if n_layers > 1:
    layer = url_int("Layer", 0, n_layers - 1, param="layer", key="att_layer", default=n_layers - 1, container=c2)
else:
    layer = 0
head = url_choice("Head", [MEAN] + [str(h) for h in range(n_heads)], param="head", key="att_head", default=MEAN,
                  container=c3, format_func=lambda h: "mean over heads" if h == MEAN else f"head {h}")

mod = np.asarray(modality)
st.caption(f"Kind `{kind}`: {len(kind_q)} queries ({', '.join(sorted(set(mod[kind_q])))}) × {len(kind_k)} keys "
           f"({', '.join(sorted(set(mod[kind_k])))}) · {n_layers} layers × {n_heads} heads · "
           + ("causal rows: each sums to 1 over the keys up to its own token" if generative
              else "rows sum to 1 over the keys"))

direction = url_choice("Direction", list(DIRECTIONS), param="dir", key="att_dir", omit_default=True, widget="radio",
                       horizontal=True, help="attends to: the token's row (where its attention goes); attended by: "
                                             "its column (how much each query puts on it).")
verb_phrase = "attends to" if direction == "attends to" else "is attended by"

drop_sinks = url_flag("Leave attention sinks out", param="nosink", key="att_nosink",
                      help="Attention sinks take a large share of attention whatever the content (often the first "
                           "token). Leave them out: their weights become 0 and every row is renormalized to sum to 1 "
                           "over the other keys, in every chart below.")
st.caption(sink_line(sinks_at(store.location, reader.name, eid, kind, layer, generative), layer, drop_sinks))


def shown_attention(lyr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix, query_index, key_index) of the chosen head at layer ``lyr`` (``read_attention``), with
    that layer's sinks left out when asked."""
    m, qi, ki = read_attention(store.location, reader.name, eid, kind, lyr, head)
    if drop_sinks:
        m = without_sinks(m, sinks_at(store.location, reader.name, eid, kind, lyr, generative).mask)
    return m, qi, ki


matrix, qidx, kidx = shown_attention(layer)  # this layer's rows
q_mods, k_mods = mod[qidx], mod[kidx]
if len(qidx) > len(kind_q):
    st.caption(f"Layer {layer}{'' if head == MEAN else f', head {head}'} was recorded in full (`record --full-layers`): "
               f"every token's row, {len(qidx)} queries; the other layers keep the kind's {len(kind_q)}.")
# Tokens on the axis this direction reads them from.
own_axis = qidx if direction == "attends to" else kidx
other_mods = set(k_mods if direction == "attends to" else q_mods)


def matrix_chart(matrix: np.ndarray, qi: np.ndarray, ki: np.ndarray, title: str, keep_q: list[str], keep_k: list[str]):
    data = frame(matrix_rows(matrix, qi, ki, tokens, modality, query_keep=np.isin(mod[qi], keep_q),
                             key_keep=np.isin(mod[ki], keep_k)))
    return charts.attention_matrix(data, title=title), data


OVERLAY_WIDTH = 360  # px; drawn at this width (width="content"), so the picture keeps its proportions
PICKER_WIDTH = 300  # px: the patch picker shares the row with the bars (2 : 3 of the page)


def overlay_chart(image: np.ndarray, boxes: dict, opacity: float, smooth: bool, title: str):
    bdf = pd.DataFrame({k: v for k, v in boxes.items()})
    bdf["label"] = [tokens[t] for t in bdf["token"]]
    chart = charts.overlay(image, bdf[["x0", "y0", "x1", "y1"]].to_numpy(), bdf["weight"].to_numpy(),
                           tokens=bdf["token"].to_numpy(), labels=bdf["label"], title=title, opacity=opacity,
                           smooth=smooth, width=OVERLAY_WIDTH)
    return chart, bdf


def bars_chart(rows: pd.DataFrame, title: str):
    return charts.token_bars(rows["label"], rows["weight"].to_numpy(), rows["modality"], title=title)


head_label = ("mean over heads" if head == MEAN else f"head {head}") + (" · sinks left out" if drop_sinks else "")
ROW_MODES = {"generating": "the step that generated it", "query": "its own row"}


def token_name(t: int) -> str:
    return f"{tokens[t]} (#{t})" + (" · answer" if role[t] == "answer" else "")
tab_matrix, tab_text, tab_image = st.tabs(["Matrix", "Text token → image", "Image patch → text"])

# ---- full matrix -----------------------------------------------------------------------------
with tab_matrix:
    f1, f2, f3 = st.columns([2, 2, 1])
    q_all, k_all = sorted(set(q_mods)), sorted(set(k_mods))
    keep_q = f1.multiselect("Query tokens", q_all, default=q_all, key=f"att_keepq_{kind}")
    keep_k = f2.multiselect("Key tokens", k_all, default=k_all, key=f"att_keepk_{kind}")
    if not keep_q or not keep_k:
        st.info("Choose at least one query and one key modality.")
    else:
        def matrix_frame(lyr: int) -> None:
            st.altair_chart(matrix_chart(*shown_attention(lyr), f"{kind} · layer {lyr} · {head_label}", keep_q, keep_k)[0],
                            width="content")

        playing = play_layers("att_play", n_layers, matrix_frame, container=f3,
                              help="Draw every layer in turn (the slider stays where it is).")
        chart, data = matrix_chart(matrix, qidx, kidx, f"{kind} · layer {layer} · {head_label}", keep_q, keep_k)
        if not playing:
            st.altair_chart(chart, key="att_matrix_chart", width="content")
        with st.expander("Download"):
            export_buttons(chart, data, f"attention_{kind}_L{layer}_{head}", key="att_matrix_export")

image = example_image(store.location, reader.name, eid)
# A tiled image (SmolVLM / Idefics3): tile tokens and global-image tokens cover the same pixels, so the
# overlays draw one part at a time (or both, the global image's boxes over the tiles').
parts = image_parts(tok["token_grid"], modality)
part = None
if parts is not None:
    with tab_text:  # drawn at the top of the overlay tab; the patch tab follows the same choice
        part = url_choice("Image tokens", list(IMAGE_PARTS), param="part", key="att_part", omit_default=True,
                          widget="radio", horizontal=True,
                          help="The image was split into tiles plus a downscaled global image: each token's box is "
                               "its area in the source image, so tile and global tokens overlap. The patch tab "
                               "follows this choice.")


def in_part(att):
    """``att`` restricted to the chosen part of a tiled image (the words' entries stay)."""
    if part is None:
        return att
    keep = np.concatenate([parts[part], np.flatnonzero(mod != "image")])
    return only_tokens(att, keep)

# ---- text token -> image overlay -------------------------------------------------------------
with tab_text:
    # Question words, and every generated token (the end-of-sequence token too: a special token).
    text_tokens = [int(t) for t in own_axis if mod[t] == "text" or role[t] == "answer"]
    if not text_tokens or "image" not in other_mods:
        st.info(f"In kind `{kind}`, no text token {verb_phrase} image tokens. "
                + ("Pick a cross or joint kind." if len(kinds) > 1 else ""))
    else:
        answer_tokens = [t for t in text_tokens if role[t] == "answer"]
        o1, o2, o3 = st.columns([2, 1, 1])
        token = url_choice("Token (question word or answer)" if answer_tokens else "Text token", text_tokens,
                           param="token", key="att_token", container=o1, format_func=token_name,
                           default=answer_tokens[0] if answer_tokens else None)
        smooth = o2.radio("Overlay", ["patches", "smoothed"], horizontal=True, key="att_smooth") == "smoothed"
        opacity = o3.slider("Opacity", 0.0, 1.0, 0.7, 0.05, key="att_opacity")
        row_token, named = token, f"“{tokens[token]}”"
        before = generating_row(token, role) if direction == "attends to" else None
        if before is not None and before in set(qidx.tolist()):
            row_mode = url_choice("Answer token's row", list(ROW_MODES), param="arow", key="att_arow",
                                  omit_default=True, widget="radio", horizontal=True, format_func=ROW_MODES.get,
                                  help="A causal model chooses token i from the row of token i - 1: 'the step that "
                                       "generated it' shows where the model looked while choosing this token; "
                                       "'its own row' shows this token as a query (what chose the next one).")
            if row_mode == "generating":
                row_token = before
                named = f"generating “{tokens[token]}” (row of #{before} “{tokens[before]}”)"

        def row_of(m: np.ndarray, qi: np.ndarray, ki: np.ndarray):
            return token_attention(m, qi, ki, row_token, direction)

        att = row_of(matrix, qidx, kidx)
        boxes = overlay_boxes(in_part(att), tok["token_boxes"], modality)
        img_mass = float(boxes["weight"].sum())
        verb = "puts on" if direction == "attends to" else "gets from"
        chart, bdf = overlay_chart(image, boxes, opacity, smooth,
                                   f"{named} {direction} image · {kind} · layer {layer} · {head_label}")
        left, right = st.columns([3, 2])
        with left:
            def overlay_frame(lyr: int) -> None:
                b = overlay_boxes(in_part(row_of(*shown_attention(lyr))), tok["token_boxes"], modality)
                st.altair_chart(overlay_chart(image, b, opacity, smooth, f"{named} · layer {lyr}")[0],
                                width="content")

            if not play_layers("att_play_overlay", n_layers, overlay_frame):
                st.altair_chart(chart, key="att_overlay_chart", width="content")
        with right:
            st.caption(f"{named} {verb} image tokens {img_mass:.1%} of its attention"
                       + (f" ({part})" if part is not None else "")
                       if direction == "attends to" else
                       f"Image tokens' attention on “{tokens[token]}” (column of the matrix)")
            img_att = restrict(in_part(att), modality, "image")
            st.dataframe(pd.DataFrame([{"token": tokens[t], "weight": w} for t, w in top_k(img_att, 8)]),
                         hide_index=True, key="att_topk_image")
        if generative and direction == "attends to":
            words = prompt_part(att, modality, row_token)
            rows = pd.DataFrame({"token": words.tokens, "label": [token_name(int(t)) for t in words.tokens],
                                 "modality": [modality[t] for t in words.tokens], "weight": words.weights})
            prompt_chart = bars_chart(rows, f"{named} {direction} the prompt (its words and special tokens) · "
                                            f"layer {layer} · {head_label}")
            st.altair_chart(prompt_chart, key="att_prompt_bars")
            st.caption(f"The rest of the row: {float(words.weights.sum()):.1%} on the prompt's words, special tokens "
                       "and the answer's earlier tokens (keys after the row's own token are masked).")
        with st.expander("Download"):
            export_buttons(chart, bdf, f"overlay_{kind}_L{layer}_{head}_tok{token}",
                           key="att_overlay_export")

# ---- image patch -> text bars ----------------------------------------------------------------
def patch_from_grid(grid, modality, row_key: str, col_key: str) -> None:
    """on_change of the Row / Column boxes: the patch at (row, column) goes to ?patch=."""
    hit = patch_at(grid, modality, int(st.session_state[row_key]), int(st.session_state[col_key]))
    if hit is not None:
        qp_set(patch=int(hit))


@st.fragment
def patch_to_text() -> None:
    """A click on a patch (or the Row / Column boxes) redraws this tab only (a fragment), not the page."""
    image_tokens = [int(t) for t in own_axis if mod[t] == "image" and (part is None or t in set(parts[part]))]
    if not image_tokens and generative and direction == "attends to" and "image" in set(k_mods):
        st.info("This run recorded the attention rows of the prompt's words and the answer, not those of the image "
                "tokens (they would hold nearly all of a full map), at this layer and head. Choose **attended by** "
                "to see how much each word puts on a patch, or record chosen layers in full (`record "
                "--full-layers`).")
    elif not image_tokens or "text" not in other_mods:
        st.info(f"In kind `{kind}`, no image token {verb_phrase} text tokens. "
                + ("Pick a cross or joint kind." if len(kinds) > 1 else ""))
    else:
        cur = qp_get("patch", None, int)
        cur = cur if cur in image_tokens else image_tokens[0]
        shape = grid_shape(tok["token_grid"], modality)
        left, right = st.columns([2, 3])
        with left:
            # Click a patch on the image (click_to_url writes ?patch=), or pick it by grid cell / list.
            grid_chart = charts.overlay(image, np.asarray(tok["token_boxes"])[image_tokens], None, tokens=image_tokens,
                                        labels=[f"{tokens[t]} (#{t})" for t in image_tokens], title="click a patch",
                                        width=PICKER_WIDTH, select=charts.PATCH_PARAM, highlight=cur)
            st.altair_chart(grid_chart, on_select=click_to_url("att_grid", charts.PATCH_PARAM, "token", "patch"),
                            selection_mode=charts.PATCH_PARAM, key="att_grid", width="content")
            if shape is not None:
                r0, c0 = (int(x) for x in tok["token_grid"][cur])
                for k, v in (("att_patch_row", r0), ("att_patch_col", c0)):
                    if st.session_state.get(k) != v:  # the boxes show the chosen patch, however chosen
                        st.session_state[k] = v
                g1, g2 = st.columns(2)
                args = (tok["token_grid"], modality, "att_patch_row", "att_patch_col")
                g1.number_input("Row", 0, shape[0] - 1, key="att_patch_row", on_change=patch_from_grid, args=args)
                g2.number_input("Column", 0, shape[1] - 1, key="att_patch_col", on_change=patch_from_grid, args=args)
            else:
                cur = url_choice("Region", image_tokens, param="patch", key="att_region", default=cur,
                                 format_func=lambda t: f"{tokens[t]} (#{t})")
        att = restrict(token_attention(matrix, qidx, kidx, cur, direction), modality, "text")
        rows = pd.DataFrame({"token": att.tokens, "label": [f"{tokens[t]} (#{t})" for t in att.tokens],
                             "modality": [modality[t] for t in att.tokens], "weight": att.weights})
        with right:
            chart = bars_chart(rows, f"{tokens[cur]} {direction} text · {kind} · layer {layer} · {head_label}")
            st.altair_chart(chart, key="att_bars_chart")
            with st.expander("Download"):
                export_buttons(chart, rows, f"patch_{kind}_L{layer}_{head}_tok{cur}", key="att_bars_export")


with tab_image:
    patch_to_text()
