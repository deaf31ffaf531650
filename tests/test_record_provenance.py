"""The recorder adds a content hash of a local checkpoint directory to the run's provenance."""
from __future__ import annotations

import hashlib

from pipeline.provenance import EDGE_BYTES, HASH_RULE, checkpoint_hash, with_checkpoint_hash

MIB = 2**20


def _by_hand(files: dict[str, bytes]) -> str:
    """HASH_RULE written out: per file in path order, path \\0 size \\0 first MiB, last MiB."""
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data[:MIB])
        h.update(data[MIB:2 * MIB] if len(data) <= 2 * MIB else data[-MIB:])
    return f"sha256:{h.hexdigest()}"


def test_checkpoint_hash_follows_its_rule(tmp_path):
    assert EDGE_BYTES == MIB
    big = bytes(range(256)) * (3 * MIB // 256) + b"tail"  # over 2 MiB: only its ends are read
    files = {"config.json": b'{"a": 1}', "weights/model.safetensors": big, "small.bin": b"x" * (MIB + 5)}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_bytes(b"ignored")
    want = _by_hand(files)
    assert checkpoint_hash(tmp_path) == want
    # an edit at either end of a file (or of its size) changes the hash; one in the middle of a big
    # file does not (what the documented rule trades for reading at most 2 MiB per file)
    edited = bytearray(big)
    edited[-1] ^= 1
    (tmp_path / "weights/model.safetensors").write_bytes(bytes(edited))
    assert checkpoint_hash(tmp_path) != want
    edited = bytearray(big)
    edited[len(big) // 2] ^= 1
    (tmp_path / "weights/model.safetensors").write_bytes(bytes(edited))
    assert checkpoint_hash(tmp_path) == want


def test_only_a_local_checkpoint_without_a_hash_gets_one(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    local = {"model_id": "m", "checkpoint": {"kind": "local", "path": str(tmp_path)}}
    assert with_checkpoint_hash(local)["checkpoint"] == {"kind": "local", "path": str(tmp_path),
                                                         "content_hash": checkpoint_hash(tmp_path),
                                                         "content_hash_rule": HASH_RULE}
    hub = {"checkpoint": {"kind": "hub", "id": "org/m", "revision": "abc"}}
    hashed = {"checkpoint": {"kind": "local", "path": str(tmp_path), "content_hash": "sha256:given"}}
    gone = {"checkpoint": {"kind": "local", "path": str(tmp_path / "nowhere")}}
    for prov in (hub, hashed, gone, {"model_id": "imported"}):
        assert with_checkpoint_hash(prov) == prov


def test_a_recorded_run_names_its_local_checkpoint_by_content(tmp_path, tiny_vilt, tiny_vilt_dir):
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    record_examples(tiny_vilt, limited(iter(EasyVQA("test")), 1), VLStore(tmp_path / "s.zarr", mode="a"), "r",
                    progress=False)
    ckpt = VLStore(tmp_path / "s.zarr").run("r").provenance["checkpoint"]
    assert ckpt["kind"] == "local" and ckpt["content_hash"] == checkpoint_hash(tiny_vilt_dir)
    assert ckpt["content_hash"].startswith("sha256:") and len(ckpt["content_hash"]) == 7 + 64
