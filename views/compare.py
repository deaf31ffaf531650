"""Compare two recorded runs side by side: accuracy, disagreements, head statistics per relative
depth in the network, and for one shared example the answers, head summaries, a word's attention on
the image and hidden-state projections. Run A is the sidebar run; run B is ``?run2=``; the example is
``?ex=``. Head statistics are read through ``as_defined``: a statistic a kind cannot vary is NaN and
left out of every profile; cross-modal / intra-modal are unweighted means of their directions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import charts
from analysis import compare as cmp
from analysis.attention_views import IMAGE_PARTS, image_parts
from analysis.depth import depth_bins, kind_depths, nearest_layer
from analysis.head_stats import STAT_LABELS, as_defined, not_applicable, not_applicable_message
from analysis.projections import project_layers
from ui.charts import export_buttons
from ui.state import (example_image, example_tokens, freshness, open_store, page_context, pick_example,
                      summaries_table, verdict)
from ui.url import qp_get, row_to_url, url_choice

ALL_KINDS = "all kinds (mean where it applies)"


def percent(v: float) -> str:
    """The page's one format for an accuracy: 97.6%."""
    return "n/a" if np.isnan(v) else f"{100 * v:.1f}%"


PERCENT_COLUMN = "%.1f%%"  # the same format in a table column (values in percent)

ctx = page_context()
store, reader_a = ctx.store, ctx.reader
runs = store.runs()
st.title("Compare")
others = [r for r in runs if r != reader_a.name]
if not others:
    st.warning("This store holds one run. Record a second model over the same examples, e.g. "
               "`python cli.py record --model A --model B --out STORE`, to compare them.")
    st.stop()
run_b = url_choice("Compare with (run B)", others, param="run2", key="run2_select", container=st.sidebar)
reader_b = store.run(run_b)
name_a, name_b = reader_a.name, reader_b.name
loc = store.location

st.caption(f"A = **{name_a}** · B = **{name_b}**")


# ---- cached reads ------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def _summaries(location: str, run: str, fresh: int):
    return open_store(location).run(run).summaries()


@st.cache_data(show_spinner=False, max_entries=64)
def _stats_all(location: str, run: str, kind: str, ids: tuple[str, ...], fresh: int):
    _, names, values = open_store(location).run(run).head_stats_all(kind, ids)
    return names, as_defined(kind, names, values)


@st.cache_data(show_spinner=False, max_entries=256)
def _example_stats(location: str, run: str, eid: str):
    stored = open_store(location).run(run).head_stats(eid)
    return {kind: (names, as_defined(kind, names, values)) for kind, (names, values) in stored.items()}


def _layers(reader, eid: str) -> dict[str, int]:
    """Layers of every attention kind of the run (from one example's statistics): places kinds in the network."""
    return {k: int(np.asarray(v).shape[1]) for k, (_, v) in _example_stats(loc, reader.name, eid).items()}


def _kinds(reader) -> list[str]:
    kinds = reader.attention_kinds()
    if not kinds:  # provenance without the list: look at the first example
        ids = reader.example_ids()
        kinds = reader.attention_kinds(ids[0]) if ids else []
    return kinds


def _label(stat: str) -> str:
    return STAT_LABELS.get(stat, stat)


sum_a = _summaries(loc, name_a, freshness(reader_a))
sum_b = _summaries(loc, name_b, freshness(reader_b))
join = cmp.join_examples(sum_a, sum_b)
st.caption(join.statement())
if not join.shared_ids:
    st.warning(f"Runs {name_a} and {name_b} share no example (examples join on the hash of image and question). "
               "Record both models over the same data set, e.g. `python cli.py record --model A --model B ...`.")
    st.stop()
shared = set(join.shared_ids)
by_a = {s.example_id: s for s in sum_a}
by_b = {s.example_id: s for s in sum_b}
shared_a = [by_a[i] for i in join.shared_ids]
shared_b = [by_b[i] for i in join.shared_ids]

