"""Head statistics on hand-built attention matrices with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.head_stats import (DIRECTIONS, HEAD_STATS, MAX_KEY_RUNS, POOLED, as_defined, compute_head_stats,
                                 key_masses, not_applicable, not_applicable_message, stat_input, zscore_across_heads)
from core.kinds import DUAL_STREAM_KINDS
from tests.records import grid_record
from tests.view_records import dual_stream_record, single_stream_record

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
    # cross-modal: the unweighted mean of the two directions, (0.75 + 0.25) / 2, as VL-InterpreT.
    # Weighting by query count (2 text, 4 image queries) would give (2*0.75 + 4*0.25) / 6 = 0.417.
    assert s["cross_modal"][0, 0] == pytest.approx(0.5)
    assert s["intra_modal"][0, 0] == pytest.approx((0.0 + 0.75) / 2)


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


def test_nonlocal_equals_its_definition_on_random_attention():
    """The statistic is computed as image mass minus the excluded entries; it must equal the
    definition (mean over image queries of the mass on image keys that are neither the query nor
    a grid neighbour), written out directly, for every layer and head."""
    rec = grid_record(layers=3, heads=2, grid=(4, 5), seed=11)
    v = rec.attention["self"].values.astype(np.float64)
    img = rec.indices("image")
    grid = rec.token_grid
    expected = np.zeros(v.shape[:2])
    for q in img:
        far = [k for k in img if k != q and max(abs(grid[q] - grid[k])) > 1]
        expected += v[:, :, q, far].sum(-1)
    expected /= len(img)
    np.testing.assert_allclose(stats(rec)["image_to_image_nonlocal"], expected, atol=1e-6)



@pytest.mark.parametrize("layout", ["runs", "interleaved"])
def test_key_masses_are_the_sums_over_each_modalitys_keys(layout):
    """Float16 maps, keys in a few runs (summed in place) or interleaved past MAX_KEY_RUNS runs (one
    matrix product): both equal the masked sums written out in float64."""
    rng = np.random.default_rng(3)
    if layout == "runs":
        modality = np.array(["special"] + ["text"] * 5 + ["special", "special"] + ["image"] * 12 + ["special"])
    else:
        modality = np.array(["text", "image", "special"] * 8)
        assert len(modality) > MAX_KEY_RUNS  # every key a run of its own
    values = rng.random((2, 3, 4, len(modality))).astype(np.float16)
    got = key_masses(values, modality)
    for m in ("text", "image", "special"):
        expected = values.astype(np.float64)[..., modality == m].sum(-1)
        assert got[m].dtype == np.float32 and got[m].shape == (2, 3, 4)
        np.testing.assert_allclose(got[m], expected, rtol=1e-6, atol=1e-6)

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


# ---- statistics a kind cannot vary -----------------------------------------------------------------
def _raw_direction(rec, kind, stat):
    """The direction's value computed from the attention alone, before any not-applicable rule."""
    return HEAD_STATS[stat](stat_input(rec, kind))


def _varies(values) -> bool:
    v = np.asarray(values)
    return bool(np.isfinite(v).all() and np.ptp(v) > 1e-3)


def _assert_applicable_iff_it_varies(recs, kind):
    can_vary = {d: _varies(np.concatenate([_raw_direction(r, kind, d).ravel() for r in recs])) for d in DIRECTIONS}
    can_vary.update({p: any(can_vary[d] for d in dirs) for p, dirs in POOLED.items()})
    assert set(can_vary) == set(HEAD_STATS)
    stored = compute_head_stats(recs[0])[kind]
    for i, stat in enumerate(stored.names):
        applicable = not_applicable(kind, stat) is None
        assert applicable == can_vary[stat], (kind, stat, not_applicable(kind, stat))
        # not applicable: NaN and flagged with its reason, never a 0 or a 1
        assert np.isnan(stored.values[i]).all() == (not applicable), (kind, stat)
        assert (stat in stored.not_applicable) == (not applicable)


@pytest.mark.parametrize("kind", DUAL_STREAM_KINDS)
def test_every_lxmert_kind_applies_a_statistic_iff_it_can_vary(kind):
    """On hand-built LXMERT-like records (random softmax rows): a direction can vary iff its raw values
    differ over heads, layers and two records; a pooled statistic iff one of its directions can."""
    _assert_applicable_iff_it_varies([dual_stream_record(seed=0), dual_stream_record(seed=1)], kind)


