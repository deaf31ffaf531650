"""Scale: record 1,000 easy-VQA examples (``--quick``: 100) with the demo ViLT into one store.

Reports the recording time and store size, and the latencies of the reads the views make,
measured when the store holds the first checkpoint (100; quick: 20) and again at the end:
reading one head of one example, the head summary of one example, the example list the browser
shows, and the aggregate head statistics over every example. The per-example reads must not
grow with the store; the aggregate reads one consolidated array, so it grows only with the
bytes it returns.
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from bench.common import demo_vilt, dir_bytes, figure, median

RUN = "scale"


def view_latencies(path: Path, *, samples: int = 20, seed: int = 0) -> dict:
    """Median seconds of each view read on a freshly opened store (no cache from the recording)."""
    from store.zarr_store import VLStore

    reader = VLStore(path).run(RUN)
    rng = random.Random(seed)
    t = time.perf_counter()
    ids = reader.example_ids()
    first_list = time.perf_counter() - t
    pick = [rng.choice(ids) for _ in range(samples)]
    cfg = reader.provenance["config"]
    head, summary, listing, aggregate = [], [], [first_list], []
    for eid in pick:
        layer, h = rng.randrange(cfg["layers"]), rng.randrange(cfg["heads"])
        t = time.perf_counter()
        reader.attention(eid, "self", layer, h)
        head.append(time.perf_counter() - t)
        t = time.perf_counter()
        reader.head_stats(eid)
        summary.append(time.perf_counter() - t)
    for _ in range(3):
        t = time.perf_counter()
        reader.summaries()
        listing.append(time.perf_counter() - t)
        t = time.perf_counter()
        got, _, arr = reader.head_stats_all("self")
        aggregate.append(time.perf_counter() - t)
    assert len(got) == len(ids) and arr.shape[0] == len(ids)
    return {"n": len(ids), "one_head": median(head), "head_summary": median(summary), "listing": median(listing),
            "aggregate": median(aggregate)}


def run(quick: bool = False) -> dict:
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    first, total = (20, 100) if quick else (100, 1000)
    adapter, desc = demo_vilt()
    source = EasyVQA("test")
    with tempfile.TemporaryDirectory(prefix="vl-lens-scale-") as tmp:
        path = Path(tmp) / "scale.zarr"
        store = VLStore(path, mode="a")
        r1 = record_examples(adapter, limited(iter(source), first), store, RUN, total=first, progress=False)
        at_first = view_latencies(path)
        size_first = dir_bytes(path)
        r2 = record_examples(adapter, limited(iter(source), total), store, RUN, total=total, progress=False)
        at_total = view_latencies(path)
        size_total = dir_bytes(path)
    n1, n2 = at_first["n"], at_total["n"]
    seconds = r1.seconds + r2.seconds
    per_first = r1.seconds / max(r1.written, 1)
    per_rest = r2.seconds / max(r2.written, 1)
    out = {
        f"scale: record {n2} easy-VQA examples": figure(
            seconds, None, "s", f"{desc}; one process; {seconds / n2 * 1e3:.0f} ms/example including "
            f"image decoding, head statistics, store write and the final index"),
        f"scale: record time/example, examples {n1 + 1}-{n2} vs 1-{n1}": figure(
            per_rest * 1e3, per_first * 1e3, "ms/example", "does recording slow down as the store grows?"),
        f"scale: store size at {n2} examples": figure(
            size_total / 1e6, None, "MB", f"{size_total / n2 / 1e3:.0f} kB/example ({size_first / n1 / 1e3:.0f} "
            f"kB/example at {n1})"),
    }
    for key, label in (("one_head", "read one head (layer, head) of one example"),
                       ("head_summary", "head summary of one example (stored stats)"),
                       ("listing", "example list (browser table)"),
                       ("aggregate", "aggregate head stats over all examples")):
        note = f"median on a freshly opened store; baseline = the same read at {n1} examples"
        if key in ("listing", "aggregate"):
            note += f"; returns {n2 // n1}x more rows, read from the consolidated index"
        out[f"scale: {label}, {n2} vs {n1} examples"] = figure(at_total[key] * 1e3, at_first[key] * 1e3, "ms", note)
    return out
