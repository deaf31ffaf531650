"""The store's fast example writer produces exactly what zarr's own writer produces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr


def _docs_and_chunks(root: Path) -> tuple[dict, set]:
    docs, chunks = {}, set()
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if p.name == "zarr.json":
                docs[rel] = json.loads(p.read_text())
            else:
                chunks.add(rel)
    return docs, chunks


def test_fast_writer_matches_zarr_writer(tmp_path, tiny_vilt, rgb_image, monkeypatch):
    import store.shard_writer as sw
    import store.zarr_store as zs
    from analysis.head_stats import compute_head_stats

    rec = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    stats = compute_head_stats(rec)
    used = []
    encode = sw.encode_arrays
    monkeypatch.setattr(sw, "encode_arrays", lambda arrays: used.append(encode(arrays)) or used[-1])
    fast = zs.VLStore(tmp_path / "fast.zarr", mode="a")
    assert fast.writer("r", {"model_id": "m"}).write(rec, stats) is True
    assert used and used[0] is not None  # the fast path wrote it (it steps aside when zarr's defaults differ)
    with monkeypatch.context() as m:  # force zarr's own encoder (the fallback path)
        m.setattr(sw, "encode_arrays", lambda arrays: None)
        slow = zs.VLStore(tmp_path / "slow.zarr", mode="a")
        assert slow.writer("r", {"model_id": "m"}).write(rec, stats) is True
    fast_docs, fast_chunks = _docs_and_chunks(tmp_path / "fast.zarr")
    slow_docs, slow_chunks = _docs_and_chunks(tmp_path / "slow.zarr")
    assert fast_docs == slow_docs  # same nodes, same metadata, attributes and commit marker
    assert fast_chunks == slow_chunks  # same files
    # byte for byte what zarr writes: the chunks, their order in the shard, the index and its CRC
    for key in fast_chunks:
        assert (tmp_path / "fast.zarr" / key).read_bytes() == (tmp_path / "slow.zarr" / key).read_bytes(), key
    base = f"runs/r/examples/{rec.example_id}"
    att = zarr.open_array(str(tmp_path / "fast.zarr"), path=f"{base}/attention/self/attention", mode="r")
    L, H, Q, K = rec.attention["self"].values.shape
    assert att.chunks == (1, 1, Q, K) and att.shards == (L, H, Q, K)  # one chunk per (layer, head)
    for doc in fast_docs:
        if fast_docs[doc]["node_type"] != "array":
            continue
        path = doc.removesuffix("/zarr.json")
        a = zarr.open_array(str(tmp_path / "fast.zarr"), path=path, mode="r")[...]
        b = zarr.open_array(str(tmp_path / "slow.zarr"), path=path, mode="r")[...]
        np.testing.assert_array_equal(a, b)
    back = zs.VLStore(tmp_path / "fast.zarr").run("r").record(rec.example_id)
    np.testing.assert_array_equal(back.attention["self"].values, rec.attention["self"].values)
    np.testing.assert_array_equal(back.hidden["joint"].values, rec.hidden["joint"].values)
    assert back.tokens == rec.tokens and back.prediction == rec.prediction


def test_rewrite_replaces_a_leftover_and_skips_a_committed_example(tmp_path, tiny_vilt, rgb_image):
    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    rec = tiny_vilt.run(rgb_image, "what color is the shape?")
    store = VLStore(tmp_path / "s.zarr", mode="a")
    w = store.writer("r", {"model_id": "m"})
    leftover = tmp_path / "s.zarr" / "runs" / "r" / "examples" / rec.example_id / "attention" / "self" / "junk"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half")
    assert not w.is_committed(rec.example_id)
    assert w.write(rec, compute_head_stats(rec)) is True
    assert not leftover.exists()
    assert w.is_committed(rec.example_id)
    assert w.write(rec, compute_head_stats(rec)) is False


def _write_version1(path: Path, rec, stats) -> None:
    """A store as VL-Lens wrote it before version 2: one file per chunk under zarr's default nested
    keys, the token coordinates and head statistics as arrays of their own."""
    root = zarr.open_group(str(path), mode="w")
    root.attrs["vl_lens"] = {"format": "vl-lens-store", "schema_version": 1}
    run = root.create_group("runs/r")
    run.attrs["provenance"] = {"model_id": "m", "attention_kinds": ["self"]}
    ex = run.create_group(f"examples/{rec.example_id}")

    def put(name, data, dims, chunks=None, attrs=None):
        arr = ex.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks or data.shape,
                              dimension_names=dims, attributes=attrs or {})
        arr[...] = data

    put("image", rec.image, ("y", "x", "channel"))
    put("token_boxes", rec.token_boxes, ("token", "coord"))
    put("token_grid", rec.token_grid, ("token", "axis"))
    put("token_spans", rec.token_spans, ("token", "bound"))
    att = rec.attention["self"]
    L, H, Q, K = att.values.shape
    put("attention/self", att.values, ("layer", "head", "query", "key"), (1, 1, Q, K),
        {"query_index": att.query_index.tolist(), "key_index": att.key_index.tolist()})
    hid = rec.hidden["joint"]
    put("hidden/joint", hid.values, ("layer", "token", "dim"), (1, *hid.values.shape[1:]),
        {"token_index": hid.token_index.tolist()})
    for kind, hs in stats.items():
        put(f"head_stats/{kind}", hs.values.astype(np.float32), ("stat", "layer", "head"), None,
            {"names": list(hs.names)})
    pred = rec.prediction
    summary = {"example_id": rec.example_id, "question": rec.question, "label": rec.label, "answer": pred.top,
               "confidence": pred.confidence, "answers": list(pred.answers),
               "probabilities": list(pred.probabilities), "correct": rec.correct, "source_key": None,
               "n_tokens": rec.n_tokens, "group": None}
    ex.attrs.update({"question": rec.question, "tokens": list(rec.tokens), "modality": list(rec.modality),
                     "prediction": {"answers": list(pred.answers), "probabilities": list(pred.probabilities)},
                     "label": rec.label, "source_key": None, "notices": [], "meta": {}, "summary": summary,
                     "committed": True})


def test_version1_stores_still_read_and_take_new_examples(tmp_path, tiny_vilt, rgb_image):
    from analysis.head_stats import compute_head_stats
    import store.zarr_store as zs

    old = tiny_vilt.run(rgb_image, "what shape is this?", label="circle")
    old_stats = compute_head_stats(old)
    _write_version1(tmp_path / "old.zarr", old, old_stats)
    att_dir = tmp_path / "old.zarr" / "runs" / "r" / "examples" / old.example_id / "attention" / "self"
    assert (att_dir / "c" / "1" / "0" / "0" / "0").is_file()  # the old nested one-file-per-chunk layout
    run = zs.VLStore(tmp_path / "old.zarr").run("r")
    np.testing.assert_array_equal(run.attention(old.example_id, "self", layer=1, head=0),
                                  old.attention["self"].values[1, 0])
    back = run.record(old.example_id)
    np.testing.assert_array_equal(back.hidden["joint"].values, old.hidden["joint"].values)
    np.testing.assert_array_equal(back.token_boxes, old.token_boxes)
    np.testing.assert_array_equal(back.token_spans, old.token_spans)
    names, values = run.head_stats(old.example_id)["self"]
    assert names == list(old_stats["self"].names)
    np.testing.assert_array_equal(values, old_stats["self"].values.astype(np.float32))

    # Writing into it: the new example is version 4, so the store says version 4 (an older
    # VL-Lens then asks to be upgraded instead of failing on it); both examples read.
    new = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    assert new.example_id != old.example_id
    new_stats = compute_head_stats(new)
    writer = zs.VLStore(tmp_path / "old.zarr", mode="a").writer("r", {"model_id": "m"})
    assert writer.write(new, new_stats) is True
    root = json.loads((tmp_path / "old.zarr" / "zarr.json").read_text())
    assert root["attributes"]["vl_lens"]["schema_version"] == zs.SCHEMA_VERSION == 4
    assert writer.consolidate() == 2
    run = zs.VLStore(tmp_path / "old.zarr").run("r")
    ids, names, stats = run.head_stats_all("self")
    assert sorted(ids) == sorted([old.example_id, new.example_id])
    by_id = dict(zip(ids, stats))
    np.testing.assert_array_equal(by_id[new.example_id], new_stats["self"].values.astype(np.float32))
    np.testing.assert_array_equal(by_id[old.example_id], old_stats["self"].values.astype(np.float32))
    np.testing.assert_array_equal(run.record(new.example_id).attention["self"].values, new.attention["self"].values)


def test_object_store_path_writes_the_same_files(tmp_path, tiny_vilt, rgb_image):
    """An fsspec store (here fsspec's in-memory file system, standing in for S3) takes the
    asynchronous write path; it must write exactly the files the local fast path writes."""
    fsspec = pytest.importorskip("fsspec")
    from analysis.head_stats import compute_head_stats
    import store.zarr_store as zs

    rec = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    stats = compute_head_stats(rec)
    root = f"/vl-lens-test-{tmp_path.name}/s.zarr"
    mem = fsspec.filesystem("memory")
    try:
        writer = zs.VLStore(f"memory://{root}", mode="a").writer("r", {"model_id": "m"})
        assert writer.write(rec, stats) is True
        assert writer.write(rec, stats) is False  # committed: skipped, as on disk
        zs.VLStore(tmp_path / "local.zarr", mode="a").writer("r", {"model_id": "m"}).write(rec, stats)
        base = f"runs/r/examples/{rec.example_id}"
        local = {p.relative_to(tmp_path / "local.zarr" / base).as_posix(): p.read_bytes()
                 for p in (tmp_path / "local.zarr" / base).rglob("*") if p.is_file()}
        remote = {p.removeprefix(f"{root}/{base}/"): mem.cat_file(p) for p in mem.find(f"{root}/{base}")}
        assert remote.keys() == local.keys()
        for key in local:
            if key == "zarr.json":  # the group document: same JSON (key order may differ)
                assert json.loads(remote[key]) == json.loads(local[key])
            else:
                assert remote[key] == local[key], key
        run = zs.VLStore(f"memory://{root}").run("r")
        np.testing.assert_array_equal(run.attention(rec.example_id, "self", layer=1, head=0),
                                      rec.attention["self"].values[1, 0].astype(np.float32))
    finally:
        mem.rm(root.split("/s.zarr")[0], recursive=True)


@pytest.mark.parametrize("leftover_doc", [b"[1, 2]", b'{"attributes": []}', b'{"attributes": {"committed": "yes"}}',
                                          b'{"zarr_format": 3', b""])
def test_a_leftover_with_an_odd_group_document_is_rewritten(tmp_path, leftover_doc):
    """Whatever a killed run or another program left as the example's document, unless it is a
    committed group document the writer replaces the example instead of failing or skipping it."""
    from store.zarr_store import VLStore
    from tests.records import grid_record

    rec = grid_record()
    w = VLStore(tmp_path / "s.zarr", mode="a").writer("r", {"model_id": "m"})
    ex = tmp_path / "s.zarr" / "runs" / "r" / "examples" / rec.example_id
    ex.mkdir(parents=True)
    (ex / "zarr.json").write_bytes(leftover_doc)
    assert w.write(rec) is True
    assert w.is_committed(rec.example_id)
    np.testing.assert_array_equal(VLStore(tmp_path / "s.zarr").run("r").record(rec.example_id).image, rec.image)


def _write_version2(path: Path, recs_stats) -> None:
    """A store as VL-Lens wrote it in version 2: attention/<kind> and hidden/<stream> are sharded
    arrays themselves (no coordinate arrays), the token table and head statistics JSON in the
    example's group document, and the run index one (example, stat, layer, head) array per kind."""
    root = zarr.open_group(str(path), mode="w")
    root.attrs["vl_lens"] = {"format": "vl-lens-store", "schema_version": 2}
    run = root.create_group("runs/r")
    run.attrs["provenance"] = {"model_id": "m", "attention_kinds": ["self"]}
    rows = []
    for rec, stats in recs_stats:
        ex = run.create_group(f"examples/{rec.example_id}")
        img = ex.create_array("image", shape=rec.image.shape, dtype="uint8", dimension_names=("y", "x", "channel"))
        img[...] = rec.image
        att = rec.attention["self"]
        L, H, Q, K = att.values.shape
        a = ex.create_array("attention/self", shape=att.values.shape, dtype="float16", chunks=(1, 1, Q, K),
                            shards=att.values.shape, dimension_names=("layer", "head", "query", "key"),
                            attributes={"query_index": att.query_index.tolist(), "key_index": att.key_index.tolist()})
        a[...] = att.values
        hid = rec.hidden["joint"]
        h = ex.create_array("hidden/joint", shape=hid.values.shape, dtype="float16", chunks=(1, *hid.values.shape[1:]),
                            shards=hid.values.shape, dimension_names=("layer", "token", "dim"),
                            attributes={"token_index": hid.token_index.tolist()})
        h[...] = hid.values
        pred = rec.prediction
        summary = {"example_id": rec.example_id, "question": rec.question, "label": rec.label, "answer": pred.top,
                   "confidence": pred.confidence, "answers": list(pred.answers),
                   "probabilities": list(pred.probabilities), "correct": rec.correct, "source_key": None,
                   "n_tokens": rec.n_tokens, "group": None}
        rows.append(summary)
        nan_free = lambda a: np.where(np.isfinite(a), a.astype(object), None).tolist()  # noqa: E731
        ex.attrs.update({
            "question": rec.question, "tokens": list(rec.tokens), "modality": list(rec.modality),
            "prediction": {"answers": list(pred.answers), "probabilities": list(pred.probabilities)},
            "label": rec.label, "source_key": None, "notices": [], "meta": {}, "summary": summary,
            "token_boxes": nan_free(rec.token_boxes), "token_grid": rec.token_grid.tolist(),
            "token_spans": rec.token_spans.tolist(),
            "head_stats": {k: {"names": list(hs.names), "dims": ["stat", "layer", "head"],
                               "values": hs.values.astype(np.float32).tolist()} for k, hs in stats.items()},
            "committed": True})
    idx = run.create_group("index")
    values = np.stack([s["self"].values for _, s in recs_stats]).astype(np.float32)
    arr = idx.create_array("head_stats/self", shape=values.shape, dtype="float32",
                           dimension_names=("example", "stat", "layer", "head"),
                           attributes={"names": list(recs_stats[0][1]["self"].names)})
    arr[...] = values
    idx.attrs["examples"] = rows


def test_version2_stores_still_read_and_take_version4_examples(tmp_path, tiny_vilt, rgb_image):
    from analysis.head_stats import compute_head_stats
    import store.zarr_store as zs

    olds = [tiny_vilt.run(rgb_image, q, label="red") for q in ("what shape is this?", "is it red?")]
    old_stats = [compute_head_stats(r) for r in olds]
    _write_version2(tmp_path / "v2.zarr", list(zip(olds, old_stats)))
    run = zs.VLStore(tmp_path / "v2.zarr").run("r")
    ids, names, stats = run.head_stats_all("self")  # from the version-2 index array
    assert ids == [r.example_id for r in olds] and names == list(old_stats[0]["self"].names)
    np.testing.assert_array_equal(stats[1], old_stats[1]["self"].values.astype(np.float32))
    old = olds[0]
    np.testing.assert_array_equal(run.attention(old.example_id, "self", layer=1, head=0),
                                  old.attention["self"].values[1, 0].astype(np.float32))
    back = run.record(old.example_id)
    np.testing.assert_array_equal(back.hidden["joint"].values, old.hidden["joint"].values)
    np.testing.assert_array_equal(back.token_boxes, old.token_boxes)
    assert back.tokens == old.tokens and back.prediction == old.prediction

    # A version-4 example beside them: the store says version 4, everything reads, and the index
    # is rewritten in the version-3/4 layout over all three.
    new = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    writer = zs.VLStore(tmp_path / "v2.zarr", mode="a").writer("r", {"model_id": "m"})
    assert writer.write(new, compute_head_stats(new)) is True
    assert writer.consolidate() == 3
    root = json.loads((tmp_path / "v2.zarr" / "zarr.json").read_text())
    assert root["attributes"]["vl_lens"]["schema_version"] == 4
    run = zs.VLStore(tmp_path / "v2.zarr").run("r")
    assert (tmp_path / "v2.zarr" / "runs" / "r" / "index" / "head_stats" / "self" / "head_stats").is_dir()
    ids, _, stats = run.head_stats_all("self")
    assert sorted(ids) == sorted([*(r.example_id for r in olds), new.example_id])
    for r in (*olds, new):
        got = run.record(r.example_id)
        np.testing.assert_array_equal(got.attention["self"].values, r.attention["self"].values)
        np.testing.assert_array_equal(got.hidden["joint"].values, r.hidden["joint"].values)
        assert got.tokens == r.tokens and got.modality == r.modality


def _write_version3(path: Path, recs_stats, monkeypatch) -> None:
    """A store as VL-Lens wrote it in version 3: the example layout of today, every chunk zstd
    level -1, ``examples/`` a group, nothing above an example or the index consolidated."""
    import store.zarr_store as zs

    plans = zs._array_plans
    with monkeypatch.context() as m:
        m.setattr(zs, "_array_plans", lambda rec: [p._replace(codec="zstd") for p in plans(rec)])
        w = zs.VLStore(path, mode="a").writer("r", {"model_id": "m", "attention_kinds": ["self"]})
        for rec, stats in recs_stats:
            w.write(rec, stats)
        rows = w.consolidate()
    assert rows == len(recs_stats)
    for doc_path in (path / "zarr.json", path / "runs" / "zarr.json", path / "runs" / "r" / "zarr.json"):
        doc = json.loads(doc_path.read_text())
        doc.pop("consolidated_metadata", None)
        if doc_path == path / "zarr.json":
            doc["attributes"]["vl_lens"]["schema_version"] = 3
        doc_path.write_text(json.dumps(doc))
    (path / "runs" / "r" / "examples" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))


