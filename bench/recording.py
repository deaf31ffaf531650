"""Recording overhead and store size.

- overhead: (forward with attention + hidden capture, Record, head statistics, store write) per
  example, divided by a bare forward without attention output (``Adapter.predict``: the same
  preprocessing, no capture). Goal <= 1.5.
- store size: bytes the store holds per example (every file of the example: attention, hidden
  states, image, token coordinates, head statistics, metadata) divided by the raw float32 bytes
  of the same attention + hidden arrays. Goal <= 0.5.

Both are timed per example, alternating baseline and recording on the same examples, and
reported as medians (robust on a shared machine). The recording is the sequence
``record.record_examples`` runs for each example. The store write is file creation on local disk,
the noisiest part here: a run right after heavy writing (the disk still flushing) can see it
several times slower.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import demo_vilt, dir_bytes, easyvqa_examples, figure, median, vilt_b32_random


def measure(adapter, examples, *, warmup: int = 2) -> dict:
    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    with tempfile.TemporaryDirectory(prefix="vl-lens-bench-") as tmp:
        store = VLStore(Path(tmp) / "s.zarr", mode="a")
        writer = store.writer("bench", adapter.provenance())
        bare, rec_t, parts = [], [], {"capture": [], "head_stats": [], "write": []}
        raw = 0
        for i, (ex, image) in enumerate(examples):
            t0 = time.perf_counter()
            adapter.predict(image, ex.question)
            t1 = time.perf_counter()
            rec = adapter.run(image, ex.question, label=ex.label, source_key=ex.source_key)
            t2 = time.perf_counter()
            stats = compute_head_stats(rec)
            t3 = time.perf_counter()
            writer.write(rec, stats)
            t4 = time.perf_counter()
            if i < warmup:
                continue
            bare.append(t1 - t0)
            rec_t.append(t4 - t1)
            parts["capture"].append(t2 - t1)
            parts["head_stats"].append(t3 - t2)
            parts["write"].append(t4 - t3)
            raw += sum(b.values.size * 4 for b in rec.attention.values())
            raw += sum(b.values.size * 4 for b in rec.hidden.values())
        n = len(bare)
        # Every file of every stored example (warm-up ones too: same model, same sizes), per example.
        ex_dir = Path(tmp) / "s.zarr" / "runs" / "bench" / "examples"
        n_stored = sum(1 for _ in ex_dir.iterdir())
        return {"n": n, "bare": median(bare), "record": median(rec_t),
                "parts": {k: median(v) for k, v in parts.items()}, "raw_bytes": raw / n,
                "stored_bytes": dir_bytes(ex_dir) / max(n_stored, 1), "tokens": rec.n_tokens}


def run(quick: bool = False) -> dict:
    out = {}
    for label, build, n in (("demo ViLT", demo_vilt, 12 if quick else 42),
                            ("ViLT-B/32", vilt_b32_random, 4 if quick else 10)):
        adapter, desc = build()
        m = measure(adapter, easyvqa_examples(n))
        p = m["parts"]
        out[f"recording overhead, {label}"] = figure(
            m["record"] * 1e3, m["bare"] * 1e3, "ms/example",
            f"{desc}; {m['tokens']} tokens; median of {m['n']} examples; record = capture "
            f"{p['capture'] * 1e3:.1f} + head stats {p['head_stats'] * 1e3:.1f} + write {p['write'] * 1e3:.1f} ms; "
            "baseline = Adapter.predict (same preprocessing, forward without attention output); goal ratio <= 1.5")
        out[f"store bytes / raw float32, {label}"] = figure(
            m["stored_bytes"] / 1e6, m["raw_bytes"] / 1e6, "MB/example",
            "every stored file of the example (float16 attention + hidden, blosc-lz4; image, tokens, head stats, "
            "metadata) vs float32 attention + hidden; goal ratio <= 0.5"
            + ("; random weights: near-uniform attention compresses far better than a trained model's"
               if label == "ViLT-B/32" or "random" in desc else ""))
    return out
