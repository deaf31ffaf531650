"""The Ask page with generative models (tiny random LLaVAs, every generative family's tiny model, and
the shipped demo): the answer token by token with each token's probability, the token picker, the
target choices, the maps of the picked token, and what a person sees after switching model or example
(never a token the current model did not generate)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "views" / "ask.py")


@pytest.fixture(scope="module")
def llava_dirs(tmp_path_factory) -> dict[str, Path]:
    from testkit.tiny_llava import make_tiny_llava

    base = tmp_path_factory.mktemp("ask_llava")
    return {"tinyA": make_tiny_llava(base / "a", seed=0), "tinyB": make_tiny_llava(base / "b", seed=1)}


@pytest.fixture
def app(llava_dirs, tiny_vilt_dir, monkeypatch):
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    models = [f"{name}=llava:{d}" for name, d in llava_dirs.items()] + [f"tiny=vilt:{tiny_vilt_dir}"]
    monkeypatch.setenv("VL_LENS_ASK_MODELS", ",".join(models))
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "1000")
    return AppTest.from_file(PAGE, default_timeout=180)


@pytest.fixture
def explained(monkeypatch) -> list:
    """Every attribution the page computes, as (method, spec, target, result)."""
    import analysis.attribution as attribution

    calls = []
    original = attribution.attribute

    def recording(adapter, spec, target, method, **params):
        result = original(adapter, spec, target, method, **params)
        calls.append((method, spec, target, result))
        return result

    monkeypatch.setattr(attribution, "attribute", recording)
    return calls


def quick_methods(at) -> None:
    """Two fast methods keep each run short on this shared machine (when the page offers methods)."""
    if [m for m in at.multiselect if m.key == "ask_methods"]:
        at.multiselect(key="ask_methods").set_value(["rollout", "attention"]).run()


def generated(source: str, example: int):
    """(answer text, [(token, probability)]) as the adapter itself generates them for a demo example."""
    from sources.easyvqa import EasyVQA

    ex = EasyVQA("test")[example * 9]  # the page lists every 9th question
    return generated_for(source, ex.image(), ex.question)


def generated_for(source: str, image, question: str):
    """As ``generated``, for any image and question (from the adapter's own Record)."""
    from adapters.registry import load_model
    from analysis.words import token_text

    record = load_model(source).run(image, question)
    idx = record.answer_indices()
    return record.prediction.top, [(token_text(record.tokens[i]), p)
                                   for i, p in zip(idx, record.prediction.token_probabilities)]


def heading(at) -> str:
    return next(h.value for h in at.subheader if h.value.startswith("Why"))


def tokens_widget(at):
    (pills,) = [p for p in at.pills if p.key.startswith("ask_token_")]
    return pills


def assert_shows(at, text: str, tokens: list[tuple[str, float]], picked: int) -> None:
    """The page shows this answer, these tokens with their probabilities, and explains token ``picked``."""
    assert not at.exception, at.exception
    pills = tokens_widget(at)
    assert len(pills.options) == len(tokens)
    for chip, (tok, p) in zip(pills.options, tokens):
        assert chip.startswith(f"{tok} · {p:.2f}"), (chip, tok, p)
    assert pills.value == picked
    assert heading(at) == f"Why '{tokens[picked][0]}' (token {picked + 1} of {len(tokens)} of '{text}')?"
    assert any(m.value.startswith(f"**Answer:** {text} (") for m in at.markdown)


def deletion_chart(at) -> str:
    import json

    specs = [json.dumps(json.loads(c.proto.spec), ensure_ascii=False) for c in at.get("vega_lite_chart")]
    (spec,) = [s for s in specs if '"removed"' in s]  # the deletion curves: probability over the share removed
    return spec


def test_tokens_with_probabilities_and_picking_another_token(app, llava_dirs, explained):
    text, tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    assert len(tokens) >= 3
    app.run()
    assert_shows(app, text, tokens, picked=0)  # the first answer token to start
    assert {(m, t.kind, t.token) for m, _s, t, _r in explained} >= {(m, "token", 0) for m in
                                                                   ("ig", "rollout", "relevance", "occlusion",
                                                                    "attention")}
    # every method's map and word bars, their agreement and the deletion curves
    assert len(app.get("vega_lite_chart")) == 5 * 2 + 2
    quick_methods(app)
    explained.clear()
    tokens_widget(app).set_value(1).run()
    assert_shows(app, text, tokens, picked=1)
    # the maps shown now explain token 2: each method ran on it, in the spec of the answer shown
    assert sorted(m for m, *_ in explained) == ["attention", "rollout"]
    for _m, spec, target, result in explained:
        assert (target.kind, target.token, target.unit) == ("token", 1, "logprob")
        assert spec.extra["generated"] == text
        assert result.target == target.label and target.text == spec.extra["answer_tokens"][0][1]
    assert f"p({tokens[1][0]})" in deletion_chart(app)
    explained.clear()
    tokens_widget(app).set_value(0).run()  # back to the first token: its maps come from the cache
    assert_shows(app, text, tokens, picked=0)
    assert explained == []
    shown = [m.value for m in app.markdown if m.value.startswith("**")][1:]
    assert shown == ["**Attention rollout** · " + shown[0].rsplit(" · ", 1)[1],
                     "**Raw attention (last layer)** · " + shown[1].rsplit(" · ", 1)[1]]
    tokens_widget(app).set_value(None).run()  # a second click on the picked chip keeps it picked
    assert_shows(app, text, tokens, picked=0)
    tokens_widget(app).set_value(len(tokens) - 1).run()
    assert_shows(app, text, tokens, picked=len(tokens) - 1)
    # Repeated tokens keep apart: the chip labels differ, so each click picks its own position.
    assert len(set(tokens_widget(app).options)) == len(tokens)


def test_switching_model_or_example_explains_only_what_the_model_generated(app, llava_dirs, tiny_vilt, explained):
    a_text, a_tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    b_text, b_tokens = generated(f"llava:{llava_dirs['tinyB']}", 0)
    assert [t for t, _ in a_tokens] != [t for t, _ in b_tokens], "two seeds, one answer: the test shows nothing"
    app.run()
    quick_methods(app)
    tokens_widget(app).set_value(2).run()
    assert_shows(app, a_text, a_tokens, picked=2)
    explained.clear()
    app.selectbox(key="ask_model").set_value("tinyB").run()
    assert_shows(app, b_text, b_tokens, picked=0)  # B's own first token, not A's third position
    assert explained and all(spec.extra["generated"] == b_text and target.token == 0
                             for _m, spec, target, _r in explained)
    app.selectbox(key="ask_model").set_value("tiny").run()  # a classifier: its answer table, no token chips
    assert not app.exception, app.exception
    assert not [p for p in app.pills if p.key.startswith("ask_token_")]
    assert heading(app).startswith("Why '")
    app.selectbox(key="ask_model").set_value("tinyA").run()
    assert_shows(app, a_text, a_tokens, picked=0)
    e_text, e_tokens = generated(f"llava:{llava_dirs['tinyA']}", 3)
    tokens_widget(app).set_value(1).run()
    app.selectbox(key="ask_example").set_value(3).run()
    assert_shows(app, e_text, e_tokens, picked=0)
    # an upload: the tokens the model generates for that image and question
    import io

    import numpy as np
    from PIL import Image

    pixels = np.full((48, 40, 3), 235, np.uint8)
    pixels[10:30, 8:28] = (30, 30, 200)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    tokens_widget(app).set_value(1).run()
    app.radio(key="ask_source").set_value("Upload").run()
    app.file_uploader(key="ask_upload").set_value(("s.png", buf.getvalue(), "image/png")).run()
    explained.clear()
    app.text_input(key="ask_q_upload").input("what shape is in the image?").run()
    u_text, u_tokens = generated_for(f"llava:{llava_dirs['tinyA']}", Image.fromarray(pixels), "what shape is in the image?")
    assert_shows(app, u_text, u_tokens, picked=0)
    assert explained and all(spec.extra["generated"] == u_text for _m, spec, _t, _r in explained)


def _generative_adapters() -> list[str]:
    from adapters.registry import ADAPTERS, adapter_class

    return [name for name in ADAPTERS if adapter_class(name).architecture == "generative"]


@pytest.mark.parametrize("name", _generative_adapters())
def test_every_generative_family_answers_token_by_token(name, tmp_path, monkeypatch):
    """Each generative adapter's tiny model (testkit/tiny_NAME.py) on the page: its own tokens, the
    first explained, then the second."""
    import importlib

    import streamlit as st

    kit = importlib.import_module(f"testkit.tiny_{name}")
    source = f"{name}:{getattr(kit, f'make_tiny_{name}')(tmp_path / name)}"
    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("VL_LENS_ASK_MODELS", f"tiny-{name}={source}")
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "1000")
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    quick_methods(at)
    text, tokens = generated(source, 0)
    assert_shows(at, text, tokens, picked=0)
    if len(tokens) > 1:
        tokens_widget(at).set_value(1).run()
        assert_shows(at, text, tokens, picked=1)
    # its maps, or (a family the attribution code does not reach yet) one line saying why there are none
    from adapters.registry import load_model
    from core.errors import AdapterError
    from sources.easyvqa import EasyVQA

    try:
        load_model(source).attribution_spec(EasyVQA("test")[0].image(), EasyVQA("test")[0].question)
        why = None
    except (AdapterError, NotImplementedError) as e:
        why = str(e)
    infos = [i.value for i in at.info]
    if why is None:
        assert len(at.get("vega_lite_chart")) == 2 * 2 + 2 and not infos
    else:
        assert infos == [f"No attribution method explains tiny-{name}'s answers here ({why}); its answer is shown "
                         "token by token."] and not at.get("vega_lite_chart")