kinds_a, kinds_b = _kinds(reader_a), _kinds(reader_b)
kind_cmp = cmp.compare_kinds(kinds_a, kinds_b)
st.info(kind_cmp.statement(name_a, name_b))

# The example tab comes first: a disagreement link (?ex=) reloads the page onto it.
tab_example, tab_data = st.tabs(["Example", "Data set"])

# ---- data set level ----------------------------------------------------------------------------
with tab_data:
    acc_a, acc_b = cmp.accuracy(shared_a), cmp.accuracy(shared_b)
    c1, c2 = st.columns(2)
    c1.metric(f"Accuracy of A ({name_a})", percent(acc_a.overall),
              help=f"over {acc_a.n_labelled} labelled shared examples")
    c2.metric(f"Accuracy of B ({name_b})", percent(acc_b.overall),
              help=f"over {acc_b.n_labelled} labelled shared examples")
    answers = sorted(set(acc_a.per_answer) | set(acc_b.per_answer))
    acc_table = pd.DataFrame({
        "true answer": answers,
        "examples": [acc_a.per_answer.get(a, (0, 0))[1] for a in answers],
        f"accuracy A ({name_a})": [100 * acc_a.of(a) for a in answers],
        f"accuracy B ({name_b})": [100 * acc_b.of(a) for a in answers],
    })
    st.subheader("Accuracy per true answer")
    st.dataframe(acc_table, hide_index=True, key="accuracy_table",
                 column_config={c: st.column_config.NumberColumn(format=PERCENT_COLUMN)
                                for c in acc_table.columns if c.startswith("accuracy")})
    with st.expander(f"All {len(join.shared_ids)} shared examples"):
        st.dataframe(pd.DataFrame([{
            "example_id": a.example_id, "question": a.question, "true answer": a.label,
            "answer A": a.answer, "confidence A": a.confidence, "answer B": b.answer, "confidence B": b.confidence,
            "agree": cmp.same_answer(a.answer, b.answer)} for a, b in zip(shared_a, shared_b)]),
            hide_index=True, key="shared_table")

    st.subheader("Where the models disagree")
    dis = cmp.disagreements(shared_a, shared_b, join.shared_ids)
    st.caption(f"{len(dis)} of {len(join.shared_ids)} shared examples get different answers, "
               "largest confidence gap first. Pick a row to open that example in the Example tab.")
    if dis:
        dis_table = pd.DataFrame([{
            "example_id": d.example_id, "question": d.question, "true answer": d.label,
            "answer A": d.answer_a, "confidence A": d.confidence_a,
            "answer B": d.answer_b, "confidence B": d.confidence_b, "gap": d.gap,
        } for d in dis])
        # The picked row's example goes to ?ex= before the page reruns, so the Example tab opens it.
        st.dataframe(dis_table, hide_index=True, key="disagreements_table", selection_mode="single-row",
                     on_select=row_to_url("disagreements_table", list(dis_table["example_id"]), "ex"),
                     column_config={"example_id": None, "gap": st.column_config.NumberColumn(format="%.3f")})
        if qp_get("ex") in set(dis_table["example_id"]):
            picked = dis_table[dis_table["example_id"] == qp_get("ex")].iloc[0]
            st.caption(f"Open in the Example tab: {picked['question']} (A {picked['answer A']}, "
                       f"B {picked['answer B']}).")

    st.subheader("Head statistics per relative depth")
    st.caption("Relative depth is the layer's position in the network: 0 is the first layer, 1 the last, so "
               "models of different depth line up. A dual-stream model's language and vision encoders sit side "
               "by side from 0 and its cross-modality layers after them. Line: mean over heads (and over the "
               "shared examples); band: ± one standard deviation over heads. Cross-modal is the unweighted mean "
               "of text → image and image → text, intra-modal of image → image and text → text (as "
               "VL-InterpreT). A statistic constant or undefined in a kind by construction (text → image of "
               "cross_l2v, whose keys are all image tokens, is always 1) is left out.")
    kind_options = list(kind_cmp.shared) + [ALL_KINDS]
    kind = st.selectbox("Attention kind", kind_options, key="compare_kind",
                        help="Kinds in both models, or every kind of each model pooled: for each statistic, the "
                             "heads of the model's kinds where it applies, at each position in the network.")

    def _profile(reader, model_kinds, ids):
        use = model_kinds if kind == ALL_KINDS else [kind]
        stats = {}
        for k in use:
            names, values = _stats_all(loc, reader.name, k, tuple(ids), freshness(reader))
            if values.size:
                stats[k] = (names, values)
        return cmp.depth_profile(stats, layers_per_kind=_layers(reader, ids[0])) if stats else None

    prof_a = _profile(reader_a, kinds_a, join.shared_ids)
    prof_b = _profile(reader_b, kinds_b, join.shared_ids)
    if prof_a is None or prof_b is None:
        st.warning("Head statistics are missing for " + " and ".join(
            n for n, p in ((name_a, prof_a), (name_b, prof_b)) if p is None) + "; re-record the run.")
    elif not (depth_rows := cmp.profile_rows(prof_a, f"A: {name_a}", kind)
              + cmp.profile_rows(prof_b, f"B: {name_b}", kind)):
        st.info(f"No head statistic varies in kind {kind} for either model: each is constant or undefined by "
                "construction (see the Head summary page for why).")
    else:
        for line in cmp.missing_statistics(prof_a, prof_b, f"A ({name_a})", f"B ({name_b})"):
            st.warning(line)
        depth_df = pd.DataFrame(depth_rows)
        depth_df["statistic"] = depth_df["stat"].map(_label)
        chart = charts.tagged(charts.depth_profiles(depth_df), "depth_chart")  # A blue, B orange
        st.altair_chart(chart, key="depth_chart")
        with st.expander("Chart data and downloads"):
            st.dataframe(depth_df.drop(columns=["statistic"]), hide_index=True, key="depth_table")
            export_buttons(chart, depth_df, f"compare_depth_{name_a}_{name_b}", key="depth_export")

