"""Attention view: rows/columns of non-square kinds, overlays light the right patch, pages render any kind."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.attention_views import (grid_shape, matrix_rows, mean_over_heads, modality_blocks, overlay_boxes,
                                      overlay_heat, patch_at, restrict, token_attention, top_k)
from tests.view_records import TEXT, dual_stream_record, find_frame, open_page, single_stream_record, write_store

PAGE = "views/attention.py"
COLOR = TEXT.index("color")


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    path = write_store(tmp_path_factory.mktemp("att") / "hand.zarr", [single_stream_record(focus=(2, (1, 2)))])
    return write_store(path, [dual_stream_record()], run="dual")


def test_rows_and_columns_of_a_rectangular_kind():
    # cross_l2v-like: 2 text queries (tokens 3, 4) x 3 image keys (tokens 7, 8, 9)
    m = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], np.float32)
    q, k = np.array([3, 4]), np.array([7, 8, 9])
    to = token_attention(m, q, k, 4, "attends to")
    np.testing.assert_array_equal(to.tokens, k)
    np.testing.assert_allclose(to.weights, [0.6, 0.3, 0.1])
    by = token_attention(m, q, k, 9, "attended by")
    np.testing.assert_array_equal(by.tokens, q)
    np.testing.assert_allclose(by.weights, [0.5, 0.1])
    assert token_attention(m, q, k, 9, "attends to") is None  # an image token is no query here
    assert top_k(to, 2) == [(7, pytest.approx(0.6)), (8, pytest.approx(0.3))]
    rows = matrix_rows(m, q, k, [f"t{i}" for i in range(10)], ["text"] * 7 + ["image"] * 3)
    assert len(rows["weight"]) == 6
    assert set(rows["query_modality"]) == {"text"} and set(rows["key_modality"]) == {"image"}
    np.testing.assert_allclose(rows["weight"].reshape(2, 3), m)
    with pytest.raises(ValueError):
        matrix_rows(m.T, q, k, [f"t{i}" for i in range(10)], ["text"] * 10)


def test_blocks_and_mean_over_heads():
    blocks = modality_blocks(["special", "text", "text", "special", "image", "image"])
    assert [(b.modality, b.start, b.stop) for b in blocks] == [("special", 0, 1), ("text", 1, 3), ("special", 3, 4),
                                                               ("image", 4, 6)]
    rng = np.random.default_rng(0)
    v = rng.random((3, 4, 5))
    v /= v.sum(-1, keepdims=True)
    np.testing.assert_allclose(mean_over_heads(v).sum(-1), 1.0, rtol=1e-6)


def test_overlay_lights_the_focused_patch():
    rec = single_stream_record(grid=(3, 3), focus=(2, (1, 2)))
    block = rec.attention["self"]
    m = block.values[2, 0].astype(np.float32)
    att = token_attention(m, block.query_index, block.key_index, COLOR, "attends to")
    boxes = overlay_boxes(att, rec.token_boxes, rec.modality)
    assert len(boxes["token"]) == 9  # image tokens only: no special [IMG] token
    hot = int(np.argmax(boxes["share"]))
    assert rec.tokens[boxes["token"][hot]] == "patch 1,2"
    assert boxes["share"][hot] == 1.0 and np.sum(boxes["share"] > 0) == 1
    box = (boxes["x0"][hot], boxes["y0"][hot], boxes["x1"][hot], boxes["y1"][hot])
    assert box == pytest.approx((2 / 3, 1 / 3, 1.0, 2 / 3))
    heat = overlay_heat(boxes, 30, 60)  # any display size: boxes are fractions
    ys, xs = np.nonzero(heat)
    assert xs.min() == 40 and xs.max() == 59 and ys.min() == 10 and ys.max() == 19
    assert heat[10:20, 40:60].min() == 1.0 and heat.sum() == 200
    smooth = overlay_heat(boxes, 30, 60, smooth=True)
    peak = np.unravel_index(np.argmax(smooth), smooth.shape)
    assert 10 <= peak[0] < 20 and 40 <= peak[1] < 60
    assert smooth[25, 5] < 0.01  # far corner stays dark


def test_grid_helpers():
    rec = single_stream_record(grid=(3, 4))
    assert grid_shape(rec.token_grid, rec.modality) == (3, 4)
    t = patch_at(rec.token_grid, rec.modality, 2, 1)
    assert rec.tokens[t] == "patch 2,1"
    assert patch_at(rec.token_grid, rec.modality, 5, 5) is None
    dual = dual_stream_record()
    assert grid_shape(dual.token_grid, dual.modality) is None  # detector regions: no grid
    att = token_attention(np.eye(len(dual.tokens)), np.arange(len(dual.tokens)), np.arange(len(dual.tokens)), 1)
    assert set(np.asarray(dual.modality)[restrict(att, dual.modality, "image").tokens]) == {"image"}


def test_page_overlay_lights_the_focused_patch(hand_store, monkeypatch):
    at = open_page(monkeypatch, hand_store, PAGE, run="hand", ex="single0", kind="self", layer=2, head=0,
                   token=COLOR)
    at.run()
    assert not at.exception, at.exception
    boxes = find_frame(at, "x0", "y0", "x1", "y1", "weight")
    lit = boxes[boxes["weight"] > 0]
    assert list(lit["label"]) == ["patch 1,2"]
    row = lit.iloc[0]
    assert (row["x0"], row["y0"], row["x1"], row["y1"]) == pytest.approx((2 / 3, 1 / 3, 1.0, 2 / 3))
    # the full matrix is there with every token on both axes
    matrix = find_frame(at, "query", "key", "weight")
    assert len(matrix) == 16 * 16
    assert at.query_params["layer"] in ("2", ["2"]) and at.query_params["token"] in (str(COLOR), [str(COLOR)])


def test_page_renders_every_dual_stream_kind(hand_store, monkeypatch):
    rec = dual_stream_record()
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0")
    at.run()
    assert not at.exception, at.exception
    for kind in ("lang_self", "vision_self", "cross_l2v", "cross_v2l", "cross_lang_self", "cross_vision_self"):
        at.selectbox(key="att_kind").select(kind).run()
        assert not at.exception, (kind, at.exception)
        block = rec.attention[kind]
        matrix = find_frame(at, "query", "key", "weight")
        assert len(matrix) == len(block.query_index) * len(block.key_index), kind
        if kind == "cross_l2v":  # text queries, image keys: the overlay exists and sums the row
            boxes = find_frame(at, "x0", "weight")
            assert len(boxes) == len(block.key_index)
        if kind == "cross_v2l":  # image queries, text keys: bars over text
            bars = find_frame(at, "label", "weight", "modality")
            assert set(bars["modality"]) == {"text"}
            assert bars["weight"].sum() == pytest.approx(
                sum(block.values[block.n_layers - 1].astype(np.float32).mean(0)[0][np.asarray(rec.modality)[
                    block.key_index] == "text"]), abs=1e-3)


def test_tiny_vilt_store(tiny_store, monkeypatch):
    from store.zarr_store import VLStore

    reader = VLStore(tiny_store).run("tiny")
    eid = reader.example_ids()[0]
    n = len(reader.tokens(eid)["tokens"])
    at = open_page(monkeypatch, tiny_store, PAGE, ex=eid, layer=0, head=1)
    at.run()
    assert not at.exception, at.exception
    assert len(find_frame(at, "query", "key", "weight")) == n * n
