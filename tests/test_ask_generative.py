"""The Ask page with generative models (tiny random LLaVAs, and the shipped demo): the answer token
by token with each token's probability, the token picker, the target choices, and what a person
sees after switching model or example (never a token the current model did not generate)."""
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


def generated(source: str, example: int):
    """(answer text, [(token, probability)]) as the adapter itself generates them for a demo example."""
    from adapters.registry import load_model
    from analysis.words import token_text
    from sources.easyvqa import EasyVQA

    ex = EasyVQA("test")[example * 9]  # the page lists every 9th question
    record = load_model(source).run(ex.image(), ex.question)
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


def test_tokens_with_probabilities_and_picking_another_token(app, llava_dirs):
    text, tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    assert len(tokens) >= 3
    app.run()
    assert_shows(app, text, tokens, picked=0)  # the first answer token to start
    tokens_widget(app).set_value(1).run()
    assert_shows(app, text, tokens, picked=1)
    tokens_widget(app).set_value(None).run()  # a second click on the picked chip keeps it picked
    assert_shows(app, text, tokens, picked=1)
    tokens_widget(app).set_value(len(tokens) - 1).run()
    assert_shows(app, text, tokens, picked=len(tokens) - 1)
    # Repeated tokens keep apart: the chip labels differ, so each click picks its own position.
    assert len(set(tokens_widget(app).options)) == len(tokens)


def test_switching_model_or_example_explains_only_what_the_model_generated(app, llava_dirs, tiny_vilt):
    a_text, a_tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    b_text, b_tokens = generated(f"llava:{llava_dirs['tinyB']}", 0)
    assert [t for t, _ in a_tokens] != [t for t, _ in b_tokens], "two seeds, one answer: the test shows nothing"
    app.run()
    tokens_widget(app).set_value(2).run()
    assert_shows(app, a_text, a_tokens, picked=2)
    app.selectbox(key="ask_model").set_value("tinyB").run()
    assert_shows(app, b_text, b_tokens, picked=0)  # B's own first token, not A's third position
    app.selectbox(key="ask_model").set_value("tiny").run()  # a classifier: its answer table, no token chips
    assert not app.exception, app.exception
    assert not [p for p in app.pills if p.key.startswith("ask_token_")]
    assert heading(app).startswith("Why '")
    app.selectbox(key="ask_model").set_value("tinyA").run()
    assert_shows(app, a_text, a_tokens, picked=0)
    e_text, e_tokens = generated(f"llava:{llava_dirs['tinyA']}", 3)
    app.selectbox(key="ask_example").set_value(3).run()
    assert_shows(app, e_text, e_tokens, picked=0)


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
    text, tokens = generated(source, 0)
    assert_shows(at, text, tokens, picked=0)
    if len(tokens) > 1:
        tokens_widget(at).set_value(1).run()
        assert_shows(at, text, tokens, picked=1)


def test_target_choices_name_what_is_explained(app, llava_dirs):
    text, tokens = generated(f"llava:{llava_dirs['tinyA']}", 0)
    app.run()
    kind = next(r for r in app.radio if r.key.startswith("ask_gtarget_"))
    assert kind.value == "token"
    kind.set_value("answer").run()
    assert not app.exception, app.exception
    assert heading(app) == f"Why '{text}'?"
    next(r for r in app.radio if r.key.startswith("ask_gtarget_")).set_value("contrast").run()
    assert any("Type the other answer" in i.value for i in app.info)
    assert not [h for h in app.subheader if h.value.startswith("Why")]  # nothing explained yet
    other = next(t for t in app.text_input if t.key.startswith("ask_gtarget_"))
    other.input(text).run()
    assert any("is the model's own answer" in w.value for w in app.warning)
    next(t for t in app.text_input if t.key.startswith("ask_gtarget_")).input("red circle").run()
    assert not app.exception, app.exception
    assert heading(app) == f"Why '{text}' rather than 'red circle'?"


def test_without_attribution_the_page_says_so_in_one_line(app):
    from adapters.base import Adapter
    from adapters.llava import LlavaAdapter

    if LlavaAdapter.attribution_spec is not Adapter.attribution_spec:
        pytest.skip("the LLaVA adapter explains its answers: the maps are tested instead")
    app.run()
    assert not app.exception, app.exception
    assert [i.value for i in app.info] == ["No attribution method explains tinyA's answers yet: its answer is "
                                           "shown token by token."]
    assert not app.get("vega_lite_chart")


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


def test_answer_tokens_of_a_record(llava_dirs):
    """The generated tokens of a tiny LLaVA's Record, in order, with the probabilities of its prediction;
    the whole answer's probability is their product."""
    import numpy as np

    from adapters.registry import load_model
    from analysis.generated import answer_tokens
    from sources.easyvqa import EasyVQA

    ex = EasyVQA("test")[0]
    adapter = load_model(f"llava:{llava_dirs['tinyA']}")
    adapter.max_new_tokens = 3
    record = adapter.run(ex.image(), ex.question)
    gen = answer_tokens(record)
    n_prompt = record.role.index("answer")
    assert gen.tokens == tuple(record.tokens[n_prompt:n_prompt + 3]) and len(gen) == 3
    assert gen.probabilities == record.prediction.token_probabilities
    assert gen.special == tuple(m == "special" for m in record.modality[n_prompt:])
    assert gen.probability == pytest.approx(float(np.prod(record.prediction.token_probabilities)))
    assert gen.text == record.prediction.top


def test_target_labels_keys_and_chips():
    from analysis.generated import AnswerTokens
    from ui.answer_tokens import AnswerTarget, token_chips

    gen = AnswerTokens(text="a blue one", tokens=("a", "blue", "one", "blue"), probabilities=(0.5, 0.25, 0.904, 0.25),
                       special=(False,) * 4)
    assert AnswerTarget(kind="token", token=1).label(gen) == "'blue' (token 2 of 4 of 'a blue one')"
    assert AnswerTarget(kind="answer").label(gen) == "'a blue one'"
    assert AnswerTarget(kind="contrast", contrast="red").label(gen) == "'a blue one' rather than 'red'"
    keys = {AnswerTarget(kind="token", token=0).key, AnswerTarget(kind="token", token=1).key,
            AnswerTarget(kind="answer").key, AnswerTarget(kind="contrast", contrast="red").key}
    assert len(keys) == 4  # each target its own cache entry
    assert token_chips(gen) == ["a · 0.50", "blue · 0.25", "one · 0.90", "blue · 0.25 · #4"]
    with pytest.raises(ValueError):
        AnswerTarget(kind="contrast")
    with pytest.raises(ValueError):
        AnswerTarget(kind="answers")
