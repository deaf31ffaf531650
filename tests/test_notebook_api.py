"""vllens (the notebook API): its arrays equal the store's and the Record's, its attribution equals the
analysis module's, its charts carry the data the app's would, and the example notebook runs."""
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import pytest

import vllens
from analysis.attribution import attribute, resolve_target
from core.errors import InputError, StoreError
from core.paths import REPO_ROOT
from testkit.tiny_vilt import make_tiny_vilt

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
N_EXAMPLES = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return vllens.load_model(f"vilt:{make_tiny_vilt(tmp_path_factory.mktemp('m') / 'vilt')}", device="cpu")


@pytest.fixture(scope="module")
def reader(model, tmp_path_factory):
    location = tmp_path_factory.mktemp("s") / "s.zarr"
    result = vllens.record(model, "easyvqa:test", location, run="api", limit=N_EXAMPLES, progress=False)
    assert result.written == N_EXAMPLES and not result.failed
    return vllens.open_run(location)  # the store's only run


def _frames(chart) -> list[pd.DataFrame]:
    """The data frames of a chart and of its layers."""
    parts = [chart] + list(getattr(chart, "layer", []) or [])
    return [p.data for p in parts if isinstance(getattr(p, "data", None), pd.DataFrame)]


def _frame_with(chart, column: str) -> pd.DataFrame:
    (df,) = [f for f in _frames(chart) if column in f.columns][:1]
    return df


def test_examples_lists_the_recorded_examples(reader):
    df = vllens.examples(reader)
    assert len(df) == N_EXAMPLES
    assert sorted(df["example_id"]) == sorted(reader.example_ids())
    assert {"question", "label", "answer", "confidence", "correct"} <= set(df.columns)


def test_head_attention_equals_the_record_and_its_coordinates_name_the_tokens(reader):
    eid = reader.example_ids()[0]
    rec = vllens.get_record(reader, eid)
    block = rec.attention["self"]
    a = vllens.head_attention(reader, eid, layer=1, head=1)
    assert a.dims == ("query", "key")
    np.testing.assert_array_equal(a.values, block.values[1, 1].astype(np.float32))
    assert list(a.query_label.values) == [rec.tokens[t] for t in block.query_index]
    assert list(a.key_modality.values) == [rec.modality[t] for t in block.key_index]
    assert a.query_label.values[0] == "[CLS]"
    image_keys = a.where(a.key_modality == "image", drop=True)
    assert image_keys.sizes["key"] == sum(m == "image" for m in rec.modality)
    mean = vllens.head_attention(reader, eid, layer=1)
    np.testing.assert_allclose(mean.values, block.values[1].astype(np.float32).mean(0), atol=1e-6)
    assert mean.attrs["head"] == "mean"


def test_a_missing_kind_or_image_file_is_a_one_line_error(model, reader, tmp_path):
    eid = reader.example_ids()[0]
    with pytest.raises(StoreError, match="no attention kind 'cross'"):
        vllens.head_attention(reader, eid, 0, 0, kind="cross")
    with pytest.raises(InputError, match="heads 0..1"):
        vllens.head_attention(reader, eid, 0, 7)
    with pytest.raises(InputError, match="not a file"):
        vllens.predict(model, tmp_path / "missing.png", "what?")


def test_open_run_asks_for_a_name_when_the_store_has_several(model, reader, tmp_path):
    location = tmp_path / "two.zarr"
    for name in ("a", "b"):
        vllens.record(model, "easyvqa:test", location, run=name, limit=1, progress=False)
    with pytest.raises(StoreError, match="runs a, b: name one with run="):
        vllens.open_run(location)
    assert vllens.open_run(location, "b").name == "b"


def test_dual_stream_kinds_give_non_square_labelled_arrays_and_matrices(tmp_path):
    from testkit.tiny_lxmert import make_tiny_lxmert

    lxmert = vllens.load_model(f"lxmert:{make_tiny_lxmert(tmp_path / 'lx')}", device="cpu")
    vllens.record(lxmert, "easyvqa:test", tmp_path / "lx.zarr", run="lx", limit=1, progress=False)
    reader = vllens.open_run(tmp_path / "lx.zarr")
    eid = reader.example_ids()[0]
    rec = vllens.get_record(reader, eid)
    (kind,) = [k for k in rec.attention if k.startswith("cross_l2v")][:1]
    block = rec.attention[kind]
    a = vllens.head_attention(reader, eid, 0, 1, kind=kind)
    assert set(a.query_modality.values) <= {"text", "special"} and set(a.key_modality.values) == {"image"}
    np.testing.assert_array_equal(a.values, block.values[0, 1].astype(np.float32))
    matrix = _frame_with(vllens.attention_matrix_chart(reader, eid, 0, 1, kind=kind), "weight")
    assert len(matrix) == len(block.query_index) * len(block.key_index)
    overlay = _frame_with(vllens.attention_overlay_chart(reader, eid, int(block.query_index[0]), 0, 1, kind=kind),
                          "weight")
    assert len(overlay) == len(block.key_index)


