"""Head statistics on hand-built attention matrices with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.head_stats import HEAD_STATS, compute_head_stats, zscore_across_heads
from tests.records import grid_record

# tokens: 0 [CLS], 1 what, 2 color, 3 [SEP], 4 [IMG], 5..8 patches (0,0) (0,1) (1,0) (1,1)
CLS, W1, W2, SEP, IMG, P00, P01, P10, P11 = range(9)
TEXT, IMAGE = [W1, W2], [P00, P01, P10, P11]


def record_with_rows(rows: dict[int, dict[int, float]], layers=1, heads=1, at=(0, 0)):
    """Uniform attention except the given query rows (at layer/head ``at``)."""
    n = 9
    att = np.full((layers, heads, n, n), 1.0 / n)
    for q, targets in rows.items():
        row = np.zeros(n)
        for k, v in targets.items():
            row[k] = v
        att[at[0], at[1], q] = row
    return grid_record(attention=att)


def stats(rec):
    hs = compute_head_stats(rec)["self"]
    return {name: hs.values[i] for i, name in enumerate(hs.names)}


def test_text_to_image_and_back_known_values():
    # text tokens: 'what' puts 0.5 on P00 and 0.5 on CLS; 'color' puts everything on P11
    # image tokens: each puts 0.25 on 'what', 0.75 on itself
    rows = {W1: {P00: 0.5, CLS: 0.5}, W2: {P11: 1.0}}
    for p in IMAGE:
        rows[p] = {W1: 0.25, p: 0.75}
    s = stats(record_with_rows(rows))
    assert s["text_to_image"][0, 0] == pytest.approx(0.75)  # mean(0.5, 1.0)
    assert s["text_to_text"][0, 0] == pytest.approx(0.0)  # CLS is special: counted nowhere
    assert s["image_to_text"][0, 0] == pytest.approx(0.25)
    assert s["image_to_image"][0, 0] == pytest.approx(0.75)
    # self excluded, and every other patch of a 2x2 grid is a neighbour: no non-local keys -> undefined
    assert np.isnan(s["image_to_image_nonlocal"][0, 0])
    # cross-modal pools both directions weighted by query count: (2*0.75 + 4*0.25) / 6
    assert s["cross_modal"][0, 0] == pytest.approx((2 * 0.75 + 4 * 0.25) / 6)
    assert s["intra_modal"][0, 0] == pytest.approx((2 * 0.0 + 4 * 0.75) / 6)


def test_nonlocal_keeps_far_patches_only():
    rec = grid_record(grid=(3, 3), attention=None)
    n = rec.n_tokens
    img = rec.indices("image")
    att = np.full((1, 1, n, n), 1.0 / n)
    first, last = img[0], img[-1]  # (0,0) and (2,2): not neighbours
    att[0, 0, first] = 0
    att[0, 0, first, first] = 0.5  # self: excluded
    att[0, 0, first, img[1]] = 0.2  # (0,1): neighbour, excluded
    att[0, 0, first, last] = 0.3  # far: counted
    rec = grid_record(grid=(3, 3), attention=att)
    s = stats(rec)
    others = [i for i in img if i != first]
    # first patch contributes 0.3; every other patch has uniform rows: count its non-neighbour patches
    grid = rec.token_grid
    expected = [0.3]
    for q in others:
        far = [k for k in img if max(abs(grid[q] - grid[k])) > 1]
        expected.append(len(far) / n)
    assert s["image_to_image_nonlocal"][0, 0] == pytest.approx(np.mean(expected), rel=1e-3)


def test_the_hot_head_is_found():
    """One head of one layer sends all text attention to the image: only that cell is near 1."""
    rows = {W1: {P01: 1.0}, W2: {P10: 1.0}}
    rec = record_with_rows(rows, layers=3, heads=4, at=(2, 1))
    t2i = stats(rec)["text_to_image"]
    assert np.unravel_index(np.argmax(t2i), t2i.shape) == (2, 1)
    assert t2i[2, 1] == pytest.approx(1.0, abs=1e-3)
    assert np.delete(t2i.ravel(), 2 * 4 + 1).max() == pytest.approx(4 / 9, abs=1e-3)


def test_undefined_statistics_are_nan():
    """A kind with only text queries and keys (like LXMERT's language self-attention)."""
    from store.schema import AttentionBlock, Record

    rec = grid_record()
    text = rec.indices("text")
    block = AttentionBlock(values=np.full((1, 1, 2, 2), 0.5), query_index=text, key_index=text)
    import dataclasses

    kw = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    kw["attention"] = {"lang_self": block}
    s = compute_head_stats(Record(**kw))["lang_self"]
    vals = dict(zip(s.names, s.values))
    assert vals["text_to_text"][0, 0] == pytest.approx(1.0)
    for name in ("text_to_image", "image_to_text", "image_to_image", "cross_modal"):
        assert np.isnan(vals[name]).all(), name
    assert vals["intra_modal"][0, 0] == pytest.approx(1.0)


def test_registry_order_and_shapes():
    rec = grid_record(layers=3, heads=2)
    hs = compute_head_stats(rec)["self"]
    assert hs.names == tuple(HEAD_STATS)
    assert hs.values.shape == (len(HEAD_STATS), 3, 2)


def test_zscore_is_across_all_heads():
    v = np.array([[0.0, 1.0], [2.0, 3.0]])
    z = zscore_across_heads(v)
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)
    assert z[0, 0] < z[0, 1] < z[1, 0] < z[1, 1]  # order kept: not per-head normalised
