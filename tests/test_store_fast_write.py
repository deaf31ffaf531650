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
    att = zarr.open_array(str(tmp_path / "fast.zarr"), path=f"{base}/attention/self", mode="r")
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

    # Writing into it: the new example is version 2, so the store says version 2 (an older
    # VL-Lens then asks to be upgraded instead of failing on it); both examples read.
    new = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    assert new.example_id != old.example_id
    new_stats = compute_head_stats(new)
    writer = zs.VLStore(tmp_path / "old.zarr", mode="a").writer("r", {"model_id": "m"})
    assert writer.write(new, new_stats) is True
    root = json.loads((tmp_path / "old.zarr" / "zarr.json").read_text())
    assert root["attributes"]["vl_lens"]["schema_version"] == zs.SCHEMA_VERSION == 2
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
