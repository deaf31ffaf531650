"""Head summary view: the right cell lights up, aggregates count and average correctly, any kind renders."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.attention_views import MEAN_COLUMN, head_summary, head_summary_rows, select_examples
from analysis.head_stats import compute_head_stats
from tests.view_records import dual_stream_record, find_frame, open_page, single_stream_record, write_store

PAGE = "views/head_summary.py"


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    recs = [single_stream_record(seed=0, hot=(1, 2)),
            single_stream_record(seed=1, hot=(2, 0), label="blue", answer="red", question="what color is it")]
    path = write_store(tmp_path_factory.mktemp("hs") / "hand.zarr", recs)
    return write_store(path, [dual_stream_record()], run="dual")  # one run = one model


def test_hot_head_is_the_max_cell():
    rec = single_stream_record(hot=(1, 2))
    hs = compute_head_stats(rec)["self"]
    s = head_summary(hs.values, hs.names, "text_to_image")
    assert s.best_cell() == (1, 2)
    assert s.grid[1, 2] == pytest.approx(1.0, abs=1e-3)
    others = np.delete(s.grid.ravel(), 1 * s.grid.shape[1] + 2)
    assert others.max() < 0.9
    np.testing.assert_allclose(s.layer_mean, s.grid.mean(axis=1))
    rows = head_summary_rows(s)
    L, H = s.grid.shape
    assert len(rows) == L * (H + 1)
    mean_rows = [r for r in rows if r["head"] == MEAN_COLUMN]
    assert [r["layer"] for r in mean_rows] == list(range(L))


def test_aggregate_is_the_mean_and_zscore_is_across_all_heads():
    a = compute_head_stats(single_stream_record(seed=0, hot=(1, 2)))["self"]
    b = compute_head_stats(single_stream_record(seed=1, hot=(2, 0)))["self"]
    both = np.stack([a.values, b.values])
    s = head_summary(both, a.names, "text_to_image")
    assert s.n_examples == 2
    i = a.names.index("text_to_image")
    np.testing.assert_allclose(s.grid, (a.values[i] + b.values[i]) / 2, rtol=1e-6)
    z = head_summary(both, a.names, "text_to_image", zscore=True)
    assert abs(np.nanmean(z.grid)) < 1e-9 and np.nanstd(z.grid) == pytest.approx(1.0)
    # per-head z-scoring (VL-InterpreT's defect) would make every head's mean 0 over examples; ours keeps order
    assert z.best_cell() == s.best_cell()


def test_undefined_stat_is_nan_not_zero():
    rec = dual_stream_record()
    hs = compute_head_stats(rec)["vision_self"]
    s = head_summary(hs.values, hs.names, "text_to_image")
    assert np.isnan(s.grid).all() and s.best_cell() is None
    assert all(r["value"] is None for r in head_summary_rows(s))


def test_select_examples_filters():
    rows = [{"example_id": "a", "question": "What color?", "label": "red", "answer": "red", "correct": True},
            {"example_id": "b", "question": "what shape?", "label": "circle", "answer": "red", "correct": False},
            {"example_id": "c", "question": "Is it red", "label": None, "answer": "yes", "correct": None}]
    assert select_examples(rows) == ["a", "b", "c"]
    assert select_examples(rows, correctness="correct") == ["a"]
    assert select_examples(rows, correctness="incorrect") == ["b"]
    assert select_examples(rows, answer="red") == ["a", "b"]
    assert select_examples(rows, text="COLOR") == ["a"]
    with pytest.raises(ValueError):
        select_examples(rows, correctness="maybe")


def test_page_highlights_the_hand_built_head(hand_store, monkeypatch):
    at = open_page(monkeypatch, hand_store, PAGE, run="hand", ex="single0", kind="self", stat="text_to_image")
    at.run()
    assert not at.exception, at.exception
    data = find_frame(at, "layer", "head", "value")
    cells = data[data["head"] != MEAN_COLUMN].astype({"value": float})
    top = cells.loc[cells["value"].idxmax()]
    assert (int(top["layer"]), top["head"]) == (1, "2")
    assert float(top["value"]) == pytest.approx(1.0, abs=1e-3)
    assert "Highest: layer 1, head 2" in " ".join(c.value for c in at.caption)
    # URL state: the view wrote what it shows
    assert at.query_params["stat"] == ["text_to_image"] or at.query_params["stat"] == "text_to_image"


def test_page_aggregate_counts_examples(hand_store, monkeypatch):
    at = open_page(monkeypatch, hand_store, PAGE, run="hand", scope="set", kind="self", stat="text_to_image")
    at.run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Mean over **2** examples of 2" in captions
    data = find_frame(at, "layer", "head", "value")
    cells = data[data["head"] != MEAN_COLUMN].astype({"value": float})
    # mean of two examples whose hot heads differ: both hot cells above every other
    top2 = set(map(tuple, cells.nlargest(2, "value")[["layer", "head"]].astype(str).values))
    assert top2 == {("1", "2"), ("2", "0")}
    at.selectbox(key="hs_set").select("correct").run()
    assert not at.exception
    assert "Mean over **1** examples" in " ".join(c.value for c in at.caption)


def test_dual_stream_record_renders_every_kind(hand_store, monkeypatch):
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0")
    at.run()
    assert not at.exception, at.exception
    kinds = at.selectbox(key="hs_kind").options
    assert set(kinds) == {"lang_self", "vision_self", "cross_l2v", "cross_v2l", "cross_lang_self",
                          "cross_vision_self"}
    at.selectbox(key="hs_kind").select("cross_v2l").run()
    assert not at.exception
    data = find_frame(at, "layer", "head", "value")
    assert len(data) == 2 * (2 + 1)  # 2 layers x (2 heads + mean)
    # every statistic of cross_l2v is constant (text -> image: its keys are all regions) or undefined
    at.selectbox(key="hs_kind").select("cross_l2v").run()
    assert not at.exception
    info = " ".join(i.value for i in at.info)
    assert "No head statistic varies in kind cross_l2v" in info
    assert "text → image, cross-modal (its keys are all image tokens" not in info  # grouped by reason, not merged
    assert "text → image (its keys are all image tokens, so every row sends 100% of its attention to them)" in info
    assert not at.get("vega_lite_chart")
    # on to vision_self with image -> text in the URL (a link made on cross_v2l): said once, then a real statistic
    at.query_params["stat"] = "image_to_text"
    at.selectbox(key="hs_kind").select("vision_self").run()
    assert not at.exception, at.exception
    assert [i.value for i in at.info] == [
        "image → text is not applicable for kind vision_self: its keys are image tokens only."]
    assert find_frame(at, "layer", "head", "value")["value"].notna().all()


@pytest.mark.parametrize("kind, offered", [
    ("vision_self", ["image_to_image_nonlocal"]),
    ("lang_self", ["text_to_text", "intra_modal"]),
    ("cross_v2l", ["image_to_text", "cross_modal"]),
])
def test_picker_offers_only_what_the_kind_can_vary(hand_store, monkeypatch, kind, offered):
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0", kind=kind)
    at.run()
    assert not at.exception, at.exception
    from analysis.head_stats import STAT_LABELS

    assert list(at.selectbox(key="hs_stat").options) == [STAT_LABELS[s] for s in offered]
    assert f"Not applicable for kind {kind}: " in " ".join(c.value for c in at.caption)
    assert "unweighted mean" in at.selectbox(key="hs_stat").help


def test_a_statistic_the_kind_lacks_gets_a_message_not_an_empty_chart(hand_store, monkeypatch):
    """LXMERT vision_self, text -> text (from a link): a one-line message, then a statistic that exists."""
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0", kind="vision_self", stat="text_to_text")
    at.run()
    assert not at.exception, at.exception
    assert [i.value for i in at.info] == [
        "text → text is not applicable for kind vision_self: its queries are image tokens only."]
    assert at.selectbox(key="hs_stat").value == "image_to_image_nonlocal"
    data = find_frame(at, "layer", "head", "value")
    assert data["value"].notna().all()  # no NaN cell, so no "NaN" legend entry
    # image -> image on vision_self is the constant 1.0 by construction: a message, not a chart of 1.0
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0", kind="vision_self", stat="image_to_image")
    at.run()
    assert "image → image is not applicable for kind vision_self: its keys are all image tokens" in at.info[0].value


def test_tiny_vilt_store(tiny_store, monkeypatch):
    at = open_page(monkeypatch, tiny_store, PAGE)
    at.run()
    assert not at.exception, at.exception
    data = find_frame(at, "layer", "head", "value")
    assert len(data) == 2 * (2 + 1)