# ---- one example -------------------------------------------------------------------------------
with tab_example:
    df_a = summaries_table(loc, name_a, freshness(reader_a))
    df_shared = df_a[df_a["example_id"].isin(shared)]
    eid = pick_example(df_shared, key="compare_example")
    if eid is None:
        st.stop()
    sa, sb = by_a[eid], by_b[eid]
    st.markdown(f"**Question:** {sa.question} · **true answer:** {sa.label if sa.label is not None else '—'}")
    cols = st.columns(2)
    for col, s, tag, name in ((cols[0], sa, "A", name_a), (cols[1], sb, "B", name_b)):
        col.markdown(f"**{tag} ({name}) answers:** {s.answer} ({s.confidence:.2f}) — {verdict(s.correct)}")

    # head summary of this example, side by side on relative depth
    st.subheader("Head summary")
    def _has(ex_stats, k, stat):
        names, vals = ex_stats[k]
        return stat in names and np.isfinite(vals[names.index(stat)]).any()

    ex_stats_of = {tag: _example_stats(loc, r.name, eid) for tag, r in (("A", reader_a), ("B", reader_b))}
    # Statistics that some kind of either model can vary (constants and undefined ones are not offered).
    stat_names = list(dict.fromkeys(n for ex in ex_stats_of.values() for k, (names, _) in ex.items() for n in names
                                    if _has(ex, k, n)))
    if not stat_names:
        st.warning("No head statistics stored for this example.")
    else:
        stat = url_choice("Statistic", stat_names, param="stat", key="compare_stat", format_func=_label,
                          help="Statistics that vary in some attention kind of either model. Cross-modal and "
                               "intra-modal are unweighted means of their two directions (as VL-InterpreT).")
        cols = st.columns(2)
        for col, reader, tag in ((cols[0], reader_a, "A"), (cols[1], reader_b, "B")):
            ex_stats = ex_stats_of[tag]
            kinds = list(ex_stats)
            # a kind where the statistic has values; else the shared or overlay kind, as before
            default = (next((k for k in kind_cmp.shared if k in kinds and _has(ex_stats, k, stat)), None)
                       or next((k for k in kinds if _has(ex_stats, k, stat)), None)
                       or next((k for k in kind_cmp.shared if k in kinds), None) or cmp.overlay_kind(kinds) or kinds[0])
            key = f"compare_hkind_{tag}"
            if st.session_state.get(key) not in kinds or (
                    st.session_state.get(f"{key}_for") != stat and not _has(ex_stats, st.session_state[key], stat)):
                st.session_state[key] = default  # a newly picked statistic opens a kind that has it
            st.session_state[f"{key}_for"] = stat
            k = col.selectbox(f"{tag}: attention kind", kinds, key=key)
            names, vals = ex_stats[k]
            if not _has(ex_stats, k, stat):
                col.info(not_applicable_message(k, stat)
                         or f"{_label(stat)} does not exist for {tag} ({reader.name}) in kind {k}.")
                continue
            m = vals[names.index(stat)]  # (layer, head)
            L, H = m.shape
            layers_here = _layers(reader, eid)
            lo, hi = depth_bins(k, layers_here)
            d = kind_depths(k, layers_here)
            rows = [{"layer": li, "head": h, "relative_depth": float(d[li]), "x0": float(lo[li]), "x1": float(hi[li]),
                     "value": float(m[li, h])} for li in range(L) for h in range(H)]
            heat = charts.tagged(charts.depth_heatmap(rows, value_title=_label(stat),
                                                      title=f"{tag}: {reader.name} · {k} · {L} layers"),
                                 f"compare_heat_{tag}")
            col.altair_chart(heat, key=f"compare_heat_{tag}")
            with col.expander("Download"):
                export_buttons(heat, pd.DataFrame(rows).assign(stat=stat, kind=k), f"compare_heat_{reader.name}_{k}",
                               key=f"compare_heat_{tag}_export")

    @st.fragment
    def at_depth() -> None:
        """A word's attention and the hidden states at one relative depth: the slider redraws this part only."""
        # the same word's attention on the image
        st.subheader("A word's attention on the image")
        rel = st.slider("Relative depth (0 = first layer, 1 = last)", 0.0, 1.0, 1.0, 0.05, key="compare_depth",
                        help="Position in the network; each model shows its layer nearest to it.")
        tok_a = example_tokens(loc, name_a, eid)
        tok_b = example_tokens(loc, name_b, eid)
        words = cmp.common_words(tok_a["tokens"], tok_a["modality"], tok_b["tokens"], tok_b["modality"])
        ov_a, ov_b = cmp.overlay_kind(reader_a.attention_kinds(eid)), cmp.overlay_kind(reader_b.attention_kinds(eid))
        if not words:
            st.info("The two models' token lists share no word for this example.")
        elif ov_a is None or ov_b is None:
            st.info("One model has no text-to-image attention kind (self or cross_l2v) to overlay.")
        else:
            word = st.selectbox("Word (present in both token lists)", words, key="compare_word")
            # A tiled image (SmolVLM / Idefics3): tile and global-image tokens cover the same pixels, so one
            # part is drawn at a time, as in the Attention view; the share in the caption is the whole image's.
            tiled = {tag: image_parts(tok["token_grid"], tok["modality"]) for tag, tok in (("A", tok_a), ("B", tok_b))}
            part = None
            if any(p is not None for p in tiled.values()):
                part = st.radio("Image tokens of the tiled model", list(IMAGE_PARTS), horizontal=True,
                                key="compare_part",
                                help="Its image was split into tiles plus a downscaled global image: tile and global "
                                     "tokens overlap in the picture, so one part is drawn at a time.")
            cols = st.columns(2)
            for col, reader, tok, okind, tag in ((cols[0], reader_a, tok_a, ov_a, "A"), (cols[1], reader_b, tok_b, ov_b, "B")):
                layers_here = _layers(reader, eid)
                L = layers_here[okind]
                layer = nearest_layer(rel, okind, layers_here)
                qi, ki = reader.attention_index(eid, okind)
                t = cmp.word_token(tok["tokens"], tok["modality"], word)
                try:
                    img_tok, w = cmp.word_to_image_row(reader.attention(eid, okind, layer), qi, ki, tok["modality"], t)
                except ValueError as e:
                    col.warning(f"{tag}: {e}")
                    continue
                # Where every key is an image token (cross_l2v) the share is 100% by construction: not a finding.
                share = (f"'{word}' sends {w.sum():.0%} of its attention to the image"
                         if not_applicable(okind, "text_to_image") is None
                         else f"{okind}'s keys are all image tokens, so each row sums to 1 over the image")
                if tiled[tag] is not None:
                    drawn = np.isin(img_tok, tiled[tag][part])
                    share += f" ({w[drawn].sum():.0%} to the {part} drawn)" if part != "both" else ""
                    img_tok, w = img_tok[drawn], w[drawn]
                pic = charts.overlay(example_image(loc, reader.name, eid), tok["token_boxes"][img_tok], w,
                                     tokens=img_tok, labels=[tok["tokens"][i] for i in img_tok], width=256)
                col.altair_chart(charts.tagged(pic, f"compare_overlay_{tag}"), key=f"compare_overlay_{tag}",
                                 width="content")
                col.caption(f"{tag}: {reader.name} · {okind} · layer {layer} (0–{L - 1}), "
                            f"relative depth {kind_depths(okind, layers_here)[layer]:.2f} · mean over heads · {share}")
                with col.expander("Download"):
                    boxes = np.asarray(tok["token_boxes"])[img_tok]
                    export_buttons(pic, pd.DataFrame({"token": img_tok, "x0": boxes[:, 0], "y0": boxes[:, 1],
                                                      "x1": boxes[:, 2], "y1": boxes[:, 3], "weight": w}),
                                   f"compare_overlay_{reader.name}_{okind}_L{layer}", key=f"compare_overlay_{tag}_export")

        # hidden states, PCA per model
        st.subheader("Hidden states (PCA per model)")
        cols = st.columns(2)
        for col, reader, tag in ((cols[0], reader_a, "A"), (cols[1], reader_b, "B")):
            tok = example_tokens(loc, reader.name, eid)
            parts, layers = [], []
            for stream in reader.hidden_streams(eid):
                full, tidx = reader.hidden(eid, stream)
                layer = cmp.layer_at(rel, full.shape[0])
                layers.append(f"{stream} {layer} (0–{full.shape[0] - 1})")
                parts.append((full[layer], tidx))
            if not parts:
                col.info(f"{tag}: no hidden states stored.")
                continue
            x = np.concatenate([p[0] for p in parts])
            idx = np.concatenate([p[1] for p in parts])
            proj = project_layers(x[None], idx, "pca")  # one layer of each model; its mean token removed
            pdf = pd.DataFrame({"x": proj.coords[0, :, 0], "y": proj.coords[0, :, 1], "token_index": idx,
                                "token": [tok["tokens"][i] for i in idx], "modality": [tok["modality"][i] for i in idx]})
            chart = charts.tagged(charts.projection(
                pdf, x_title=f"PC1 ({proj.explained[0]:.0%})", y_title=f"PC2 ({proj.explained[1]:.0%})",
                title=f"{tag}: {reader.name} · layer {', '.join(layers)}", select=None, height=300), f"compare_pca_{tag}")
            col.altair_chart(chart, key=f"compare_pca_{tag}")
            with col.expander("Download"):
                export_buttons(chart, pdf, f"compare_pca_{reader.name}", key=f"compare_pca_{tag}_export")

    at_depth()
