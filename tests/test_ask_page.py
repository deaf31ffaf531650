"""AppTest of the Ask page with the tiny ViLT: answers, heatmaps, bad uploads, caching."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "views" / "ask.py")


@pytest.fixture
def app(tiny_vilt_dir, monkeypatch):
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("VL_LENS_ASK_MODELS", f"tiny=vilt:{tiny_vilt_dir}")
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "1000")  # this shared host is slow: nothing waits for a click
    return AppTest.from_file(PAGE, default_timeout=180)


def charts(at):
    return at.get("vega_lite_chart")


def test_demo_example_shows_answers_and_heatmaps(app, tiny_vilt):
    from sources.easyvqa import EasyVQA

    app.run()
    assert not app.exception, app.exception
    ex = EasyVQA("test")[0]
    pred = tiny_vilt.predict(ex.image(), ex.question, top_k=5)
    table = app.dataframe[0].value
    assert list(table["answer"]) == list(pred.answers)
    np.testing.assert_allclose(table["probability"], pred.probabilities, rtol=1e-5)
    assert app.text_input(key="ask_q_easyvqa/test/0").value == ex.question
    # five methods x (heatmap + word bars) + agreement + deletion curves
    assert len(charts(app)) == 5 * 2 + 2
    md = " ".join(m.value for m in app.markdown)
    for title in ("Integrated Gradients", "Attention rollout", "Gradient-weighted relevance", "Occlusion"):
        assert title in md
    assert any("Positive attribution: image" in c.value for c in app.caption)
    assert any("Convergence delta" in c.value for c in app.caption) or any("Convergence delta" in w.value
                                                                           for w in app.warning)
    areas = app.dataframe[1].value
    assert set(areas["order"]) == {"ig", "rollout", "relevance", "occlusion", "attention", "random"}


def test_target_rather_than_and_no_recomputation_on_opacity(app, monkeypatch):
    import analysis.attribution as attribution

    calls = []
    original = attribution.attribute

    def counting(*a, **kw):
        calls.append(a[3] if len(a) > 3 else kw.get("method"))
        return original(*a, **kw)

    monkeypatch.setattr(attribution, "attribute", counting)
    app.run()
    app.multiselect(key="ask_methods").set_value(["rollout", "occlusion"]).run()
    assert not app.exception, app.exception
    first = len(calls)
    assert first >= 2
    app.slider(key="ask_opacity").set_value(0.9).run()
    assert len(calls) == first, "moving the opacity slider must not recompute"
    app.checkbox(key="ask_contrast_on").check().run()
    assert not app.exception, app.exception
    assert len(calls) > first, "a new target is a new computation"
    assert any("rather than" in h.value for h in app.subheader)


def test_long_methods_wait_for_a_click_with_a_cost_estimate(app, monkeypatch):
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "0")
    app.run()
    app.multiselect(key="ask_methods").set_value(["ig", "rollout"]).run()
    assert not app.exception, app.exception
    infos = " ".join(i.value for i in app.info)
    assert "Integrated Gradients will take about" in infos
    assert len(charts(app)) == 0  # nothing computed yet: every estimate is above 0 s
    app.button(key="ask_run_ig").click().run()
    assert not app.exception, app.exception
    md = " ".join(m.value for m in app.markdown)
    assert "Integrated Gradients" in md and "Attention rollout" not in md
    assert len(charts(app)) == 2


def _png_bytes(color=(200, 30, 30)) -> bytes:
    arr = np.full((48, 40, 3), 235, np.uint8)
    arr[10:30, 8:28] = color
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_good_and_bad(app):
    app.run()
    app.radio(key="ask_source").set_value("Upload").run()
    assert not app.exception
    assert any("Upload an image" in i.value for i in app.info)
    app.file_uploader(key="ask_upload").set_value(("notes.png", b"this is text, not pixels", "image/png")).run()
    assert not app.exception, app.exception
    assert any("is not an image" in e.value for e in app.error)
    app.file_uploader(key="ask_upload").set_value(("shape.png", _png_bytes(), "image/png")).run()
    assert not app.exception
    assert any("Type a question" in w.value for w in app.warning)
    app.text_input(key="ask_q_upload").input("what color is the shape?").run()
    assert not app.exception, app.exception
    assert len(app.dataframe[0].value) == 5
    assert len(charts(app)) >= 2


def test_no_loadable_model_is_a_clear_message(monkeypatch, tmp_path):
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("VL_LENS_ASK_MODELS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from adapters.registry import MODELS

    if any((ROOT / src / "config.json").exists() for _, src in MODELS.values()):
        pytest.skip("demo weights present: a model is available")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("No model can be loaded" in e.value for e in at.error)


def _answer_and_heading(at) -> tuple[str, str]:
    answer = next(m.value for m in at.markdown if m.value.startswith("**Answer:**"))
    return answer.split("**Answer:** ", 1)[1].rsplit(" (", 1)[0], next(h.value for h in at.subheader
                                                                      if h.value.startswith("Why"))


def test_heading_names_the_new_answer_after_each_change_of_input(app, monkeypatch):
    """Issue 18.1: after another demo example, another question or an upload, "Why '...'?" names the
    answer now shown, never the previous input's target."""
    from adapters.vilt import ViltAdapter
    from core.ids import example_id_of
    from store.schema import Prediction

    # The tiny random model answers "blue" to everything: its answers are rotated by the input, so
    # each input gets a top answer of its own (the page explains whatever the model says).
    original = ViltAdapter.predict

    def rotated(self, image, question, *, top_k=5):
        pred = original(self, image, question, top_k=top_k)
        k = int(example_id_of(image, question), 16) % len(pred.answers)
        return Prediction(answers=pred.answers[k:] + pred.answers[:k], probabilities=pred.probabilities)

    monkeypatch.setattr(ViltAdapter, "predict", rotated)
    app.run()
    app.multiselect(key="ask_methods").set_value(["rollout"]).run()
    seen = []

    def check(what):
        assert not app.exception, (what, app.exception)
        answer, heading = _answer_and_heading(app)
        assert heading == f"Why '{answer}'?", (what, heading, answer)
        seen.append(answer)

    check("first example")
    labels = app.selectbox(key="ask_example").options  # as shown
    assert len(set(labels)) == len(labels)  # demo examples sharing question and answer are told apart
    for i in range(1, 8):  # other demo examples (the tiny random model gives several answers)
        app.selectbox(key="ask_example").set_value(i).run()
        check(f"demo example {i}")
    for q in ("what shape is in the image?", "is there a blue shape?", "what color is the background?"):
        app.text_input(key=next(t.key for t in app.text_input)).input(q).run()
        check(f"question {q!r}")
    app.radio(key="ask_source").set_value("Upload").run()
    for colour in ((200, 30, 30), (30, 30, 200), (30, 200, 30)):
        app.file_uploader(key="ask_upload").set_value(("s.png", _png_bytes(colour), "image/png")).run()
        app.text_input(key="ask_q_upload").input("what shape is in the image?").run()
        check(f"upload {colour}")
    assert len(set(seen)) >= 2, f"the inputs never changed the answer ({seen}): the test shows nothing"