def radio(at, suffix: str):
    return next(r for r in at.radio if r.key.startswith("ask_gtarget_") and r.key.endswith(suffix))


def test_target_choices_name_what_is_explained(app, llava_dirs, explained):
    text, tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    app.run()
    quick_methods(app)
    assert radio(app, "_kind").value == "token" and radio(app, "_unit").value == "logprob"
    explained.clear()
    radio(app, "_unit").set_value("logit").run()
    assert heading(app) == f"Why '{tokens[0][0]}' (token 1 of {len(tokens)} of '{text}', its logit)?"
    assert explained and all((t.kind, t.unit, t.token) == ("token", "logit", 0) for _m, _s, t, _r in explained)
    explained.clear()
    radio(app, "_kind").set_value("answer").run()
    assert not app.exception, app.exception
    assert heading(app) == f"Why '{text}'?"
    assert not [r for r in app.radio if r.key.endswith("_unit")]  # a whole answer sums log-probabilities
    assert explained and all((t.kind, t.text, len(t.slots)) == ("whole", text, len(tokens))
                             for _m, _s, t, _r in explained)
    radio(app, "_kind").set_value("contrast").run()
    assert any("Type the other answer" in i.value for i in app.info)
    assert not [h for h in app.subheader if h.value.startswith("Why")]  # nothing explained yet
    other = next(t for t in app.text_input if t.key.startswith("ask_gtarget_"))
    other.input(text).run()
    assert any("is the model's own answer" in w.value for w in app.warning)
    explained.clear()
    next(t for t in app.text_input if t.key.startswith("ask_gtarget_")).input("red circle").run()
    assert not app.exception, app.exception
    assert heading(app) == f"Why '{text}' rather than 'red circle'?"
    assert explained
    for _m, spec, target, _r in explained:  # both answers teacher-forced, the typed one subtracted
        assert spec.extra["answers"] == (text, "red circle")
        assert (target.kind, target.text, target.contrast_text) == ("contrast", text, "red circle")
    assert "p(A) − p(B)" in deletion_chart(app)


