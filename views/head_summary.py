"""Head summary: a layers x heads map of one head statistic, for one example or a set of examples.

Reads only the stored head statistics (never raw attention): one small array per example, or
one read of the run's consolidated index for a set. One example's attention sinks (analysis/sinks.py)
are the exception: flagging them, or leaving them out, reads that example's recorded rows.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

import charts
from analysis.attention_views import MEAN_COLUMN, head_summary, head_summary_rows, select_examples
from analysis.head_stats import STAT_LABELS, as_defined, not_applicable, not_applicable_message
from analysis.sinks import SINK_THRESHOLD, head_stats_without_sinks, layer_sinks
from ui.charts import export_buttons, frame, selected_points
from ui.state import freshness, open_store, page_context, pick_example, pick_kind, summaries_table
from ui.url import qp_get, url_choice, url_flag, url_text


# Stored statistics are read through as_defined: constants are NaN, pooled ones unweighted, in old stores too.
@st.cache_data(show_spinner=False, max_entries=64)
def example_stats(location: str, run: str, eid: str) -> dict:
    stored = open_store(location).run(run).head_stats(eid)
    return {kind: (names, as_defined(kind, names, values)) for kind, (names, values) in stored.items()}


@st.cache_data(show_spinner=False, max_entries=32)
def set_stats(location: str, run: str, kind: str, ids: tuple[str, ...], fresh: int):
    got, names, values = open_store(location).run(run).head_stats_all(kind, ids)
    return got, names, as_defined(kind, names, values)


def _recorded(location: str, run: str, eid: str, kind: str):
    reader = open_store(location).run(run)
    qi, ki = reader.attention_index(eid, kind)
    return reader, np.asarray(reader.attention_array(eid, kind)[:], np.float32), qi, ki, reader.tokens(eid)


@st.cache_data(show_spinner=False, max_entries=64)
def example_sinks(location: str, run: str, eid: str, kind: str, causal: bool) -> list[dict]:
    """One row per layer: the sinks of that layer (judged on the words' rows) and their shares."""
    _, values, qi, ki, tok = _recorded(location, run, eid, kind)
    judges = np.asarray(tok["modality"])[qi] == "text"
    rows = []
    for layer in range(len(values)):
        sinks = layer_sinks(values[layer], qi, ki, causal=causal, judges=judges)
        rows.append({"layer": layer, "sinks": ", ".join(f"{tok['tokens'][t]} (#{t}) {sinks.share(t):.0%}"
                                                        for t in sinks.tokens) or "—"})
    return rows


@st.cache_data(show_spinner=False, max_entries=64)
def example_stats_without_sinks(location: str, run: str, eid: str, kind: str, causal: bool):
    _, values, qi, ki, tok = _recorded(location, run, eid, kind)
    return head_stats_without_sinks(values, qi, ki, modality=tok["modality"], grid=tok["token_grid"], role=tok["role"],
                                    kind=kind, causal=causal)


STAT_HELP = ("Mean attention mass that queries of one modality put on keys of another. Cross-modal is the "
             "unweighted mean of text → image and image → text, intra-modal of image → image and text → text "
             "(as VL-InterpreT): each direction counts the same however many queries it has. Statistics this "
             "kind cannot vary (constant or undefined by construction) are not offered. Generative models add "
             "answer tokens → image and answer tokens → question words: for each generated token, the mass the "
             "decoding step that chose it (the row of the token before it) put on the image tokens or on the "
             "question's words, averaged over the answer's tokens.")


def not_applicable_line(kind: str, names) -> str | None:
    """One line naming the statistics kind ``kind`` cannot vary, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for n in names:
        reason = not_applicable(kind, n)
        if reason is not None:
            by_reason.setdefault(reason, []).append(STAT_LABELS.get(n, n))
    if not by_reason:
        return None
    return f"Not applicable for kind {kind}: " + "; ".join(f"{', '.join(s)} ({r})" for r, s in by_reason.items())


ctx = page_context()
store, reader = ctx.store, ctx.reader
st.title("Head summary")
df = summaries_table(store.location, reader.name, freshness(reader))
if df.empty:
    st.info("No committed examples in this run yet.")
    st.stop()

SCOPES = {"example": "One example", "set": "A set of examples"}
scope = url_choice("Scope", list(SCOPES), param="scope", key="hs_scope", omit_default=True, widget="radio",
                   format_func=SCOPES.get, horizontal=True)

eid = None
if scope == "example":
    eid = pick_example(df, key="hs_example")
    if eid is None:
        st.stop()
    stats_by_kind = example_stats(store.location, reader.name, eid)
    kinds = list(stats_by_kind)
    ids = (eid,)
else:
    c1, c2, c3 = st.columns([1, 1, 2])
    correctness = url_choice("Examples", ["all", "correct", "incorrect"], param="set", key="hs_set",
                             omit_default=True, container=c1)
    answers = ["any"] + sorted({a for a in df["label"].dropna()} | set(df["answer"].dropna()))
    answer = url_choice("Answer (true or predicted)", answers, param="answer", key="hs_answer", omit_default=True,
                        container=c2)
    text = url_text("Question contains", param="q", key="hs_text", container=c3)
    ids = tuple(select_examples(df.to_dict("records"), correctness=correctness,
                                answer=None if answer == "any" else answer, text=text))
    if not ids:
        st.warning("No example matches these filters.")
        st.stop()
    eid = qp_get("ex") if qp_get("ex") in ids else ids[0]
    kinds = reader.attention_kinds() or list(example_stats(store.location, reader.name, ids[0]))

if not kinds:
    st.warning("This run stores no head statistics (record it again with `python cli.py record`).")
    st.stop()
c1, c2, c3 = st.columns([1, 2, 1])
kind = pick_kind(kinds, key="hs_kind", container=c1,
                 help="Dual-stream models record several attention kinds (self, cross, ...).")

drop_sinks = False
if scope == "example":
    if kind not in stats_by_kind:
        st.warning(f"Example has no statistics for kind {kind!r}.")
        st.stop()
    names, values = stats_by_kind[kind]
    causal = reader.provenance.get("architecture") == "generative"
    drop_sinks = url_flag("Leave attention sinks out", param="nosink", key="hs_nosink",
                          help="Recompute this example's statistics from its recorded attention rows with each "
                               "layer's sinks left out and every row renormalized over the other keys.")
    if drop_sinks:
        names, values = example_stats_without_sinks(store.location, reader.name, eid, kind, causal)
        st.caption("Statistics recomputed from the recorded rows without each layer's sinks (rows renormalized). "
                   "A statistic whose query rows this run did not record (a generative run keeps the words' rows, "
                   "not the image tokens') is not offered.")
else:
    got_ids, names, values = set_stats(store.location, reader.name, kind, ids, freshness(reader))
    if not got_ids:
        st.warning(f"No stored statistics of kind {kind!r} for these examples.")
        st.stop()

# Offer the statistics this kind can vary and that have values here (no all-NaN chart with a "NaN" legend).
vals = np.asarray(values)
offered = [n for i, n in enumerate(names) if not_applicable(kind, n) is None and np.isfinite(vals[..., i, :, :]).any()]
asked = qp_get("stat")
if asked in names and asked not in offered:
    st.info(not_applicable_message(kind, asked) or f"{STAT_LABELS.get(asked, asked)} has no value for kind {kind} "
            "in these examples (it lacks the query or key tokens it needs).")
if not offered:
    st.info(f"No head statistic varies in kind {kind}: each is constant or undefined by construction. "
            + (not_applicable_line(kind, names) or ""))
    st.stop()
stat = url_choice("Statistic", offered, param="stat", key="hs_stat", container=c2,
                  format_func=lambda s: STAT_LABELS.get(s, s), help=STAT_HELP)
if (line := not_applicable_line(kind, names)) is not None:
    st.caption(line)
zscore = url_flag("z-score across all heads", param="z", key="hs_z", container=c3,
                  help="Standardize over every head of the model together (not per head).")

summary = head_summary(values, names, stat, zscore=zscore)
data = frame(head_summary_rows(summary))
L, H = summary.grid.shape
label = STAT_LABELS.get(stat, stat)
value_title = f"z({label})" if zscore else label
chart = charts.head_summary(data, value_title=value_title, title=f"{value_title} · kind {kind}", zscored=zscore,
                            mean_column=MEAN_COLUMN)

if scope == "example":
    st.caption(f"One example · {L} layers × {H} heads · click a cell to open that head in the attention view")
else:
    st.caption(f"Mean over **{summary.n_examples}** examples of {len(df)} · {L} layers × {H} heads · "
               "click a cell to open that head in the attention view")
event = st.altair_chart(chart, on_select="rerun", selection_mode=charts.CELL_PARAM, key="hs_chart", width="stretch")

best = summary.best_cell()
if best is not None:
    st.caption(f"Highest: layer {best[0]}, head {best[1]} ({summary.grid[best]:.3f})")

picked = selected_points(event, charts.CELL_PARAM)
if not picked:
    # Back from the attention view draws this chart afresh, with no selection: the next click on
    # any cell, the same one included, opens it again.
    st.session_state.pop("hs_last_open", None)
if picked:
    layer = int(picked[0]["layer"])
    head = picked[0]["head"]
    params = {k: v for k, v in {"store": qp_get("store"), "run": reader.name, "ex": eid, "kind": kind,
                                "layer": layer, "head": "mean" if head == MEAN_COLUMN else head,
                                "nosink": "1" if drop_sinks else None}.items()
              if v is not None}
    # Open the attention view once per new click (coming back here clears the chart's selection).
    if st.session_state.get("hs_last_open") != params:
        st.session_state["hs_last_open"] = params
        st.switch_page("views/attention.py", query_params=params)
    st.page_link("views/attention.py", label=f"Open layer {layer}, head {head} in the attention view",
                 icon=":material/visibility:", query_params=params)

with st.expander("Download"):
    export_buttons(chart, data.assign(stat=stat, kind=kind, zscored=zscore, n_examples=summary.n_examples),
                   f"head_summary_{kind}_{stat}", key="hs_export")

st.subheader("Attention sinks per layer")
if scope == "example":
    st.caption(f"Keys that receive on average at least {SINK_THRESHOLD:.0%} of the attention of the rows that see "
               "them (mean over heads), judged on the keys every word's row can see: tokens that take attention "
               "whatever the content, such as a generative model's first token. The share is the mean attention "
               "the token receives at that layer.")
    st.dataframe(example_sinks(store.location, reader.name, eid, kind, causal), hide_index=True, key="hs_sinks")
else:
    st.caption("Sinks are flagged for one example at a time (they are read from its attention rows): choose "
               "**One example**.")