def test_unknown_words_get_a_notice_and_word_bars_show_whole_words(app):
    import pyarrow as pa

    app.run()
    app.multiselect(key="ask_methods").set_value(["attention"]).run()
    app.text_input[0].set_value("is the zebra hat red?").run()  # the question box
    assert not app.exception, app.exception
    notice = " ".join(w.value for w in app.warning)
    # the tiny vocabulary reads "zebra" as [UNK] and spells "hat" out letter by letter
    assert "unknown to this model (read as [UNK]): zebra" in notice
    assert "read as pieces: hat" in notice
    words = None
    for node in charts(app):  # the word bars: the one chart whose rows say for / against / special
        rows = [r for ds in node.proto.datasets for r in pa.ipc.open_stream(ds.data.data).read_all().to_pylist()]
        if rows and "kind" in rows[0]:
            words = [r["label"] for r in rows]
    assert words == ["[CLS]", "is", "the", "zebra", "hat", "red", "?", "[SEP]"]


def test_ig_steps_reach_a_converging_count(app, monkeypatch):
    """The demo ViLT's IG needs about 200 steps for a delta near 10% (measured): the slider reaches it,
    and IG runs with the count chosen."""
    import analysis.attribution as attribution

    steps = []
    original = attribution.attribute

    def recording(*a, **kw):
        if (a[3] if len(a) > 3 else kw.get("method")) == "ig":
            steps.append(kw.get("n_steps"))
        return original(*a, **kw)

    monkeypatch.setattr(attribution, "attribute", recording)
    app.run()
    slider = app.slider(key="ask_steps")
    assert slider.max >= 200 and slider.value == 30
    app.multiselect(key="ask_methods").set_value(["ig"]).run()
    slider = app.slider(key="ask_steps")
    slider.set_value(200).run()
    assert not app.exception, app.exception
    assert steps and steps[-1] == 200, steps