def test_the_shipped_llava_demo_is_offered_and_answers_token_by_token(monkeypatch):
    import streamlit as st
    from adapters.registry import MODELS
    from ui.models import ask_models

    if not (ROOT / MODELS["llava-easyvqa"][1] / "config.json").is_file():
        pytest.skip("the LLaVA demo weights are absent")
    assert "llava-easyvqa" in ask_models(online=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("VL_LENS_ASK_MODELS", "")
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.run()
    at.selectbox(key="ask_model").set_value("llava-easyvqa").run()
    text, tokens = generated("llava-easyvqa", 0)
    assert_shows(at, text, tokens, picked=0)
    assert tokens[-1][0] == "</s>"  # the demo stops: its end-of-sequence token is a token it generated


# ---- the pieces: token display, the answer's tokens, target labels, chip labels -----------------------
@pytest.mark.parametrize("raw,shown", [("\u2581red", "red"), ("\u0120blue", "blue"), ("red", "red"),
                                       ("\u2581", "␣"), ("\u010a", "⏎"), ("</s>", "</s>")])
def test_token_text(raw, shown):
    from analysis.words import token_text

    assert token_text(raw) == shown


def test_answer_tokens_of_the_spec_are_the_records(llava_dirs):
    """The chips come from the attribution spec: its generated tokens and probabilities are the ones
    the adapter's own Record holds; the whole answer's probability is their product."""
    import numpy as np

    from adapters.registry import load_model
    from analysis.generated import answer_tokens
    from analysis.words import token_text
    from sources.easyvqa import EasyVQA

    ex = EasyVQA("test")[0]
    adapter = load_model(f"llava:{llava_dirs['tinyA']}")
    adapter.max_new_tokens = 3
    record = adapter.run(ex.image(), ex.question)
    gen = answer_tokens(adapter.attribution_spec(ex.image(), ex.question), end_ids=adapter.eos_ids)
    idx = record.answer_indices()
    assert len(gen) == 3 and gen.tokens == tuple(token_text(record.tokens[i]) for i in idx)
    assert gen.probabilities == pytest.approx(record.prediction.token_probabilities, rel=1e-5)
    assert gen.special == tuple(record.modality[i] == "special" for i in idx)
    assert gen.probability == pytest.approx(float(np.prod(record.prediction.token_probabilities)), rel=1e-5)
    assert gen.text == record.prediction.top
    assert gen.stopped is (record.tokens[idx[-1]] in adapter.tokenizer.convert_ids_to_tokens(list(adapter.eos_ids)))
    with pytest.raises(ValueError, match="not the spec of a generated answer"):
        answer_tokens(adapter.attribution_spec(ex.image(), ex.question, answers=["red"]))


def test_target_labels_keys_and_chips():
    from analysis.generated import AnswerTokens
    from ui.answer_tokens import AnswerTarget, token_chips

    gen = AnswerTokens(text="a blue one", tokens=("a", "blue", "one", "blue"), probabilities=(0.5, 0.25, 0.904, 0.25),
                       special=(False,) * 4)
    assert AnswerTarget(kind="token", token=1).label(gen) == "'blue' (token 2 of 4 of 'a blue one')"
    assert AnswerTarget(kind="token", token=1, unit="logit").label(gen) == "'blue' (token 2 of 4 of 'a blue one', its logit)"
    assert AnswerTarget(kind="answer").label(gen) == "'a blue one'"
    assert AnswerTarget(kind="contrast", contrast="red").label(gen) == "'a blue one' rather than 'red'"
    # what analysis.attribution.resolve_target reads, each target its own cache entry
    assert AnswerTarget(kind="token", token=1).argument(gen) == (1, "logprob")
    assert AnswerTarget(kind="token", token=1, unit="logit").argument(gen) == (1, "logit")
    assert AnswerTarget(kind="answer").argument(gen) == ("whole", "logprob")
    assert AnswerTarget(kind="contrast", contrast="red").argument(gen) == ("a blue one rather than red", "logprob")
    with pytest.raises(ValueError):
        AnswerTarget(kind="answer", unit="logit")  # a whole answer sums log-probabilities
    assert token_chips(gen) == ["a · 0.50", "blue · 0.25", "one · 0.90", "blue · 0.25 · #4"]
    with pytest.raises(ValueError):
        AnswerTarget(kind="contrast")
    with pytest.raises(ValueError):
        AnswerTarget(kind="answers")
