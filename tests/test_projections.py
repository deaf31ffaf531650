"""Projections: token counts and labels kept, one coordinate system across layers, neighbours, pages render."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.projections import (fast_tsne, nearest_other_modality, project_layers, projection_rows,
                                  stack_streams)
from tests.view_records import dual_stream_record, find_frame, open_page, single_stream_record, write_store

PAGE = "views/projections.py"


def _clusters(rng, n_per=40, dims=30, k=3, sep=8.0):
    centers = rng.normal(size=(k, dims)) * sep
    labels = np.repeat(np.arange(k), n_per)
    return centers[labels] + rng.normal(size=(len(labels), dims)), labels


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_counts_and_one_coordinate_system(method):
    rng = np.random.default_rng(0)
    x, labels = _clusters(rng)  # 120 tokens in 3 clusters
    # layer 1 repeats layer 0 exactly; layer 2 differs. One joint fit must put layer 1 on layer 0.
    hidden = np.stack([x, x, rng.normal(size=x.shape) * 5])
    idx = np.arange(100, 220)
    proj = project_layers(hidden, idx, method, center=False)
    assert proj.coords.shape == (3, 120, 2)
    np.testing.assert_array_equal(proj.token_index, idx)
    spread = np.ptp(proj.coords.reshape(-1, 2), axis=0).max()
    if method == "pca":
        np.testing.assert_allclose(proj.coords[0], proj.coords[1], atol=1e-4 * spread)
    # Each cluster of layer 1 lands where the same cluster of layer 0 is, far from the other clusters
    # (separate per-layer fits would place, rotate and mirror clusters arbitrarily).
    c0 = np.stack([proj.coords[0][labels == c].mean(0) for c in range(3)])
    c1 = np.stack([proj.coords[1][labels == c].mean(0) for c in range(3)])
    same = np.linalg.norm(c0 - c1, axis=1)
    between = min(np.linalg.norm(c0[a] - c0[b]) for a in range(3) for b in range(a + 1, 3))
    assert same.max() < 0.1 * between


def test_centering_removes_layer_drift_only():
    rng = np.random.default_rng(1)
    x, _ = _clusters(rng)
    shifted = np.stack([x, x + 100.0])  # same tokens, the whole layer moved
    proj = project_layers(shifted, np.arange(len(x)), "pca", center=True)
    np.testing.assert_allclose(proj.coords[0], proj.coords[1], atol=1e-6 * np.ptp(proj.coords))
    raw = project_layers(shifted, np.arange(len(x)), "pca", center=False)
    assert np.abs(raw.coords[0] - raw.coords[1]).max() > 10


def test_fast_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(2)
    x, labels = _clusters(rng, n_per=60, dims=20, k=4)
    y = fast_tsne(x, seed=0)
    assert y.shape == (240, 2) and np.isfinite(y).all()
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :10]
    purity = (labels[nn] == labels[:, None]).mean()
    assert purity > 0.95
    np.testing.assert_array_equal(y, fast_tsne(x, seed=0))  # deterministic


def test_pca_recovers_a_line():
    """Points on a line in 3-D: all variance on the first axis, coordinates the signed distance along it."""
    t = np.linspace(-1, 1, 9)
    x = np.stack([t, 2 * t, np.zeros_like(t)], axis=1) + 5
    p = project_layers(x[None], np.arange(9), "pca")
    assert p.explained[0] == pytest.approx(1.0) and p.explained[1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(p.coords[0, :, 0], t * np.sqrt(5), atol=1e-6)  # largest loading (2t) positive
    np.testing.assert_allclose(p.coords[0, :, 1], 0, atol=1e-6)
    one = project_layers(np.ones((1, 1, 4)), np.arange(1), "pca")
    assert one.coords.shape == (1, 1, 2) and one.explained == (0.0, 0.0)
    assert project_layers(x[None], np.arange(9), "tsne").explained is None


@pytest.mark.parametrize("shape", [(40, 6), (5, 12)])  # covariance path and thin-SVD path
def test_one_layer_pca_matches_a_plain_svd(shape):
    """The Compare page's per-model PCA (one layer) gives what a textbook SVD PCA gives."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape) * np.arange(1, shape[1] + 1)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:2] * np.sign(vt[np.arange(2), np.abs(vt[:2]).argmax(1)])[:, None]
    p = project_layers(x[None], np.arange(shape[0]), "pca")
    np.testing.assert_allclose(p.coords[0], xc @ comps.T, atol=1e-4)
    np.testing.assert_allclose(p.explained, s[:2] ** 2 / (s ** 2).sum(), rtol=1e-6)


def test_rows_keep_labels():
    rec = single_stream_record()
    block = rec.hidden["joint"]
    proj = project_layers(block.values, block.token_index, "pca")
    rows = projection_rows(proj, 2, rec.tokens, rec.modality)
    assert list(rows["token"]) == list(rec.tokens)
    assert list(rows["modality"]) == list(rec.modality)
    assert len(rows["x"]) == rec.n_tokens