def test_version3_stores_still_read_and_take_version4_examples(tmp_path, tiny_vilt, rgb_image, monkeypatch):
    """Version 3 (as written until store version 4): zstd chunks, ``examples/`` a group, nothing
    consolidated above the examples. It reads; writing into it upgrades it to version 4: the
    ``examples`` group document goes (the run's consolidated metadata then covers its index only),
    and the store opens in xarray without a warning."""
    import warnings

    xr = pytest.importorskip("xarray")
    from analysis.head_stats import compute_head_stats
    import store.zarr_store as zs

    olds = [tiny_vilt.run(rgb_image, q, label="red") for q in ("what shape is this?", "is it red?")]
    old_stats = [compute_head_stats(r) for r in olds]
    store = tmp_path / "v3.zarr"
    _write_version3(store, list(zip(olds, old_stats)), monkeypatch)
    ex_dir = store / "runs" / "r" / "examples"
    att_doc = json.loads((ex_dir / olds[0].example_id / "attention" / "self" / "attention" / "zarr.json").read_text())
    assert att_doc["codecs"][0]["configuration"]["codecs"][1]["name"] == "zstd"  # written as version 3 did
    run = zs.VLStore(store).run("r")
    for r, st in zip(olds, old_stats):
        back = run.record(r.example_id)
        np.testing.assert_array_equal(back.attention["self"].values, r.attention["self"].values)
        np.testing.assert_array_equal(back.hidden["joint"].values, r.hidden["joint"].values)
        np.testing.assert_array_equal(back.token_boxes, r.token_boxes)
        assert back.tokens == r.tokens and back.prediction == r.prediction
        np.testing.assert_array_equal(run.head_stats(r.example_id)["self"][1], st["self"].values.astype(np.float32))

    new = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    writer = zs.VLStore(store, mode="a").writer("r", {"model_id": "m"})
    assert writer.write(new, compute_head_stats(new)) is True
    assert writer.consolidate() == 3
    assert json.loads((store / "zarr.json").read_text())["attributes"]["vl_lens"]["schema_version"] == 4
    assert not (ex_dir / "zarr.json").exists()
    run = zs.VLStore(store).run("r")
    assert sorted(run.example_ids()) == sorted([*(r.example_id for r in olds), new.example_id])
    for r in (*olds, new):
        np.testing.assert_array_equal(run.record(r.example_id).attention["self"].values, r.attention["self"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(str(store), engine="zarr")
    assert tree["runs/r/index/head_stats/self"].to_dataset().head_stats.sizes["example"] == 3


def test_dual_stream_example_opens_as_one_aligned_tree(tmp_path):
    """LXMERT's kinds differ in layers and query / key sizes and its hidden streams cover some tokens
    only: each kind and stream is its own group, so xarray's tree opens (its groups must align)."""
    xr = pytest.importorskip("xarray")
    from adapters.lxmert import LxmertAdapter
    from analysis.head_stats import compute_head_stats
    from PIL import Image
    from store.zarr_store import VLStore
    from testkit.tiny_lxmert import make_tiny_lxmert

    adapter = LxmertAdapter.load(str(make_tiny_lxmert(tmp_path / "lx")))
    rec = adapter.run(Image.new("RGB", (48, 32), (200, 30, 30)), "what color is it?")
    assert len({b.values.shape for b in rec.attention.values()}) > 1  # kinds of different shapes
    VLStore(tmp_path / "s.zarr", mode="a").writer("lx", adapter.provenance()).write(rec, compute_head_stats(rec))
    tree = xr.open_datatree(str(tmp_path / "s.zarr" / "runs" / "lx" / "examples" / rec.example_id), engine="zarr")
    for kind, block in rec.attention.items():
        att = tree[f"attention/{kind}"].to_dataset().attention
        for dim, index in (("query", block.query_index), ("key", block.key_index)):
            positions = att[dim].values if dim in att.coords else np.arange(rec.n_tokens)  # every token: none
            np.testing.assert_array_equal(positions, index)
        np.testing.assert_array_equal(att.values, block.values)
    for stream, block in rec.hidden.items():
        ds = tree[f"hidden/{stream}"].to_dataset()
        dim = ds.hidden.dims[1]
        positions = np.arange(rec.n_tokens) if dim == "token" else ds[dim].values
        np.testing.assert_array_equal(positions, block.token_index)
        np.testing.assert_array_equal(ds.hidden.values, block.values)
    back = VLStore(tmp_path / "s.zarr").run("lx").record(rec.example_id)
    assert set(back.attention) == set(rec.attention) and set(back.hidden) == set(rec.hidden)
