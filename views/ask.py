"""Ask: upload an image (or pick a demo example), ask a question, see which pixels and words drove the answer.

Methods (analysis/attribution.py): ig, rollout, relevance, occlusion, attention, side by side, with
their agreement and deletion curves (analysis/faithfulness.py). Guardrails for a CPU host: the
image is downscaled first, long methods show a cost estimate and wait for a click, and every
result is cached by (model, example id, question, target, method, parameters), so moving a slider
recomputes nothing.

Generative models (adapter architecture "generative") answer in generated tokens: the page shows
them token by token with each token's probability (ui/answer_tokens.py: click a token, the first
to start), and explains that token, the whole answer, or the answer rather than another typed one,
with the same maps, shares, agreement and deletion curves (analysis.attribution's generation targets).

Models: ui.models.ask_models (the registry's models that can load here, plus any given as
VL_LENS_ASK_MODELS="name=ADAPTER:DIR_OR_HUB_ID,...").

The example id (core.ids.example_id_of: the hash of the image's pixels and the question) keys
every cached result and the "Explain the answer" choice, so a new image or question starts from
the model's new answer, never the previous one's target.
"""
from __future__ import annotations

import io
import os

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import charts
from analysis.words import group_word_pieces, vocabulary_notice
from core.errors import AdapterError, InputError
from analysis.attribution import METHODS, attribute, estimate_seconds, resolve_target, time_one_forward
from analysis.attribution.targets import is_generative, spec_answers
from analysis.faithfulness import deletion_curve, random_deletion_curve, rank_agreement
from analysis.generated import AnswerTokens, answer_tokens, record_answer_tokens
from core.ids import example_id_of
from ui.answer_tokens import pick_target, pick_token
from ui.compute import GATE, queue_notice
from ui.models import ask_models

MAX_SIDE = 512  # uploads are reduced to this before anything else (the models read 384 px or less)
# methods estimated above this many seconds wait for a click (VL_LENS_ASK_LONG_SECONDS overrides it)
LONG_SECONDS = float(os.environ.get("VL_LENS_ASK_LONG_SECONDS", "4") or 4)
N_DEMO_EXAMPLES = 40
METHOD_TITLES = {"ig": "Integrated Gradients", "rollout": "Attention rollout", "relevance": "Gradient-weighted relevance",
                 "occlusion": "Occlusion", "attention": "Raw attention (last layer)"}
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"]


# ---- models ---------------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def get_adapter(model_spec: str):
    from adapters.registry import load_model

    return load_model(model_spec)


# ---- cached computations (keys: model, example id, question, target, method, params) -------------------
@st.cache_data(show_spinner=False, max_entries=32)
def decode_upload(data: bytes, name: str) -> np.ndarray:
    from sources.images import decode_image

    return np.asarray(decode_image(data, name=name, max_side=MAX_SIDE), dtype=np.uint8)


@st.cache_data(show_spinner=False, max_entries=8)
def demo_examples(n: int) -> list[dict]:
    from sources import open_source

    src = open_source("easyvqa", split="test")
    rows = []
    for i in range(0, n * 9, 9):  # every 9th question: a spread of images
        ex = src[i]
        rows.append({"key": ex.source_key, "question": ex.question, "label": ex.label,
                     "image": np.asarray(ex.image().convert("RGB"), dtype=np.uint8)})
    return rows


@st.cache_resource(show_spinner=False, max_entries=16)
def get_spec(model: str, eid: str, question: str, answers: tuple | None, _image: np.ndarray):
    """The attribution spec. ``answers``: the answer texts a generative model's spec teacher-forces
    (None: the answer the model generates; classifiers: always None)."""
    adapter = get_adapter(model)
    with GATE.hold(model):
        if answers is None:
            return adapter.attribution_spec(Image.fromarray(_image), question)
        return adapter.attribution_spec(Image.fromarray(_image), question, answers=list(answers))


