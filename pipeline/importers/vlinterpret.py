"""Import a VL-InterpreT database into a VL-Lens store, without ever running code from it.

Three parts: pipeline/importers/vlinterpret_db.py reads the database (LMDB + lz4 + msgpack, example
pickles through a restricted unpickler that refuses anything but plain data and numpy arrays);
pipeline/importers/vlinterpret_convert.py turns one example into a Record (its docstring lists every
fix made on the way in: modality per token, geometry, the rebuilt question, correctness only,
renormalized attention rows, hidden states that cannot be aligned); this module writes them with the
pipeline's one resume-aware write loop, so a rerun skips what is committed.

The import stops at the first example that is unsafe or malformed (a VLInterpretError naming it);
examples committed before it are kept and indexed, and a rerun resumes after them.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.importers.vlinterpret_convert import (HIDDEN_LAST, IMPORTER_NAME, IMPORTER_VERSION, NO_ANSWER,
                                                    NOT_THE_ANSWER, SPECIAL_TOKENS, ConvertedExample,
                                                    classify_tokens, example_to_record, rebuild_question)
from pipeline.importers.vlinterpret_db import (MAX_VALUE_BYTES, RestrictedUnpickler, UnsafePickleError,
                                               VLInterpretDatabase, VLInterpretError, restricted_loads)
from pipeline.write_loop import Pending, write_records
from store.zarr_store import VLStore

__all__ = ["IMPORTER_NAME", "IMPORTER_VERSION", "MAX_VALUE_BYTES", "NO_ANSWER", "NOT_THE_ANSWER", "SPECIAL_TOKENS",
           "ConvertedExample", "ImportResult", "RestrictedUnpickler", "UnsafePickleError", "VLInterpretDatabase",
           "VLInterpretError", "classify_tokens", "example_to_record", "import_vlinterpret", "rebuild_question",
           "restricted_loads"]


@dataclass(frozen=True, kw_only=True)
class ImportResult:
    run: str
    examples: int  # decimal keys in the database
    written: int
    skipped: int  # already committed (a rerun resumes)
    seconds: float
    n_layers: int | None
    n_heads: int | None
    notices: tuple[str, ...] = field(default_factory=tuple)


def import_vlinterpret(path: str | Path, store: VLStore, run: str, *, limit: int | None = None,
                       progress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import every example of the database at ``path`` into ``store`` as run ``run``.

    Stops at the first example that is unsafe or malformed (VLInterpretError naming it); examples
    committed before it are kept, and a rerun resumes after them.
    """
    start = time.time()
    path = Path(path)
    source_name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().name).strip("-") or "database"
    with VLInterpretDatabase(path) as db:
        header = db.header()
        keys = db.example_keys()
        if not keys:
            raise VLInterpretError(f"{path} holds no examples (no decimal keys)")
        notices = []
        if header["n_examples"] is not None and header["n_examples"] != len(keys):
            notices.append(f"n_examples says {header['n_examples']} but the database holds {len(keys)} examples")
        keys = keys if limit is None else keys[:limit]
        written = skipped = 0
        if keys:
            counts = _write_all(db, keys, store, run, header, source_name, path, progress, on_progress)
            written, skipped = counts.written, counts.skipped
    return ImportResult(run=run, examples=len(keys), written=written, skipped=skipped,
                        seconds=round(time.time() - start, 2), n_layers=header["n_layers"],
                        n_heads=header["n_heads"], notices=tuple(notices))


def _write_all(db: VLInterpretDatabase, keys: list[str], store: VLStore, run: str, header: dict, source_name: str,
               path: Path, progress: bool, on_progress):
    """Convert and write ``keys``; the run is created from the first example (its layers, heads, width)."""
    model_id = f"vlinterpret:{source_name}"

    def convert(key: str) -> ConvertedExample:
        conv = example_to_record(key, db.example(key), model_id=model_id, source_name=source_name)
        _check_header(key, conv.record, header)
        return conv

    converted = {keys[0]: convert(keys[0])}  # converted once: it also gives the run's provenance
    first = converted[keys[0]].record
    writer = store.writer(run, _provenance(first, model_id, path, header))
    custom_names = tuple(converted[keys[0]].custom_metrics)  # the first example fixes the set

    def prepare(key: str) -> Pending:
        conv = converted.pop(key, None) or convert(key)
        return Pending(example_id=conv.record.example_id, make=lambda: (conv.record, _stats(conv, custom_names)))

    return write_records(keys, prepare, writer, progress=f"import {run}" if progress else None, total=len(keys),
                         on_progress=on_progress)


def _check_header(key: str, record, header: dict) -> None:
    """The example's attention must have the layers and heads the database header states."""
    att = record.attention["self"].values
    for hk, actual in (("n_layers", att.shape[0]), ("n_heads", att.shape[1])):
        if header[hk] is not None and header[hk] != actual:
            raise VLInterpretError(f"example {key!r}: attention has {actual} {hk[2:]}, the database "
                                   f"header says {header[hk]}")


def _provenance(first, model_id: str, path: Path, header: dict) -> dict:
    att = first.attention["self"].values
    hidden = first.hidden.get("joint")
    return {
        "model_id": model_id, "adapter": IMPORTER_NAME, "adapter_version": IMPORTER_VERSION,
        "architecture": "single-stream",
        "config": {"layers": int(att.shape[0]), "heads": int(att.shape[1]),
                   "hidden": None if hidden is None else int(hidden.values.shape[-1]),
                   "hidden_last": HIDDEN_LAST,
                   "probability": "not recorded (VL-InterpreT stores correctness only)"},
        "attention_kinds": ["self"],
        "source": {"format": "VL-InterpreT LMDB database", "path": str(path.resolve()), "header": header},
    }


def _stats(conv: ConvertedExample, custom_names: tuple[str, ...]) -> dict:
    """The Record's head statistics, with the database's custom metrics appended as "custom:<name>"
    (NaN where this example lacks one)."""
    from analysis.head_stats import HeadStats, compute_head_stats

    stats = compute_head_stats(conv.record)
    if not custom_names:
        return stats
    base = stats["self"]
    L, H = base.values.shape[1:]
    extra = np.stack([conv.custom_metrics.get(n, np.full((L, H), np.nan, np.float32)) for n in custom_names])
    return {**stats, "self": HeadStats(names=base.names + tuple(f"custom:{n}" for n in custom_names),
                                       values=np.concatenate([base.values, extra]).astype(np.float32))}
