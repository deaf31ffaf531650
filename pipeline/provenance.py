"""A run's provenance as the recorder stores it: the adapter's, plus what identifies a local checkpoint.

A hub checkpoint is identified by its id and revision (adapters/loading.py puts both in
``provenance["checkpoint"]``). A local directory has no revision, so the recorder adds a content
hash of its files: two runs whose checkpoints hash alike were recorded with the same weights,
config and tokenizer files. The hash is cheap on purpose (a checkpoint can be gigabytes): SHA-256
over every file below the directory, in sorted order of relative path, of that path, the file's
size, and its first and last MiB. Editing a file changes its size or, in practice, one of its ends
(safetensors and JSON headers sit at the start); an edit confined to the middle of a large weight
file of unchanged size would go unnoticed, and the rule is stored beside the hash to say so.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

EDGE_BYTES = 2**20
HASH_RULE = ("sha256 over each file below the directory (sorted by relative path): its path, its size, "
             "its first and last MiB")


def checkpoint_hash(directory: str | Path) -> str:
    """"sha256:<hex>" of a checkpoint directory by HASH_RULE (hidden files and folders left out)."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in _files(root):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            digest.update(f.read(EDGE_BYTES))
            if size > 2 * EDGE_BYTES:
                f.seek(size - EDGE_BYTES)
            digest.update(f.read(EDGE_BYTES))
    return f"sha256:{digest.hexdigest()}"


def _files(root: Path) -> list[Path]:
    out = []
    for parent, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(parent) / n for n in names if not n.startswith(".") and (Path(parent) / n).is_file()]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def with_checkpoint_hash(provenance: dict) -> dict:
    """``provenance`` with ``checkpoint.content_hash`` (and its rule) added for a local checkpoint
    directory that has none yet; anything else is returned unchanged."""
    ckpt = provenance.get("checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "local" or "content_hash" in ckpt:
        return provenance
    path = Path(str(ckpt.get("path", "")))
    if not path.is_dir():
        return provenance
    return {**provenance, "checkpoint": {**ckpt, "content_hash": checkpoint_hash(path), "content_hash_rule": HASH_RULE}}
