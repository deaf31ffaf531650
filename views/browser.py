"""Example browser: every recorded example of a run, with the model's answers; the entry point."""
from __future__ import annotations

import streamlit as st

from core.answers import normalize_answer
from ui.state import example_image, example_tokens, freshness, page_context, summaries_table, thumbnails, verdict
from ui.url import nav_params, qp_get, qp_set


def generated_verdict_line(answer: str, label: str, correct) -> str:
    """How a generated answer was judged: both texts after the VQA answer normalization."""
    return (f"{verdict(correct).capitalize()} by the VQA answer normalization (lower case, articles and punctuation "
            f"dropped, number words as digits): generated “{answer}” → “{normalize_answer(answer)}”, true "
            f"“{label}” → “{normalize_answer(label)}”.")


def answer_token_table(tok: dict, prediction: dict):
    """The generated tokens in order, each with the probability it had when chosen (greedy decoding)."""
    import pandas as pd

    answer = [i for i, r in enumerate(tok["role"]) if r == "answer"]
    probs = list(prediction.get("token_probabilities") or [])
    probs += [None] * (len(answer) - len(probs))
    return pd.DataFrame({"#": answer, "generated token": [tok["tokens"][i] for i in answer],
                         "kind": [tok["modality"][i] for i in answer], "probability": probs[:len(answer)]})

ctx = page_context()
store, reader = ctx.store, ctx.reader
st.title("Examples")
if not st.session_state.get("intro_hidden"):
    with st.container(border=True, key="intro"):
        st.markdown(
            "**VL-Lens shows what a vision-language model looks at.** Each run in the sidebar is one model "
            "recorded over a set of image + question examples. Start here: pick an example in the table "
            "(try **Correctness: incorrect** to see where the model goes wrong), then open it in "
            "**Head summary** (which heads link words and image), **Attention** (one head's map over the "
            "image), **Hidden states** (how tokens move layer by layer) or **Compare** (two models on one "
            "example). **Ask** takes your own image and question and explains the answer.")
        if st.button("Got it, hide this", key="intro_hide"):
            st.session_state["intro_hidden"] = True
            st.rerun()
df = summaries_table(store.location, reader.name, freshness(reader))
if df.empty:
    st.info("No committed examples in this run yet.")
    st.stop()

c1, c2, c3 = st.columns([1, 1, 2])
correctness = c1.selectbox("Correctness", ["all", "correct", "incorrect"], key="filter_correct")
answers = sorted({a for a in df["label"].dropna()} | set(df["answer"]))
answer = c2.selectbox("Answer (true or predicted)", ["any"] + answers, key="filter_answer")
text = c3.text_input("Question contains", key="filter_text")
view = df
if correctness != "all":
    view = view[view["correct"] == (correctness == "correct")]
if answer != "any":
    view = view[(view["label"] == answer) | (view["answer"] == answer)]
if text:
    view = view[view["question"].str.contains(text, case=False, regex=False)]

n_correct = int((df["correct"] == True).sum())  # noqa: E712
n_labelled = int(df["correct"].notna().sum())
acc = f"{n_correct / n_labelled:.1%}" if n_labelled else "n/a"
st.caption(f"{len(view)} of {len(df)} examples shown · accuracy {acc} over {n_labelled} labelled"
           + (" · answers are generated: correct when the generated text equals the true answer after the VQA "
              "answer normalization" if reader.provenance.get("architecture") == "generative" else ""))

# Thumbnails for the first rows only: one store read each, and a long table is scrolled, not seen.
MAX_THUMBNAILS = 300
table = view[["example_id", "question", "label", "answer", "confidence", "correct", "top_answers"]].rename(
    columns={"label": "true answer", "answer": "model answer"})
shown_ids = tuple(view["example_id"].iloc[:MAX_THUMBNAILS])
table.insert(0, "image", list(thumbnails(store.location, reader.name, shown_ids)) + [None] * (len(view) - len(shown_ids)))
event = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
                     key="examples_table", row_height=60,
                     column_config={"example_id": None, "image": st.column_config.ImageColumn("image", width="small"),
                                    "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0,
                                                                                  max_value=1.0, format="%.2f")})
rows = event.selection.rows if event and event.selection else []
if rows:
    eid = view.iloc[rows[0]]["example_id"]
    qp_set(ex=eid)
else:
    eid = qp_get("ex")
    if eid not in set(view["example_id"]):
        eid = view.iloc[0]["example_id"] if len(view) else None
if eid is None:
    st.info("No example matches these filters: choose another correctness or answer, or clear the question text.")
    st.stop()

row = df[df["example_id"] == eid].iloc[0]
tok = example_tokens(store.location, reader.name, eid)
generated = "answer" in tok["role"]  # a generative model: its answer is tokens of the sequence
st.subheader("Selected example")
left, right = st.columns([1, 2])
left.image(example_image(store.location, reader.name, eid), caption=row["question"], width=256)
with right:
    import pandas as pd

    st.markdown(f"**Question:** {row['question']}")
    st.markdown(f"**True answer:** {row['label'] if row['label'] is not None else '—'}")
    if generated:
        st.markdown(f"**Generated answer:** {row['answer']} ({row['confidence']:.2f}, the product of its tokens' "
                    f"probabilities) — {verdict(row['correct'])}")
        if row["label"] is not None:
            st.caption(generated_verdict_line(row["answer"], row["label"], row["correct"]))
        st.dataframe(answer_token_table(tok, reader.attrs(eid)["prediction"]), hide_index=True,
                     key="answer_tokens_table")
    else:
        st.markdown(f"**Model answer:** {row['answer']} ({row['confidence']:.2f}) — {verdict(row['correct'])}")
        top = pd.DataFrame({"answer": list(row["answers"]), "probability": list(row["probabilities"])})
        st.dataframe(top, hide_index=True, key="top_answers_table")

# A multiple-choice item (VCR style): every candidate was recorded as its own example of one group.
group = row.get("group") if "group" in row else None
if isinstance(group, str) and group:
    members = df[df["group"] == group]
    if len(members) > 1:
        st.subheader(f"Candidates of item {group}")
        st.caption("Each candidate answer was recorded as its own example (question [SEP] candidate); "
                   "the model's verdict on each, side by side.")
        for col, (_, cand) in zip(st.columns(len(members)), members.iterrows()):
            with col:
                text = cand["question"].split("[SEP]", 1)[-1].strip() if "[SEP]" in cand["question"] else cand["question"]
                marker = " (selected)" if cand["example_id"] == eid else ""
                st.markdown(f"**{text}**{marker}")
                st.markdown(f"model: {cand['answer']} ({cand['confidence']:.2f})")
                st.markdown(f"true: {cand['label'] if cand['label'] is not None else '—'}")
                st.page_link("views/attention.py", label="Attention", icon=":material/visibility:",
                             query_params=nav_params(run=reader.name, ex=cand["example_id"]))

# Page links navigate in place (a markdown link opened a new tab, a fresh session each).
st.markdown("**Open this example in:**")
for col, (file, title, icon) in zip(st.columns(4), (
        ("views/head_summary.py", "Head summary", ":material/grid_on:"),
        ("views/attention.py", "Attention", ":material/visibility:"),
        ("views/projections.py", "Hidden states", ":material/scatter_plot:"),
        ("views/compare.py", "Compare", ":material/compare:"))):
    col.page_link(file, label=title, icon=icon, query_params=nav_params(run=reader.name, ex=eid))
