"""AppTests of what a person sees after they act: an example whose label another example shares stays
selected through every control, the sidebar's page links keep run and example, the example list
refreshes while a recording writes, and "Play layers" never sleeps in the script."""
from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from tests.view_records import open_page

QUESTION = "what color is the shape?"


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
    return buf.getvalue()


def _examples(colours):
    from sources.base import Example

    return [Example(source_key=f"dup/{i}", question=QUESTION, label="red", answers={"red": 1.0},
                    load_image_bytes=(lambda png=_png(c): png)) for i, c in enumerate(colours)]


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory, tiny_vilt):
    """Runs 'a' and 'b' over three examples that share question and label (three images)."""
    from pipeline.record import record_examples
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("twins") / "twins.zarr"
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220)]
    for run in ("a", "b"):
        record_examples(tiny_vilt, iter(_examples(colours)), VLStore(path, mode="a"), run, total=3, progress=False)
    return path


def _ids(path, run="a") -> list[str]:
    from store.zarr_store import VLStore

    return VLStore(path).run(run).example_ids()


def _ex(at) -> str:
    v = at.query_params["ex"]
    return v[0] if isinstance(v, list) else v


@pytest.mark.parametrize("page,moves", [
    ("views/head_summary.py", [("selectbox", "hs_stat", "other"), ("toggle", "hs_z", True)]),
    ("views/attention.py", [("slider", "att_layer", 0), ("selectbox", "att_head", "0"),
                            ("radio", "att_dir", "attended by")]),
    ("views/projections.py", [("radio", "proj_method", "umap"), ("toggle", "proj_center", False),
                              ("slider", "proj_layer", 0)]),
])
def test_example_sharing_its_label_stays_selected(twin_store, monkeypatch, page, moves):
    ids = _ids(twin_store)
    last = ids[-1]  # not the first example with this label
    at = open_page(monkeypatch, twin_store, page, run="a", ex=last)
    at.run()
    assert not at.exception, at.exception
    key = {"views/head_summary.py": "hs_example", "views/attention.py": "att_example",
           "views/projections.py": "proj_example"}[page]
    labels = [at.selectbox(key=key).format_func(i) for i in ids]
    assert len(set(labels)) == 3 and all(lbl.startswith(QUESTION) for lbl in labels)  # told apart
    for kind, wkey, value in moves:
        if kind == "radio" and value == "umap":
            pytest.importorskip("umap")
        widget = getattr(at, kind)(key=wkey)
        if value == "other":
            value = next(o for o in widget.options if o != widget.value)
        widget.set_value(value).run()
        assert not at.exception, (wkey, at.exception)
        assert _ex(at) == last, f"{wkey} moved ?ex= to another example"
        assert at.selectbox(key=key).value == last, f"{wkey} moved the example picker"


def test_sidebar_navigation_keeps_run_and_example(twin_store, monkeypatch):
    ids = _ids(twin_store, "b")
    at = open_page(monkeypatch, twin_store, "views/attention.py")
    at.run()
    at.selectbox(key="run_select").select("b").run()
    at.selectbox(key="att_example").select(ids[1]).run()
    assert not at.exception, at.exception
    for page in ("views/head_summary.py", "views/projections.py", "views/browser.py", "views/attention.py"):
        at.query_params.clear()  # a sidebar page link carries no query parameters
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert at.selectbox(key="run_select").value == "b", page
        assert _ex(at) == ids[1], page
    assert at.selectbox(key="att_example").value == ids[1]


def test_default_run_has_a_wrong_answer_to_show(tmp_path, monkeypatch, tiny_vilt):
    """A first visit opens a run whose "incorrect" filter is not empty, not the all-correct run listed first."""
    from streamlit.testing.v1 import AppTest

    from pipeline.record import record_examples
    from sources.base import Example
    from store.zarr_store import VLStore
    from tests.view_records import ROOT

    png = _png((220, 20, 20))
    answer = tiny_vilt.predict(Image.open(io.BytesIO(png)), QUESTION, top_k=2)
    right, wrong = answer.answers[0], answer.answers[1]
    path = tmp_path / "runs.zarr"
    for run, label in (("aaa-perfect", right), ("zzz-flawed", wrong)):
        ex = Example(source_key="one", question=QUESTION, label=label, answers={label: 1.0},
                     load_image_bytes=lambda: png)
        record_examples(tiny_vilt, iter([ex]), VLStore(path, mode="a"), run, total=1, progress=False)
    monkeypatch.setenv("VL_LENS_STORE", str(path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="run_select").value == "zzz-flawed"
    at.selectbox(key="filter_correct").select("incorrect").run()
    assert "1 of 1 examples shown" in " ".join(c.value for c in at.caption)
    # a link naming the other run still opens it
    at.query_params["run"] = "aaa-perfect"
    at.run()
    assert at.selectbox(key="run_select").value == "aaa-perfect"


def test_example_list_refreshes_while_a_recording_writes(tmp_path, monkeypatch, tiny_vilt):
    """Bug 1: examples committed into an open store show on the next run after FRESH_SECONDS."""
    from streamlit.testing.v1 import AppTest

    import ui.state
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore
    from tests.view_records import ROOT

    monkeypatch.setattr(ui.state, "FRESH_SECONDS", 1.0)
    path = tmp_path / "growing.zarr"
    record_examples(tiny_vilt, limited(iter(EasyVQA("test")), 2), VLStore(path, mode="a"), "tiny", total=2,
                    progress=False, consolidate=False)
    monkeypatch.setenv("VL_LENS_STORE", str(path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert len(at.dataframe(key="examples_table").value) == 2
    record_examples(tiny_vilt, limited(iter(EasyVQA("test")), 4), VLStore(path, mode="a"), "tiny", total=4,
                    progress=False, consolidate=False)
    time.sleep(1.1)
    at.run()
    assert not at.exception, at.exception
    assert len(at.dataframe(key="examples_table").value) == 4
    assert "4 of 4 examples shown" in " ".join(c.value for c in at.caption)


def test_play_layers_draws_frames_without_sleeping(twin_store, monkeypatch):
    """The first frame (layer 0) replaces the still matrix, and the script never sleeps."""
    real_sleep, long_sleeps = time.sleep, []

    def sleep(s):  # AppTest's own polling sleeps a millisecond at a time
        if s >= 0.1:
            long_sleeps.append(s)
        real_sleep(s)

    at = open_page(monkeypatch, twin_store, "views/attention.py", run="a", layer=1)
    at.run()
    monkeypatch.setattr(time, "sleep", sleep)
    def titles() -> list[str]:  # a chart's title is a string or, with its placement, {"text": ...}
        found = [json.loads(c.proto.spec).get("title") for c in at.get("vega_lite_chart")]
        return [str(t.get("text") if isinstance(t, dict) else t) for t in found]
    assert any("layer 1" in t for t in titles())
    at.button(key="att_play").click().run()
    assert not at.exception, at.exception
    assert titles()[0] == "self · layer 0 · mean over heads", titles()  # the first frame, where the still chart was
    assert "self · layer 1 · mean over heads" not in titles(), "the still chart is drawn beside the frames"
    assert at.slider(key="att_layer").value == 1  # the slider stays where it is
    assert not long_sleeps, f"the page slept {long_sleeps} s in the script"