@st.cache_data(show_spinner=False, max_entries=64)
def recorded_answer(model: str, eid: str, question: str, _image: np.ndarray) -> tuple[AnswerTokens, tuple[str, ...]]:
    """A generative model's answer token by token from its Record, with the Record's notices: for a
    model whose attribution spec cannot be built (the page then explains nothing, and says why)."""
    with GATE.hold(model):
        record = get_adapter(model).run(Image.fromarray(_image), question)
    return record_answer_tokens(record), record.notices


def spec_for(adapter, model: str, eid: str, question: str, target: tuple, image: np.ndarray):
    """The spec ``target`` needs (``adapter``: the model's; get_spec builds it under the gate): a
    generative "A rather than B" teacher-forces both answers; any other target is read in the spec of
    the model's own answer."""
    answers = spec_answers(target[0]) if is_generative(adapter) else None
    return get_spec(model, eid, question, tuple(answers) if answers else None, image)


def resolve(adapter, spec, target: tuple):
    """The page's target key -> the analysis Target: classifiers (answer,) or (answer, other); generative
    models (token index / "whole" / "A rather than B", unit), from ui.answer_tokens.AnswerTarget.argument."""
    if is_generative(adapter):
        return resolve_target(adapter, spec, target[0], unit=target[1])
    return resolve_target(adapter, spec, target[0] if len(target) == 1 else list(target))


@st.cache_data(show_spinner=False, max_entries=64)
def top_answers(model: str, eid: str, question: str, _image: np.ndarray, k: int = 5) -> pd.DataFrame:
    with GATE.hold(model):
        pred = get_adapter(model).predict(Image.fromarray(_image), question, top_k=k)
    return pd.DataFrame({"answer": list(pred.answers), "probability": list(pred.probabilities)})


@st.cache_data(show_spinner=False, max_entries=64)
def forward_seconds(model: str, eid: str, question: str, target: tuple, _image: np.ndarray) -> float:
    with GATE.hold(model):
        adapter = get_adapter(model)
        return time_one_forward(adapter, spec_for(adapter, model, eid, question, target, _image))


@st.cache_data(show_spinner=False, max_entries=256)
def run_method(model: str, eid: str, question: str, target: tuple, method: str, params: tuple,
               _image: np.ndarray):
    adapter = get_adapter(model)
    with GATE.hold(model):  # one computation per model at a time: attribution hooks the shared model
        spec = spec_for(adapter, model, eid, question, target, _image)
        return attribute(adapter, spec, resolve(adapter, spec, target), method, **dict(params))


@st.cache_data(show_spinner=False, max_entries=256)
def deletion(model: str, eid: str, question: str, target: tuple, method: str, params: tuple,
             _image: np.ndarray):
    adapter = get_adapter(model)
    with GATE.hold(model):
        spec = spec_for(adapter, model, eid, question, target, _image)
        t = resolve(adapter, spec, target)
        if method == "random":
            return random_deletion_curve(adapter, spec, t)
        res = run_method(model, eid, question, target, method, params, _image)
        return deletion_curve(adapter, spec, t, res.region_scores, label=method)


# ---- drawing glue ---------------------------------------------------------------------------------
HEAT_WIDTH = 240  # px: fits a third of the page; drawn at this width (width="content") to keep the picture's shape


def heatmap(arr: np.ndarray, res, opacity: float) -> alt.LayerChart:
    return charts.attribution_overlay(arr, res, opacity=opacity, width=HEAT_WIDTH)


def word_bars(res, question: str) -> alt.Chart:
    return charts.attribution_word_bars(res, question)