def test_stack_streams_and_mismatch():
    a = (np.zeros((3, 2, 4)), np.array([0, 1]))
    b = (np.ones((3, 3, 4)), np.array([2, 3, 4]))
    values, index, owner = stack_streams({"lang": a, "vision": b})
    assert values.shape == (3, 5, 4) and list(index) == [0, 1, 2, 3, 4]
    assert owner == ["lang", "lang", "vision", "vision", "vision"]
    with pytest.raises(ValueError, match="one stream at a time"):
        stack_streams({"lang": a, "vision": (np.ones((2, 3, 4)), np.array([2, 3, 4]))})


def test_nearest_other_modality():
    modality = ["special", "text", "text", "image", "image", "image"]
    v = np.array([[9, 9], [1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9], [-1, 0]], float)
    near = nearest_other_modality(v, np.arange(6), modality, 1, k=2)
    assert [n.token for n in near] == [3, 4]
    assert near[0].similarity == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert [n.token for n in nearest_other_modality(v, np.arange(6), modality, 4, k=5)] == [2, 1]
    assert nearest_other_modality(v, np.arange(6), modality, 0) == []  # special tokens have none


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("proj") / "hand.zarr", [dual_stream_record()], run="dual")


def test_page_dual_stream_streams(hand_store, monkeypatch):
    rec = dual_stream_record()
    at = open_page(monkeypatch, hand_store, PAGE, run="dual", ex="dual0")
    at.run()
    assert not at.exception, at.exception
    # lang (4 layers) and vision (3 layers) differ in depth: projected one stream at a time
    assert at.selectbox(key="proj_stream").options == ["lang", "vision"]
    for stream in ("lang", "vision"):
        at.selectbox(key="proj_stream").select(stream).run()
        assert not at.exception, at.exception
        pts = find_frame(at, "x", "y", "token", "modality")
        block = rec.hidden[stream]
        assert list(pts["token"]) == [rec.tokens[i] for i in block.token_index]


def test_tiny_vilt_store(tiny_store, monkeypatch):
    from store.zarr_store import VLStore

    reader = VLStore(tiny_store).run("tiny")
    eid = reader.example_ids()[0]
    tok = reader.tokens(eid)
    at = open_page(monkeypatch, tiny_store, PAGE, ex=eid, layer=1)
    at.run()
    assert not at.exception, at.exception
    pts = find_frame(at, "x", "y", "token", "modality")
    assert list(pts["token"]) == tok["tokens"] and list(pts["modality"]) == tok["modality"]
    assert "one joint fit over all 3 layers" in " ".join(c.value for c in at.caption)
    at.radio(key="proj_method").set_value("tsne").run()
    assert not at.exception, at.exception
    assert len(find_frame(at, "x", "y", "token")) == len(tok["tokens"])


def test_a_long_sequence_fits_a_sample_of_its_image_tokens():
    from analysis.projections import fit_sample

    modality = ["special"] * 5 + ["image"] * 280 + ["text"] * 15  # 300 tokens, 20 of them not image
    s = fit_sample(modality, 30, "tsne", max_points=3000)  # 100 tokens per layer: 20 words + 80 image
    assert s.step == 4 and (s.n_image, s.n_image_kept) == (280, 70) and s.sampled
    assert set(range(5)) | set(range(285, 300)) <= set(s.keep.tolist())  # every non-image token kept
    assert s.keep.tolist() == sorted(s.keep.tolist()) and 30 * len(s.keep) <= 3000
    assert s.keep[5:9].tolist() == [5, 9, 13, 17]  # evenly spaced image tokens
    assert not fit_sample(modality, 30, "pca", max_points=3000).sampled  # PCA fits every point
    assert not fit_sample(modality, 10, "umap", max_points=3000).sampled  # 3,000 points fit


def test_hidden_states_page_says_it_fits_a_sample(tmp_path, monkeypatch):
    import analysis.projections as projections
    from tests.test_generative_views import generative_record
    from tests.view_records import open_page, write_store

    path = write_store(tmp_path / "gen.zarr", [generative_record()], run="gen", provenance={"architecture": "generative"})
    monkeypatch.setattr(projections, "MAX_FIT_POINTS", 30)  # 3 layers x 15 tokens: 45 points
    at = open_page(monkeypatch, path, "views/projections.py", run="gen", method="tsne")
    at.run()
    assert not at.exception, at.exception
    # 11 non-image tokens keep 10 - 11 < 1 image slot per layer: one image token in 4 (the first)
    assert any("a sample of its image tokens, 1 of 4 (one in 4" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    assert any("11 tokens stacked" in c.value or "12 tokens stacked" in c.value for c in at.caption)
