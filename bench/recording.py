"""Recording overhead and store size.

- overhead: recording N examples with the record pipeline the CLI runs (``record.record_examples``:
  forward with attention + hidden capture, Record, head statistics, store write), wall time per
  example, divided by a bare
  forward without attention output (``Adapter.predict``: the same preprocessing, no capture) on
  the same examples. Goal <= 1.5. Images are decoded beforehand for both, and the run index is
  not consolidated (a once-per-run step; the scale benchmark times whole runs).
- the parts of a record, timed one after another on the same examples (capture, head statistics,
  write): where the time goes.
- store size: bytes the store holds per example (every file of the example: attention, hidden
  states, image, token coordinates, head statistics, metadata) divided by the raw float32 bytes
  of the same attention + hidden arrays. Goal <= 0.5.

Timings alternate baseline and recording on the same examples, several rounds, medians.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import demo_vilt, dir_bytes, easyvqa_examples, figure, median, vilt_b32_random


class _Decoded:
    """An example whose image is already decoded (so neither side times PNG decoding)."""

    def __init__(self, ex, image):
        self.source_key, self.question, self.label, self.group = ex.source_key, ex.question, ex.label, ex.group
        self._image = image

    def image(self):
        return self._image


def measure_parts(adapter, examples, *, warmup: int = 2) -> dict:
    """Each part of a record timed on its own, in sequence; plus the stored bytes per example."""
    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    with tempfile.TemporaryDirectory(prefix="vl-lens-bench-") as tmp:
        store = VLStore(Path(tmp) / "s.zarr", mode="a")
        writer = store.writer("bench", adapter.provenance())
        parts = {"capture": [], "head_stats": [], "write": []}
        raw = 0
        for i, (ex, image) in enumerate(examples):
            t1 = time.perf_counter()
            rec = adapter.run(image, ex.question, label=ex.label, source_key=ex.source_key)
            t2 = time.perf_counter()
            stats = compute_head_stats(rec)
            t3 = time.perf_counter()
            writer.write(rec, stats)
            t4 = time.perf_counter()
            if i < warmup:
                continue
            parts["capture"].append(t2 - t1)
            parts["head_stats"].append(t3 - t2)
            parts["write"].append(t4 - t3)
            raw += sum(b.values.size * 4 for b in rec.attention.values())
            raw += sum(b.values.size * 4 for b in rec.hidden.values())
        n = len(parts["write"])
        # Every file of the measured examples (warm-up examples excluded).
        ex_dir = Path(tmp) / "s.zarr" / "runs" / "bench" / "examples"
        kept = [p.name for p in ex_dir.iterdir()]
        stored = dir_bytes(ex_dir) * n / max(len(kept), 1)
        return {"n": n, "parts": {k: median(v) for k, v in parts.items()}, "raw_bytes": raw / n,
                "stored_bytes": stored / n, "tokens": rec.n_tokens}


def measure_pipeline(adapter, examples, *, rounds: int = 3) -> dict:
    """Per-example wall time of a bare forward loop and of the record pipeline, alternating rounds."""
    from record import record_examples
    from store.zarr_store import VLStore

    decoded = [_Decoded(ex, image) for ex, image in examples]
    for ex, image in examples[:2]:  # warm-up: first calls allocate
        adapter.predict(image, ex.question)
        adapter.run(image, ex.question)
    bare, rec = [], []
    with tempfile.TemporaryDirectory(prefix="vl-lens-bench-") as tmp:
        for r in range(rounds):
            t0 = time.perf_counter()
            for ex, image in examples:
                adapter.predict(image, ex.question)
            t1 = time.perf_counter()
            res = record_examples(adapter, decoded, VLStore(Path(tmp) / f"s{r}.zarr", mode="a"), "bench",
                                  progress=False, consolidate=False)
            t2 = time.perf_counter()
            if res.written != len(examples):
                raise RuntimeError(f"bench: recorded {res.written} of {len(examples)} examples: {res.failed[:1]}")
            bare.append((t1 - t0) / len(examples))
            rec.append((t2 - t1) / len(examples))
    return {"bare": median(bare), "record": median(rec), "n": len(examples), "rounds": rounds}


def run(quick: bool = False) -> dict:
    out = {}
    for label, build, n in (("demo ViLT", demo_vilt, 12 if quick else 40),
                            ("ViLT-B/32", vilt_b32_random, 4 if quick else 8)):
        adapter, desc = build()
        examples = easyvqa_examples(n)
        m = measure_parts(adapter, examples)
        pipe = measure_pipeline(adapter, examples, rounds=2 if quick else 3)
        p = m["parts"]
        out[f"recording overhead, {label}"] = figure(
            pipe["record"] * 1e3, pipe["bare"] * 1e3, "ms/example",
            f"{desc}; {m['tokens']} tokens; record pipeline (record.record_examples) over {pipe['n']} examples, "
            f"median of {pipe['rounds']} rounds; its parts one after another: capture {p['capture'] * 1e3:.1f} + "
            f"head stats {p['head_stats'] * 1e3:.1f} + write {p['write'] * 1e3:.1f} ms; baseline = Adapter.predict (same preprocessing, forward without "
            "attention output); goal ratio <= 1.5")
        out[f"store bytes / raw float32, {label}"] = figure(
            m["stored_bytes"] / 1e6, m["raw_bytes"] / 1e6, "MB/example",
            "every stored file of the example (float16 attention + hidden, zstd; image, tokens, head stats, "
            "metadata) vs float32 attention + hidden; goal ratio <= 0.5"
            + ("; random weights: near-uniform attention compresses far better than a trained model's"
               if label == "ViLT-B/32" or "random" in desc else ""))
    return out
