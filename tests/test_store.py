"""Zarr store: round trip, named dimensions, chunked reads, commit protocol and resume."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from analysis.head_stats import compute_head_stats
from store.zarr_store import StoreError, VLStore
from tests.records import grid_record


def write(store, rec, run="hand"):
    w = store.writer(run, {"model_id": "hand", "attention_kinds": list(rec.attention)})
    return w.write(rec, compute_head_stats(rec)), w


def test_round_trip_is_exact(tmp_path):
    rec = grid_record(layers=3, heads=2)
    store = VLStore(tmp_path / "s.zarr", mode="a")
    ok, w = write(store, rec)
    assert ok
    back = VLStore(tmp_path / "s.zarr").run("hand").record(rec.example_id)
    assert back.tokens == rec.tokens and back.modality == rec.modality and back.question == rec.question
    np.testing.assert_array_equal(back.attention["self"].values, rec.attention["self"].values)
    np.testing.assert_array_equal(back.hidden["joint"].values, rec.hidden["joint"].values)
    np.testing.assert_array_equal(back.token_boxes, rec.token_boxes)
    np.testing.assert_array_equal(back.token_grid, rec.token_grid)
    np.testing.assert_array_equal(back.image, rec.image)
    assert back.prediction == rec.prediction and back.label == rec.label and back.correct is True


def test_arrays_have_named_dimensions_and_float16(tmp_path):
    rec = grid_record()
    store = VLStore(tmp_path / "s.zarr", mode="a")
    write(store, rec)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    att = root[f"runs/hand/examples/{rec.example_id}/attention/self"]
    assert att.metadata.dimension_names == ("layer", "head", "query", "key")
    assert att.dtype == np.float16 and att.chunks == (1, 1, rec.n_tokens, rec.n_tokens)
    hid = root[f"runs/hand/examples/{rec.example_id}/hidden/joint"]
    assert hid.metadata.dimension_names == ("layer", "token", "dim") and hid.dtype == np.float16
    hs = root[f"runs/hand/examples/{rec.example_id}/head_stats/self"]
    assert hs.metadata.dimension_names == ("stat", "layer", "head")


def test_xarray_sees_named_dimensions(tmp_path):
    xr = pytest.importorskip("xarray")
    rec = grid_record(layers=2, heads=3)
    store = VLStore(tmp_path / "s.zarr", mode="a")
    write(store, rec)
    ds = xr.open_zarr(str(tmp_path / "s.zarr"), group=f"runs/hand/examples/{rec.example_id}/attention",
                      consolidated=False, zarr_format=3)
    assert ds["self"].dims == ("layer", "head", "query", "key")
    assert ds["self"].shape == (2, 3, rec.n_tokens, rec.n_tokens)


def test_reading_one_head_reads_one_chunk(tmp_path, monkeypatch):
    rec = grid_record(layers=4, heads=4)
    store = VLStore(tmp_path / "s.zarr", mode="a")
    write(store, rec)
    reader = VLStore(tmp_path / "s.zarr").run("hand")
    from zarr.storage import LocalStore

    seen = []
    original = LocalStore.get

    async def counting_get(self, key, *a, **kw):
        seen.append(key)
        return await original(self, key, *a, **kw)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    head = reader.attention(rec.example_id, "self", layer=2, head=3)
    np.testing.assert_allclose(head, rec.attention["self"].values[2, 3].astype(np.float32))
    chunks = [k for k in seen if "/c." in k]
    assert chunks == [f"runs/hand/examples/{rec.example_id}/attention/self/c.2.3.0.0"]
    assert not any("hidden" in k or "image" in k for k in seen)


def test_uncommitted_example_is_invisible_and_resume_rewrites_it(tmp_path):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    a, b = grid_record(example_id="a"), grid_record(example_id="b", seed=1)
    write(store, a)
    # simulate a run killed mid-example: arrays written, commit marker never set
    g = zarr.open_group(str(tmp_path / "s.zarr"), path="runs/hand/examples/b", mode="w")
    g.create_array("image", shape=(2, 2, 3), dtype="uint8")
    reader = VLStore(tmp_path / "s.zarr").run("hand")
    assert reader.example_ids() == ["a"]
    with pytest.raises(StoreError, match="no committed example"):
        reader.record("b")
    w = store.writer("hand", {"model_id": "hand"})
    assert w.committed_ids() == {"a"}
    assert w.write(a, compute_head_stats(a)) is False  # committed: skipped
    assert w.write(b, compute_head_stats(b)) is True  # leftover replaced
    assert sorted(reader.example_ids()) == ["a", "b"]
    np.testing.assert_array_equal(reader.record("b").image, b.image)


def test_index_and_unindexed_examples_merge(tmp_path):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    recs = [grid_record(example_id=f"e{i}", seed=i, layers=2, heads=2) for i in range(3)]
    w = store.writer("hand", {"model_id": "hand"})
    for r in recs[:2]:
        w.write(r, compute_head_stats(r))
    assert w.consolidate() == 2
    w.write(recs[2], compute_head_stats(recs[2]))  # written after the index
    reader = VLStore(tmp_path / "s.zarr").run("hand")
    ids, names, arr = reader.head_stats_all("self")
    assert sorted(ids) == ["e0", "e1", "e2"] and arr.shape == (3, len(names), 2, 2)
    for eid, block in zip(ids, arr):
        rec = recs[int(eid[1])]
        np.testing.assert_allclose(block, compute_head_stats(rec)["self"].values, rtol=1e-6)


def test_foreign_newer_and_missing_stores_are_refused(tmp_path):
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").create_array("x", shape=(1,), dtype="f4")
    with pytest.raises(StoreError, match="not a VL-Lens store"):
        VLStore(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="another tool"):
        VLStore(tmp_path / "foreign.zarr", mode="a")
    g = zarr.open_group(str(tmp_path / "newer.zarr"), mode="w")
    g.attrs["vl_lens"] = {"format": "vl-lens-store", "schema_version": 99}
    with pytest.raises(StoreError, match="version 99"):
        VLStore(tmp_path / "newer.zarr")
    with pytest.raises(StoreError, match="no store"):
        VLStore(tmp_path / "missing.zarr")


def test_run_names_are_validated_and_models_not_mixed(tmp_path):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    with pytest.raises(StoreError, match="run name"):
        store.writer("../evil", {"model_id": "m"})
    store.writer("r", {"model_id": "m1"})
    with pytest.raises(StoreError, match="already holds model"):
        store.writer("r", {"model_id": "m2"})
