"""AppTest of the home page (example browser): it shows the run's examples and their answers."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(tiny_store, monkeypatch):
    monkeypatch.setenv("VL_LENS_STORE", str(tiny_store))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    return at


def test_home_lists_examples_with_answers(app, tiny_store):
    from store.zarr_store import VLStore

    app.run()
    assert not app.exception, app.exception
    summaries = VLStore(tiny_store).run("tiny").summaries()
    table = app.dataframe[0].value
    assert len(table) == len(summaries) == 6
    assert set(table["question"]) == {s.question for s in summaries}
    truth = {s.question: (s.label, s.answer, s.correct) for s in summaries}
    for _, row in table.iterrows():
        assert (row["true answer"], row["model answer"], row["correct"]) == truth[row["question"]]
    assert "6 of 6 examples shown" in " ".join(c.value for c in app.caption)
    # the selected example panel shows the first example's question and answer
    md = " ".join(m.value for m in app.markdown)
    assert summaries[0].question in md or table.iloc[0]["question"] in md
    # every row has a thumbnail (a PNG of that example's image)
    assert all(str(u).startswith("data:image/png;base64,") for u in table["image"])
    # the panel's "Open this example in" links are in-app page links (no new tab) carrying run and example
    first = table.iloc[0]["example_id"]
    links = {e.proto.page: e.proto.query_string for e in page_links(app)}
    for page in ("heads", "attention", "projections", "compare"):
        assert links[page] == f"run=tiny&ex={first}", (page, links)


def page_links(at):
    return at.get("page_link")


def test_first_visit_introduction_hides_on_request(app):
    app.run()
    assert "shows what a vision-language model looks at" in " ".join(m.value for m in app.markdown)
    app.button(key="intro_hide").click().run()
    assert not app.exception
    assert "shows what a vision-language model looks at" not in " ".join(m.value for m in app.markdown)


def test_selected_wrong_answer_is_called_incorrect(app, tiny_store):
    """The selected-example panel says "incorrect" for a wrong answer (numpy's False is not ``False``)."""
    from store.zarr_store import VLStore

    summaries = VLStore(tiny_store).run("tiny").summaries()
    wrong = next(s for s in summaries if s.correct is False)
    right = next((s for s in summaries if s.correct is True), None)
    app.query_params["ex"] = wrong.example_id
    app.run()
    md = [m.value for m in app.markdown]
    assert f"**Model answer:** {wrong.answer} ({wrong.confidence:.2f}) — incorrect" in md, md
    if right is not None:
        app.query_params["ex"] = right.example_id
        app.run()
        assert f"**Model answer:** {right.answer} ({right.confidence:.2f}) — correct" in [m.value for m in app.markdown]


def test_empty_filter_result_says_so(app):
    app.run()
    app.text_input(key="filter_text").input("no question has these words xyzzy").run()
    assert not app.exception
    assert "0 of 6 examples shown" in " ".join(c.value for c in app.caption)
    assert any("No example matches these filters" in i.value for i in app.info)


def test_filter_by_correctness(app, tiny_store):
    from store.zarr_store import VLStore

    summaries = VLStore(tiny_store).run("tiny").summaries()
    app.run()
    app.selectbox(key="filter_correct").select("incorrect").run()
    assert not app.exception
    n_wrong = sum(1 for s in summaries if s.correct is False)
    assert f"{n_wrong} of 6 examples shown" in " ".join(c.value for c in app.caption)


def test_foreign_store_gives_clear_message(tmp_path, monkeypatch):
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(2,), dtype="f4")
    monkeypatch.setenv("VL_LENS_STORE", str(tmp_path / "other.zarr"))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert any("not a VL-Lens store" in e.value for e in at.error)


@pytest.mark.skipif(not (ROOT / "demo/models/vilt-easyvqa/config.json").exists(), reason="demo weights not built")
def test_first_start_builds_the_demo_store(tmp_path, monkeypatch):
    """A fresh clone: no store yet -> the app records the demo examples into the cache dir, then lists them."""
    from demo.build_store import available_demo_models
    from store.zarr_store import VLStore

    monkeypatch.delenv("VL_LENS_STORE", raising=False)
    monkeypatch.setenv("VL_LENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VL_LENS_DEMO_LIMIT", "3")
    import demo.build_store as build_store

    monkeypatch.setattr(build_store, "DEFAULT_LIMIT", 3)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    store_path = tmp_path / "cache" / "demo_store.zarr"
    assert store_path.exists() and not (tmp_path / "cache" / "demo_store.zarr.building").exists()
    store = VLStore(store_path)
    assert store.runs() == sorted(available_demo_models())
    assert len(at.dataframe[0].value) == 3


def test_multiple_choice_candidates_side_by_side(tmp_path, monkeypatch, tiny_vilt):
    """Candidates of one multiple-choice item (one group) are shown together, each with its verdict."""
    from PIL import Image

    from sources.base import Example
    from pipeline.record import record_examples
    from store.zarr_store import VLStore

    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    choices = ["red", "blue", "green"]
    examples = [Example(source_key=f"item-1/{i}", question=f"what color is the shape? [SEP] {c}",
                        label="yes" if i == 0 else "no", answers={"yes" if i == 0 else "no": 1.0},
                        load_image_bytes=lambda: png, group="item-1")
                for i, c in enumerate(choices)]
    path = tmp_path / "mc.zarr"
    record_examples(tiny_vilt, iter(examples), VLStore(path, mode="a"), "mc", total=3, progress=False)
    monkeypatch.setenv("VL_LENS_STORE", str(path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert any("Candidates of item item-1" in h.value for h in at.subheader)
    md = [m.value for m in at.markdown]
    for c in choices:
        assert any(m.startswith(f"**{c}**") for m in md), c
    summaries = VLStore(path).run("mc").summaries()
    for s in summaries:
        assert any(m == f"model: {s.answer} ({s.confidence:.2f})" for m in md)
