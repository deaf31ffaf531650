"""Batched recording throughput (``record --batch-size B``, Adapter.run_batch).

Per example, for chunks of B examples:
- batched recording: ``run_batch`` (one padded forward capturing attention and hidden states, each
  Record cut back to its own tokens) + head statistics + store write, what ``record --batch-size B``
  does for each chunk;
- vs a bare batched forward of the same chunk: ``encode_batch`` + ``forward_logits`` (the same
  padded batch, logits only, no capture): goal ratio <= 1.2;
- vs today's one-example recording: ``run`` + head statistics + write per example.

Medians over chunks after one warm-up chunk, the three alternating on the same chunks (robust on a
shared machine). CPU only here: no GPU timings were taken.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import demo_vilt, easyvqa_examples, figure, median, vilt_b32_random


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(adapter, examples, batch_size: int) -> dict:
    """Median seconds per example of bare batched forward, batched recording, one-example recording."""
    import torch

    from analysis.head_stats import compute_head_stats
    from store.zarr_store import VLStore

    times: dict[str, list[float]] = {"bare": [], "batched": [], "one": [], "capture": []}
    with tempfile.TemporaryDirectory(prefix="vl-lens-bench-") as tmp:
        store = VLStore(Path(tmp) / "s.zarr", mode="a")
        writers = {k: store.writer(k, adapter.provenance()) for k in ("batched", "one")}
        for c, chunk in enumerate(_chunks(examples, batch_size)):
            images, questions = [im for _, im in chunk], [ex.question for ex, _ in chunk]
            t0 = time.perf_counter()
            with torch.no_grad():
                adapter.forward_logits(**adapter.encode_batch(images, questions))
            t1 = time.perf_counter()
            records = adapter.run_batch(images, questions, labels=[ex.label for ex, _ in chunk],
                                        source_keys=[ex.source_key for ex, _ in chunk])
            t_capture = time.perf_counter()
            for rec in records:
                writers["batched"].write(rec, compute_head_stats(rec))
            t2 = time.perf_counter()
            for (ex, _), im, q in zip(chunk, images, questions):
                rec = adapter.run(im, q, label=ex.label, source_key=ex.source_key)
                writers["one"].write(rec, compute_head_stats(rec))
            t3 = time.perf_counter()
            if c == 0:
                continue  # warm-up chunk
            n = len(chunk)
            times["bare"].append((t1 - t0) / n)
            times["batched"].append((t2 - t1) / n)
            times["one"].append((t3 - t2) / n)
            times["capture"].append((t_capture - t1) / n)
    return {k: median(v) for k, v in times.items()} | {"chunks": len(times["bare"])}


def run(quick: bool = False) -> dict:
    out = {}
    for label, build, b, n in (("demo ViLT", demo_vilt, 8, 24 if quick else 72),
                               ("ViLT-B/32", vilt_b32_random, 4, 8 if quick else 20)):
        adapter, desc = build()
        m = measure(adapter, easyvqa_examples(n), b)
        note = (f"{desc}; batch {b}; median of {m['chunks']} chunks after one warm-up; CPU; of which run_batch "
                f"{m['capture'] * 1e3:.1f} ms, head stats + write the rest")
        out[f"batched recording vs bare batched forward, {label}"] = figure(
            m["batched"] * 1e3, m["bare"] * 1e3, "ms/example",
            note + "; record = run_batch + head stats + store write; bare = encode_batch + forward_logits; "
            "goal ratio <= 1.2")
        out[f"batched recording vs one-example recording, {label}"] = figure(
            m["batched"] * 1e3, m["one"] * 1e3, "ms/example",
            note + "; baseline = run + head stats + write, one example per forward (below 1: batching is faster)")
    return out
