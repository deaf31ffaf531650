"""The store's fast example writer produces exactly what zarr's own writer produces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    import store.zarr_store as zs
    from analysis.head_stats import compute_head_stats

    rec = tiny_vilt.run(rgb_image, "what color is the shape?", label="red")
    stats = compute_head_stats(rec)
    fast = zs.VLStore(tmp_path / "fast.zarr", mode="a")
    assert fast.writer("r", {"model_id": "m"}).write(rec, stats) is True
    with monkeypatch.context() as m:  # force zarr's own encoder (the fallback path)
        m.setattr(zs, "_encode_arrays", lambda arrays: None)
        slow = zs.VLStore(tmp_path / "slow.zarr", mode="a")
        assert slow.writer("r", {"model_id": "m"}).write(rec, stats) is True
    fast_docs, fast_chunks = _docs_and_chunks(tmp_path / "fast.zarr")
    slow_docs, slow_chunks = _docs_and_chunks(tmp_path / "slow.zarr")
    assert fast_docs == slow_docs  # same nodes, same metadata, attributes and commit marker
    # zarr skips chunks equal to the fill value; otherwise the same chunk keys
    assert slow_chunks <= fast_chunks
    base = f"runs/r/examples/{rec.example_id}"
    att_keys = {c for c in fast_chunks if c.startswith(f"{base}/attention/self/c.")}
    L, H = rec.attention["self"].values.shape[:2]
    assert len(att_keys) == L * H  # one chunk per (layer, head)
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


def test_stores_with_nested_chunk_keys_still_read(tmp_path, tiny_vilt, rgb_image, monkeypatch):
    """Stores written before the flat chunk keys (zarr's default "c/2/3/0/0") read the same."""
    from analysis.head_stats import compute_head_stats
    import store.zarr_store as zs

    rec = tiny_vilt.run(rgb_image, "what shape is this?")
    nested = {"name": "default", "configuration": {"separator": "/"}}
    monkeypatch.setattr(zs, "CHUNK_KEY_ENCODING", nested)
    zs.VLStore(tmp_path / "old.zarr", mode="a").writer("r", {"model_id": "m"}).write(rec, compute_head_stats(rec))
    monkeypatch.undo()
    base = tmp_path / "old.zarr" / "runs" / "r" / "examples" / rec.example_id / "attention" / "self"
    assert (base / "c" / "1" / "0" / "0" / "0").is_file()  # the old nested layout on disk
    run = zs.VLStore(tmp_path / "old.zarr").run("r")
    np.testing.assert_array_equal(run.attention(rec.example_id, "self", layer=1, head=0),
                                  rec.attention["self"].values[1, 0])
    back = run.record(rec.example_id)
    np.testing.assert_array_equal(back.hidden["joint"].values, rec.hidden["joint"].values)