@pytest.fixture(scope="module")
def tiny_lxmert_records(tmp_path_factory):
    from PIL import Image

    from adapters.lxmert import LxmertAdapter
    from testkit.tiny_lxmert import make_tiny_lxmert

    adapter = LxmertAdapter.load(str(make_tiny_lxmert(tmp_path_factory.mktemp("lx_stats"), l_layers=2, r_layers=2)))
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(40, 56, 3) * 255).astype(np.uint8)) for _ in range(2)]
    return [adapter.run(im, q) for im, q in zip(images, ("what color is the shape?", "what shape is it?"))]


@pytest.mark.parametrize("kind", DUAL_STREAM_KINDS)
def test_the_real_tiny_lxmert_agrees_with_the_rule(tiny_lxmert_records, kind):
    """The same rule on the real adapter's records (grid regions, [CLS]/[SEP] in the language stream)."""
    assert set(tiny_lxmert_records[0].attention) == set(DUAL_STREAM_KINDS)
    _assert_applicable_iff_it_varies(tiny_lxmert_records, kind)


def test_constant_statistics_and_their_reasons():
    rec = dual_stream_record()
    # the constants by construction: every row of these kinds sends all its mass to the target keys
    for kind, stat in (("cross_l2v", "text_to_image"), ("vision_self", "image_to_image"),
                       ("cross_vision_self", "image_to_image")):
        np.testing.assert_allclose(_raw_direction(rec, kind, stat), 1.0, atol=1e-3)  # float16 rows
        assert "its keys are all image tokens" in not_applicable(kind, stat)
    assert not_applicable_message("vision_self", "text_to_text") == (
        "text → text is not applicable for kind vision_self: its queries are image tokens only.")
    assert not_applicable("lang_self", "text_to_image") == "its keys are words and special tokens only"
    assert "neither of its directions" in not_applicable("cross_l2v", "cross_modal")
    # the joint sequence of a single-stream model (and an unknown imported kind) varies everything
    assert all(not_applicable(k, s) is None for k in ("self", "imported") for s in HEAD_STATS)
    assert not_applicable("vision_self", "custom:my_metric") is None


def test_pooled_statistics_average_only_directions_that_apply():
    rec = dual_stream_record()
    hs = {k: dict(zip(v.names, v.values)) for k, v in compute_head_stats(rec).items()}
    # cross_v2l: image -> text varies, text -> image has no queries: cross-modal is image -> text alone
    np.testing.assert_allclose(hs["cross_v2l"]["cross_modal"], hs["cross_v2l"]["image_to_text"])
    # lang_self: intra-modal is text -> text alone
    np.testing.assert_allclose(hs["lang_self"]["intra_modal"], hs["lang_self"]["text_to_text"])
    # cross_l2v: text -> image is the constant 1.0: no pooled statistic is left
    assert np.isnan(hs["cross_l2v"]["cross_modal"]).all() and np.isnan(hs["cross_l2v"]["intra_modal"]).all()


def test_stores_written_before_the_rules_read_as_defined_now():
    """Old stores hold query-weighted pooled values and 1.0 for constants: readers recompute both."""
    names = list(HEAD_STATS)
    old = np.zeros((len(names), 1, 1), np.float32)
    old[names.index("text_to_image")] = 0.75
    old[names.index("image_to_text")] = 0.25
    old[names.index("image_to_image")] = 0.75
    old[names.index("text_to_text")] = 0.0
    old[names.index("cross_modal")] = (2 * 0.75 + 4 * 0.25) / 6  # weighted by 2 text and 4 image queries
    old[names.index("intra_modal")] = (2 * 0.0 + 4 * 0.75) / 6
    new = as_defined("self", names, old)
    assert new[names.index("cross_modal"), 0, 0] == pytest.approx(0.5)
    assert new[names.index("intra_modal"), 0, 0] == pytest.approx(0.375)
    assert old[names.index("cross_modal"), 0, 0] == pytest.approx(5 / 12)  # the input is not changed
    # a set of examples (example, stat, layer, head), and a dual-stream kind's stored constant 1.0
    l2v = np.ones((3, len(names), 2, 2), np.float32)
    got = as_defined("cross_l2v", names, l2v)
    assert np.isnan(got).all()
    v2l = np.random.default_rng(0).random((3, len(names), 2, 2)).astype(np.float32)
    got = as_defined("cross_v2l", names, v2l)
    np.testing.assert_allclose(got[:, names.index("cross_modal")], v2l[:, names.index("image_to_text")])
    assert np.isnan(got[:, names.index("text_to_image")]).all()
    # records computed now are unchanged by it
    for rec in (single_stream_record(), dual_stream_record()):
        for kind, hs in compute_head_stats(rec).items():
            np.testing.assert_allclose(as_defined(kind, hs.names, hs.values), hs.values, rtol=1e-6)
