"""Batched recording throughput (``record --batch-size B``) against a bare batched forward.

Each measured over the same N examples, read from the data set (images decoded) in chunks of B:
- batched recording: ``pipeline.record.record_examples(batch_size=B)`` into a fresh run, what
  ``record --batch-size B`` does: ``run_batch`` (one padded forward capturing attention and hidden
  states, each Record cut back to its own tokens), head statistics and the store write of each
  example, and the run's index at the end;
- a bare batched forward: the images decoded, ``encode_batch`` + ``forward_logits`` of each chunk
  (the same padded batches, logits only, no capture): goal ratio <= 1.2;
- today's one-example recording: ``record_examples`` with one example per forward.

Per example, medians over rounds after one warm-up round, the three alternating in each round (robust
on a shared machine). CPU only here: no GPU timings were taken.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import demo_vilt, easyvqa_examples, figure, median, vilt_b32_random


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(adapter, examples, batch_size: int, rounds: int) -> dict:
    """Median seconds per example of bare batched forward, batched recording, one-example recording."""
    import torch

    from pipeline.record import record_examples
    from store.zarr_store import VLStore

    exs = [ex for ex, _ in examples]
    times: dict[str, list[float]] = {"bare": [], "batched": [], "one": []}
    with tempfile.TemporaryDirectory(prefix="vl-lens-bench-") as tmp:
        store = VLStore(Path(tmp) / "s.zarr", mode="a")
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            for chunk in _chunks(exs, batch_size):
                with torch.no_grad():
                    adapter.forward_logits(**adapter.encode_batch([ex.image() for ex in chunk],
                                                                  [ex.question for ex in chunk]))
            t1 = time.perf_counter()
            record_examples(adapter, exs, store, f"batched{r}", progress=False, batch_size=batch_size)
            t2 = time.perf_counter()
            record_examples(adapter, exs, store, f"one{r}", progress=False)
            t3 = time.perf_counter()
            if r == 0:
                continue  # warm-up round
            for key, seconds in (("bare", t1 - t0), ("batched", t2 - t1), ("one", t3 - t2)):
                times[key].append(seconds / len(exs))
    return {k: median(v) for k, v in times.items()} | {"rounds": rounds}


def run(quick: bool = False) -> dict:
    out = {}
    for label, build, b, n, rounds in (("demo ViLT", demo_vilt, 8, 24 if quick else 96, 2 if quick else 5),
                                       ("ViLT-B/32", vilt_b32_random, 4, 8 if quick else 16, 1 if quick else 3)):
        adapter, desc = build()
        m = measure(adapter, easyvqa_examples(n), b, rounds)
        note = f"{desc}; batch {b}; {n} examples; median of {m['rounds']} rounds after one warm-up; CPU"
        out[f"batched recording vs bare batched forward, {label}"] = figure(
            m["batched"] * 1e3, m["bare"] * 1e3, "ms/example",
            note + "; record = record_examples(batch_size=B): run_batch, head stats, store write, the run's index; "
            "bare = decode + encode_batch + forward_logits; goal ratio <= 1.2")
        out[f"batched recording vs one-example recording, {label}"] = figure(
            m["batched"] * 1e3, m["one"] * 1e3, "ms/example",
            note + "; baseline = record_examples with one example per forward (below 1: batching is faster)")
    return out