def npz_bytes(res, **extra) -> bytes:
    arrays = res.as_arrays()
    arrays.update({k: np.array(str(v)) for k, v in extra.items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def csv_bytes(results: dict) -> bytes:
    rows = []
    for m, r in results.items():
        for i, (b, s) in enumerate(zip(r.region_boxes, r.region_scores)):
            rows.append({"method": m, "target": r.target, "kind": "region", "index": i, "label": f"region {i}",
                         "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "score": s})
        for i, (t, s) in enumerate(zip(r.tokens, r.token_scores)):
            rows.append({"method": m, "target": r.target, "kind": "word", "index": i, "label": t, "score": s})
    return pd.DataFrame(rows).to_csv(index=False).encode()


# ---- the page -------------------------------------------------------------------------------------
st.title("Ask")
st.caption("Upload an image or pick a demo example, ask a question, and see which pixels and words drove the answer.")

models = ask_models()
if not models:
    st.error("No model can be loaded here: the demo weights (demo/models/) are absent and the hub is offline. "
             "Train the demo model (`python -m demo.train_vilt`) or set VL_LENS_ASK_MODELS=name=ADAPTER:DIR.")
    st.stop()

c_model, c_src = st.columns([1, 1])
model_name = c_model.selectbox("Model", list(models), key="ask_model")
model = models[model_name]
source = c_src.radio("Image", ["Demo example", "Upload"], horizontal=True, key="ask_source")

image: np.ndarray | None = None
default_question = ""
if source == "Upload":
    up = st.file_uploader("Image (PNG, JPEG, WebP, GIF, BMP, TIFF)", type=UPLOAD_TYPES, key="ask_upload")
    if up is None:
        st.info("Upload an image to start.")
        st.stop()
    try:
        image = decode_upload(up.getvalue(), up.name)
    except InputError as e:
        st.error(str(e))
        st.stop()
    q_key = "ask_q_upload"
else:
    try:
        examples = demo_examples(N_DEMO_EXAMPLES)
    except Exception as e:  # the easy-VQA package missing or unreadable
        st.error(f"The demo examples cannot be read: {e}")
        st.stop()
    # Numbered: two examples may share question and answer, and a select box keeps its choice as the label.
    pick = st.selectbox("Demo example", range(len(examples)), key="ask_example",
                        format_func=lambda i: f"{i + 1}. {examples[i]['question']} [{examples[i]['label']}]")
    image = examples[pick]["image"]
    default_question = examples[pick]["question"]
    q_key = f"ask_q_{examples[pick]['key']}"

question = st.text_input("Question", value=default_question, key=q_key, max_chars=300)
if not question.strip():
    st.warning("Type a question about the image.")
    st.stop()

eid = example_id_of(image, question)


def classifier_target() -> tuple[tuple, str, str, str | None]:
    """The top answers and the answer to explain: (target key, how the heading names it, the deletion
    curves' y title, why nothing can be explained or None)."""
    try:
        with queue_notice():
            answers_df = top_answers(model, eid, question, image)
    except (AdapterError, InputError) as e:
        st.error(str(e))
        st.stop()
    left, right = st.columns([1, 2])
    left.image(image, caption=f"{image.shape[1]} × {image.shape[0]}", width=220)
    with right:
        st.markdown(f"**Answer:** {answers_df['answer'][0]} ({answers_df['probability'][0]:.2f})")
        st.dataframe(answers_df, hide_index=True, key="ask_answers",
                     column_config={"probability": st.column_config.ProgressColumn("probability", min_value=0.0,
                                                                                   max_value=1.0, format="%.3f")})
    all_answers = adapter.answers()
    top = answers_df["answer"][0]
    t1, t2, t3 = st.columns([2, 1, 2])
    # Keyed by model and example: another image or question starts from its own top answer.
    answer = t1.selectbox("Explain the answer", all_answers, index=all_answers.index(top),
                          key=f"ask_target_{model_name}_{eid}")
    contrast_on = t2.checkbox("rather than", key="ask_contrast_on")
    contrast = None
    if contrast_on:
        others = [a for a in all_answers if a != answer]
        second = answers_df["answer"][1] if len(answers_df) > 1 and answers_df["answer"][1] != answer else others[0]
        contrast = t3.selectbox("Other answer", others, index=others.index(second) if second in others else 0,
                                key=f"ask_contrast_{model_name}_{eid}_{answer}")
    if contrast is None:
        return (answer,), f"'{answer}'", f"p({answer})", None
    return (answer, contrast), f"'{answer} rather than {contrast}'", "p(A) − p(B)", None


def generative_target() -> tuple[tuple, str, str, str | None] | None:
    """The generated answer token by token, the picked token and what to explain about it (as
    ``classifier_target``); None while the target waits for input. The tokens come from the spec the
    maps are computed in, so the page explains only tokens the model generated."""
    unavailable = None
    try:
        with queue_notice():
            try:
                gen = answer_tokens(get_spec(model, eid, question, None, image), end_ids=getattr(adapter, "eos_ids", ()))
                notices = () if gen.stopped else (f"answer cut at {len(gen)} tokens (no end-of-sequence token "
                                                  "before the limit)",)
            except (AdapterError, NotImplementedError) as e:  # the answer still shows, token by token
                unavailable = str(e)
                gen, notices = recorded_answer(model, eid, question, image)
    except (AdapterError, InputError) as e:
        st.error(str(e))
        st.stop()
    for notice in notices:
        st.warning(notice)
    if not len(gen):
        st.warning("The model generated no token: there is nothing to explain.")
        st.stop()
    left, right = st.columns([1, 2])
    left.image(image, caption=f"{image.shape[1]} × {image.shape[0]}", width=220)
    with right:
        st.markdown(f"**Answer:** {gen.text} ({gen.probability:.3g})")
        # Keyed by model and example: another model or input starts from its own first token.
        token = pick_token(gen, key=f"ask_token_{model_name}_{eid}")
        target = pick_target(gen, token, key=f"ask_gtarget_{model_name}_{eid}")
    if target is None:
        return None
    y_title = {"token": f"p({gen.tokens[target.token]})", "answer": "p(answer)", "contrast": "p(A) − p(B)"}[target.kind]
    return target.argument(gen), target.label(gen), y_title, unavailable


try:
    with queue_notice():
        adapter = get_adapter(model)
except (AdapterError, InputError) as e:
    st.error(str(e))
    st.stop()
chosen = generative_target() if is_generative(adapter) else classifier_target()
if chosen is None:
    st.stop()
target, target_label, y_title, unavailable = chosen
st.subheader(f"Why {target_label}?")
if unavailable:
    st.info(f"No attribution method explains {model_name}'s answers here ({unavailable}); its answer is shown "
            "token by token.")
    st.stop()
try:
    with queue_notice():
        spec = spec_for(adapter, model, eid, question, target, image)
except (AdapterError, InputError) as e:
    st.error(str(e))
    st.stop()
for notice in spec.notices:
    st.warning(notice)
# The adapters flag a question made only of unknown words; a person also needs to know about some.
vocab = vocabulary_notice(group_word_pieces(spec.words, None, spec.word_is_special, question=question))
if vocab and not any("vocabulary" in n for n in spec.notices):
    st.warning(vocab)

m1, m2 = st.columns([3, 1])
# ?methods=ig,rollout opens the page with those methods (a link, or the load test's visitors)
url_methods = [m for m in (st.query_params.get("methods") or "").split(",") if m in METHODS]
methods = m1.multiselect("Methods", list(METHODS), default=url_methods or list(METHODS), key="ask_methods",
                         format_func=lambda m: f"{m} — {METHOD_TITLES[m]}")
steps = m2.slider("IG steps", 4, 300, 30, step=2, key="ask_steps",
                  help="More steps, smaller convergence delta: the demo ViLT needs about 200 for a delta near 10%.")
params_of = {m: (("n_steps", steps),) if m == "ig" else () for m in METHODS}

fwd = forward_seconds(model, eid, question, target, image)
estimates = {m: estimate_seconds(spec, m, fwd, **dict(params_of[m])) for m in methods}
approved = st.session_state.setdefault("ask_approved", set())
ready = []
for m in methods:
    key = (model, eid, question, target, m, params_of[m])
    if estimates[m] > LONG_SECONDS and key not in approved:
        c1, c2 = st.columns([3, 1])
        c1.info(f"{METHOD_TITLES[m]} will take about {estimates[m]:.0f} s on this machine "
                f"({fwd * 1000:.0f} ms per forward pass).")
        if c2.button(f"Run {m}", key=f"ask_run_{m}"):
            approved.add(key)
            st.rerun()
    else:
        ready.append(m)
st.caption("Estimated cost: " + ", ".join(f"{m} ≈ {estimates[m]:.1f} s" for m in methods)
           + ". Results are cached: changing the opacity or the layout recomputes nothing.")

results = {}
with st.spinner(f"Explaining {target_label}..."), queue_notice():
    for m in ready:
        try:
            results[m] = run_method(model, eid, question, target, m, params_of[m], image)
        except (AdapterError, InputError, NotImplementedError) as e:
            st.error(f"{METHOD_TITLES[m]}: {e}")
if not results:
    st.stop()

@st.fragment
def method_maps() -> None:
    """Each method's heatmap and word bars; the opacity slider redraws this part only (a fragment)."""
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.55, 0.05, key="ask_opacity")
    names = list(results)
    for row_start in range(0, len(names), 3):
        cols = st.columns(3)
        for col, m in zip(cols, names[row_start:row_start + 3]):
            r = results[m]
            with col:
                st.markdown(f"**{METHOD_TITLES[m]}** · {r.seconds:.2f} s")
                st.altair_chart(heatmap(image, r, opacity), key=f"ask_heat_{m}", width="content")
                st.altair_chart(word_bars(r, question), key=f"ask_words_{m}")
                share = r.image_share
                st.caption(f"Positive attribution: image {share:.0%} · words {1 - share:.0%}" if share == share
                           else "No positive attribution.")
                if r.delta is not None:
                    msg = (f"Convergence delta {r.delta:.3g} = {r.relative_delta:.1%} of f(x) − f(baseline) "
                           f"({r.score_difference:.3g}).")
                    (st.warning if r.delta_is_large else st.caption)(msg + (" Raise the IG steps." if r.delta_is_large
                                                                             else ""))
                st.download_button("Download .npz", npz_bytes(r, question=question, model=model_name),
                                   file_name=f"{m}_{eid[:8]}.npz", key=f"ask_dl_{m}")
                with st.expander("Notes"):
                    for note in r.notes:
                        st.caption(note)


method_maps()

st.download_button("Download all scores (.csv)", csv_bytes(results), file_name=f"attribution_{eid[:8]}.csv",
                   key="ask_dl_csv")

if len(results) >= 2:
    st.subheader("Do the methods agree?")
    ag = rank_agreement(results)
    st.altair_chart(charts.agreement(ag.methods, ag.matrix), key="ask_agreement", width="content")
    st.caption("Spearman rank correlation between the methods' region scores.")

st.subheader("Which map is faithful here?")
n_curve_forwards = 11 * (len(results) + 3)
curve_cost = n_curve_forwards * fwd
curves_key = (model, eid, question, target, tuple(sorted(results)))
if curve_cost > LONG_SECONDS and curves_key not in approved:
    if st.button(f"Compute deletion curves (about {curve_cost:.0f} s)", key="ask_run_curves"):
        approved.add(curves_key)
        st.rerun()
else:
    with queue_notice():
        curves = {m: deletion(model, eid, question, target, m, params_of[m], image) for m in results}
        curves["random"] = deletion(model, eid, question, target, "random", (), image)
    cdf = pd.concat([pd.DataFrame({"removed": c.fractions, "probability": c.probabilities, "order": m})
                     for m, c in curves.items()])
    st.altair_chart(charts.deletion_curves(cdf, y_title=y_title), key="ask_deletion")
    areas = pd.DataFrame({"order": list(curves), "area": [c.area for c in curves.values()]})
    areas["vs random"] = areas["area"] - curves["random"].area
    st.dataframe(areas, hide_index=True, key="ask_areas")
    st.caption("Regions are replaced by the baseline in each method's order; a lower area means the map found "
               "what the answer depends on. The random order (mean of 3) is the level to beat.")
