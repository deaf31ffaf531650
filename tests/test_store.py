"""Zarr store: round trip, named dimensions, chunked reads, commit protocol and resume."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from analysis.head_stats import compute_head_stats
from core.errors import StoreError
from store.zarr_store import VLStore
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
    ex = root[f"runs/hand/examples/{rec.example_id}"]
    att = ex["attention/self/attention"]
    assert att.metadata.dimension_names == ("layer", "head", "query", "key")
    # one chunk per (layer, head), all in one shard (one file) per array
    assert att.dtype == np.float16 and att.chunks == (1, 1, rec.n_tokens, rec.n_tokens)
    assert att.shards == att.shape
    hid = ex["hidden/joint/hidden"]
    assert hid.metadata.dimension_names == ("layer", "token", "dim") and hid.dtype == np.float16
    assert hid.chunks == (1, *hid.shape[1:]) and hid.shards == hid.shape
    assert ex["image"].metadata.dimension_names == ("y", "x", "channel")
    # the small per-example arrays live in the group document, with their dimensions named
    hs = ex.attrs["head_stats"]["self"]
    assert hs["dims"] == ["stat", "layer", "head"]
    assert np.array(hs["values"]).shape == (len(hs["names"]), *rec.attention["self"].values.shape[:2])
    assert np.array(ex.attrs["token_boxes"]).shape == (rec.n_tokens, 4)


def test_an_example_is_its_arrays_and_their_coordinates(tmp_path):
    """File creation dominated a small model's recording: an example is its group document, the
    image, the token table, and per attention kind / hidden stream a shard and its coordinates,
    each array one metadata document and one chunk or shard file."""
    rec = grid_record(layers=4, heads=4)
    write(VLStore(tmp_path / "s.zarr", mode="a"), rec)
    ex = tmp_path / "s.zarr" / "runs" / "hand" / "examples" / rec.example_id
    files = sorted(p.relative_to(ex).as_posix() for p in ex.rglob("*") if p.is_file())
    arrays = ["image", "tokens", "modality", "token_boxes", "token_grid",
              "attention/self/attention", "hidden/joint/hidden"]  # queries, keys, rows: every token in order
    chunk = {"image": "c.0.0.0", "token_boxes": "c.0.0", "token_grid": "c.0.0",
             "attention/self/attention": "c.0.0.0.0", "hidden/joint/hidden": "c.0.0.0"}
    groups = ["", "attention/", "attention/self/", "hidden/", "hidden/joint/"]
    assert files == sorted([f"{a}/{chunk.get(a, 'c.0')}" for a in arrays] + [f"{a}/zarr.json" for a in arrays]
                           + [f"{g}zarr.json" for g in groups])


def test_chunks_are_compressed_by_what_they_hold(tmp_path):
    """float16 attention and hidden states: blosc's byte shuffle then lz4 (faster than zstd and
    smaller on them); the image: zstd; the token table (a few hundred bytes): not compressed."""
    rec = grid_record(layers=2, heads=2)
    write(VLStore(tmp_path / "s.zarr", mode="a"), rec)
    ex = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[f"runs/hand/examples/{rec.example_id}"]
    blosc = {"name": "blosc", "configuration": {"typesize": 2, "cname": "lz4", "clevel": 5, "shuffle": "shuffle",
                                                "blocksize": 0}}
    for name in ("attention/self/attention", "hidden/joint/hidden"):
        inner = ex[name].metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
        assert [c["name"] for c in inner] == ["bytes", "blosc"] and inner[1] == blosc, name
    assert [c["name"] for c in ex["image"].metadata.to_dict()["codecs"]] == ["bytes", "zstd"]
    assert [c["name"] for c in ex["tokens"].metadata.to_dict()["codecs"]] == ["vlen-utf8"]
    assert [c["name"] for c in ex["token_boxes"].metadata.to_dict()["codecs"]] == ["bytes"]
    chunk = tmp_path / "s.zarr" / "runs" / "hand" / "examples" / rec.example_id / "token_boxes" / "c.0.0"
    assert chunk.read_bytes() == rec.token_boxes.astype("<f4").tobytes()  # the raw float32 values


def _labelled_store(tmp_path):
    from tests.records import grid_record

    recs = [grid_record(layers=2, heads=3, example_id=f"ex{i}", seed=i) for i in range(3)]
    store = VLStore(tmp_path / "s.zarr", mode="a")
    w = store.writer("hand", {"model_id": "hand"})
    for r in recs:
        w.write(r, compute_head_stats(r))
    w.consolidate()
    return recs


def test_xarray_opens_an_example_labelled_and_without_warnings(tmp_path):
    import warnings

    xr = pytest.importorskip("xarray")
    rec = _labelled_store(tmp_path)[1]
    path = tmp_path / "s.zarr" / "runs" / "hand" / "examples" / rec.example_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # metadata consolidated: no "falling back" warning
        tree = xr.open_datatree(str(path), engine="zarr")
        ds = xr.open_zarr(str(path)).load()
    assert list(ds.tokens.values) == list(rec.tokens) and list(ds.modality.values) == list(rec.modality)
    image_boxes = ds.token_boxes.where(ds.modality == "image", drop=True).values
    np.testing.assert_array_equal(image_boxes, rec.token_boxes[np.asarray(rec.modality) == "image"])
    np.testing.assert_array_equal(ds.token_grid.values, rec.token_grid)
    np.testing.assert_array_equal(ds.image.values, rec.image)
    att = tree["attention/self"].to_dataset().attention
    assert att.dims == ("layer", "head", "query", "key")
    head = att.isel(layer=1, head=2)
    np.testing.assert_array_equal(head.values, rec.attention["self"].values[1, 2])
    hid = tree["hidden/joint"].to_dataset().hidden  # a stream over every token shares the token dimension
    assert hid.dims == ("layer", "token", "dim")
    assert hid.sizes["token"] == tree.to_dataset().sizes["token"] == rec.n_tokens
    np.testing.assert_array_equal(hid.isel(layer=2, token=4).values, rec.hidden["joint"].values[2, 4])


def test_xarray_selects_head_statistics_by_name_in_the_run_index(tmp_path):
    import warnings

    xr = pytest.importorskip("xarray")
    recs = _labelled_store(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(str(tmp_path / "s.zarr" / "runs" / "hand" / "index" / "head_stats" / "self"))
    stats = compute_head_stats(recs[2])["self"]
    got = ds.head_stats.sel(stat="text_to_image", example="ex2")
    assert got.dims == ("layer", "head")
    np.testing.assert_allclose(got.values, stats.values[list(stats.names).index("text_to_image")], atol=1e-6)
    assert list(ds.stat.values) == list(stats.names) and list(ds.layer.values) == [0, 1]
    assert sorted(ds.example.values) == ["ex0", "ex1", "ex2"]


def test_a_finished_run_opens_in_zarr_and_xarray_without_warnings(tmp_path):
    """The end of a run consolidates the run, ``runs`` and the root: xarray opens the store, a run
    or the whole tree without its "no consolidated metadata" warning, and zarr's consolidated view
    lists the run and its index. The examples are not in it: each is a hierarchy of its own,
    opened by its path (a run's metadata would otherwise grow with every example's arrays)."""
    import json
    import warnings

    xr = pytest.importorskip("xarray")
    _labelled_store(tmp_path)
    path = str(tmp_path / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        root = xr.open_zarr(path)
        run = xr.open_zarr(path, group="runs/hand")
        tree = xr.open_datatree(path, engine="zarr")
        ex = xr.open_zarr(f"{path}/runs/hand/examples/ex1")
    assert root.attrs["vl_lens"]["schema_version"] == 4 and run.attrs["provenance"]["model_id"] == "hand"
    stats = tree["runs/hand/index/head_stats/self"].to_dataset().head_stats
    assert sorted(stats.example.values) == ["ex0", "ex1", "ex2"] and ex.sizes["token"] > 0
    g = zarr.open_consolidated(path, mode="r")
    assert list(g["runs"].group_keys()) == ["hand"]
    assert sorted(g["runs/hand"].group_keys()) == ["index"]
    assert not (tmp_path / "s.zarr" / "runs" / "hand" / "examples" / "zarr.json").exists()
    # each document stays small: it lists the runs and their indexes, not the examples' arrays
    text = (tmp_path / "s.zarr" / "zarr.json").read_text()
    listed = json.loads(text)["consolidated_metadata"]["metadata"]
    kind = "runs/hand/index/head_stats/self"
    assert sorted(listed) == sorted(["runs", "runs/hand", "runs/hand/index", "runs/hand/index/summary",
                                     "runs/hand/index/example", "runs/hand/index/head_stats", kind,
                                     *(f"{kind}/{a}" for a in ("head_stats", "example", "stat", "layer", "head"))])
    assert "what color" not in text  # the index's summary rows are an array, not copied into the documents
    index = tree["runs/hand/index"].to_dataset()  # one JSON summary row per example, labelled by its id
    assert json.loads(str(index.summary.sel(example="ex2").values))["example_id"] == "ex2"


def test_writing_another_run_drops_then_reconsolidates_the_metadata(tmp_path):
    """While a writer works, the store's consolidated documents would be stale: they are dropped
    (zarr and xarray read the store itself meanwhile) and rewritten by its ``consolidate``."""
    import warnings

    xr = pytest.importorskip("xarray")
    _labelled_store(tmp_path)
    path = str(tmp_path / "s.zarr")
    store = VLStore(path, mode="a")
    w = store.writer("second", {"model_id": "other"})
    for p in ("", "runs"):
        with pytest.raises(ValueError, match="onsolidated"):  # none while the store changes
            zarr.open_consolidated(path, path=p, mode="r")
    zarr.open_consolidated(path, path="runs/hand", mode="r")  # a run it does not touch keeps its own
    rec = grid_record(layers=2, heads=3, example_id="new", seed=7)
    w.write(rec, compute_head_stats(rec))
    assert w.consolidate() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(path, engine="zarr")
        xr.open_zarr(path, group="runs/hand")
    assert sorted(tree["runs"].children) == ["hand", "second"]
    assert list(tree["runs/second/index/head_stats/self"].to_dataset().example.values) == ["new"]
    assert sorted(zarr.open_consolidated(path, mode="r")["runs"].group_keys()) == ["hand", "second"]
    assert VLStore(path).run("hand").example_ids() == ["ex0", "ex1", "ex2"]  # the first run: as it was


def test_reading_one_head_reads_one_chunk(tmp_path, monkeypatch):
    rec = grid_record(layers=4, heads=4)
    store = VLStore(tmp_path / "s.zarr", mode="a")
    write(store, rec)
    reader = VLStore(tmp_path / "s.zarr").run("hand")
    from zarr.storage import LocalStore

    seen = []
    original = LocalStore.get

    async def counting_get(self, key, prototype, byte_range=None):
        buf = await original(self, key, prototype, byte_range)
        seen.append((key, byte_range, 0 if buf is None else len(buf)))
        return buf

    monkeypatch.setattr(LocalStore, "get", counting_get)
    head = reader.attention(rec.example_id, "self", layer=2, head=3)
    np.testing.assert_allclose(head, rec.attention["self"].values[2, 3].astype(np.float32))
    shard = f"runs/hand/examples/{rec.example_id}/attention/self/attention/c.0.0.0.0"
    reads = [(r, n) for k, r, n in seen if "/c." in k]
    assert all(k == shard for k, _, _ in seen if "/c." in k)
    # two ranged reads of the shard: its index (16 chunks x 16 bytes + a 4-byte CRC), then the chunk
    assert len(reads) == 2 and all(r is not None for r, _ in reads)
    assert reads[0][1] == 4 * 4 * 16 + 4
    shard_size = (tmp_path / "s.zarr" / shard).stat().st_size
    assert reads[1][1] < shard_size / 8  # one of 16 chunks, not the shard
    assert not any("hidden" in k or "image" in k for k, _, _ in seen)


def test_reading_one_layer_of_hidden_states_reads_one_chunk(tmp_path, monkeypatch):
    rec = grid_record(layers=4, heads=2)
    write(VLStore(tmp_path / "s.zarr", mode="a"), rec)
    reader = VLStore(tmp_path / "s.zarr").run("hand")
    from zarr.storage import LocalStore

    sizes = []
    original = LocalStore.get

    async def counting_get(self, key, prototype, byte_range=None):
        buf = await original(self, key, prototype, byte_range)
        if "/c." in key:
            sizes.append(0 if buf is None else len(buf))
        return buf

    monkeypatch.setattr(LocalStore, "get", counting_get)
    values, token_index = reader.hidden(rec.example_id, "joint", layer=3)
    np.testing.assert_array_equal(values, rec.hidden["joint"].values[3].astype(np.float32))
    shard = tmp_path / "s.zarr" / "runs" / "hand" / "examples" / rec.example_id / "hidden" / "joint" / "hidden" / "c.0.0.0"
    assert len(sizes) == 2 and sum(sizes) < shard.stat().st_size / 2  # index + one of 5 layers


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