@pytest.mark.parametrize("method,params", [("rollout", {}), ("ig", {"n_steps": 4})])
def test_attribute_equals_the_analysis_module_on_the_same_input(model, method, params):
    from sources import open_source

    ex = next(iter(open_source("easyvqa:test")))
    got = vllens.attribute(model, ex.image(), ex.question, method=method, **params)
    spec = model.attribution_spec(ex.image(), ex.question)
    want = attribute(model, spec, resolve_target(model, spec, None), method, **params)
    assert got.target == want.target
    np.testing.assert_allclose(got.region_scores, want.region_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.token_scores, want.token_scores, rtol=1e-5, atol=1e-6)
    c = vllens.contributions(got)
    assert c["image"] == pytest.approx(float(want.region_scores.sum()), rel=1e-5, abs=1e-6)
    assert c["text"] == pytest.approx(float(want.token_scores.sum()), rel=1e-5, abs=1e-6)
    assert (c["delta"] is None) == (method != "ig")


def test_run_and_predict_agree_with_the_adapter(model):
    img = (np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)
    rec = vllens.run(model, img, "what color is it?")
    pred = vllens.predict(model, img, "what color is it?")
    assert rec.prediction.answers == pred.answers
    np.testing.assert_allclose(rec.prediction.probabilities, pred.probabilities, atol=1e-5)


def test_head_summary_chart_has_one_cell_per_layer_and_head_plus_the_mean(reader):
    eid = reader.example_ids()[0]
    L, H = reader.attention_array(eid, "self").shape[:2]
    one = _frame_with(vllens.head_summary_chart(reader, eid, stat="text_to_image"), "value")
    assert len(one) == L * (H + 1)
    names, values = reader.head_stats(eid)["self"]
    cell = one[(one.layer == 1) & (one["head"] == "0")]["value"].item()
    assert cell == pytest.approx(float(values[names.index("text_to_image"), 1, 0]), rel=1e-5)
    every = _frame_with(vllens.head_summary_chart(reader, stat="text_to_image"), "value")
    _, _, all_values = reader.head_stats_all("self")
    assert every[(every.layer == 1) & (every["head"] == "0")]["value"].item() == pytest.approx(
        float(all_values[:, names.index("text_to_image"), 1, 0].mean()), rel=1e-5)


def test_matrix_overlay_and_projection_charts_carry_the_stored_values(reader):
    eid = reader.example_ids()[0]
    rec = vllens.get_record(reader, eid)
    n = len(rec.tokens)
    matrix = _frame_with(vllens.attention_matrix_chart(reader, eid, 0, 1), "weight")
    assert len(matrix) == n * n
    np.testing.assert_allclose(matrix["weight"].to_numpy().reshape(n, n),
                               rec.attention["self"].values[0, 1].astype(np.float32))
    overlay = _frame_with(vllens.attention_overlay_chart(reader, eid, token=0, layer=0, head=1), "weight")
    n_image = sum(m == "image" for m in rec.modality)
    assert len(overlay) == n_image
    row = rec.attention["self"].values[0, 1, 0].astype(np.float32)
    np.testing.assert_allclose(np.sort(overlay["weight"].to_numpy()),
                               np.sort(row[np.asarray(rec.modality) == "image"]))
    with pytest.raises(InputError):
        vllens.attention_overlay_chart(reader, eid, token=n + 5, layer=0)
    points = _frame_with(vllens.projection_chart(reader, eid, layer=1), "x")
    assert len(points) == sum(len(h.token_index) for h in rec.hidden.values())  # one point per token state
    assert set(points["modality"]) <= {"text", "image", "special"}


def test_attribution_charts_have_a_region_per_score_and_a_bar_per_word(model):
    from sources import open_source

    ex = next(iter(open_source("easyvqa:test")))
    res = vllens.attribute(model, ex.image(), ex.question, method="rollout")
    heat = _frame_with(vllens.attribution_heatmap(res, ex.image()), "weight")
    np.testing.assert_allclose(heat["weight"].to_numpy(), res.region_scores)
    bars = vllens.word_bars_chart(res, ex.question)
    assert isinstance(bars, alt.TopLevelMixin)
    words = _frames(bars)[0]
    n_words = sum(not str(t).startswith("##") for t in res.tokens)  # word pieces joined onto their word
    assert len(words) == n_words
    assert words["score"].sum() == pytest.approx(float(res.token_scores.sum()), rel=1e-5, abs=1e-6)


NOTEBOOK = REPO_ROOT / "docs" / "notebook.ipynb"


def test_the_example_notebook_runs_and_shows_its_results():
    import nbclient  # requirements-dev.txt: the notebook must run, not be skipped
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "convergence delta" in text
    assert "recorded 10 examples" in text
    charts_shown = [o for c in nb.cells for o in c.get("outputs", [])
                    if any("vega" in k or "vegaEmbed" in str(v) for k, v in o.get("data", {}).items())]
    assert len(charts_shown) >= 4  # IG heatmap, word bars, head summary, attention overlay
