"""The one record pipeline: source -> adapter -> head statistics -> store.

Used by ``cli.py record`` and by the app (to build the demo store on first start); each Dask
worker of parallel recording runs the same steps on its chunk. Resumable: examples already
committed in the run are skipped without running the model (pipeline/write_loop.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from adapters.base import Adapter
from analysis.head_stats import compute_head_stats
from core.errors import InputError, SourceError
from pipeline.provenance import with_checkpoint_hash
from pipeline.write_loop import Pending, write_records
from sources.base import Example
from store.zarr_store import VLStore

# What fails one example without stopping the run: a bad image or question, an unreadable row, a
# file-system hiccup on one write. A StoreError (read-only store, full disk) stops the run.
RECOVERABLE = (InputError, SourceError, OSError, ValueError)


@dataclass
class RecordResult:
    run: str
    written: int = 0
    skipped: int = 0  # already committed (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason)
    seconds: float = 0.0


def example_work(adapter: Adapter, top_k: int = 5) -> Callable[[Example], Pending]:
    """What one data set example becomes: its content hash now, the model's Record only if needed."""
    from core.ids import example_id_of

    def prepare(ex: Example) -> Pending:
        image = ex.image()

        def make():
            return run_with_head_stats(adapter, image, ex, top_k=top_k)

        return Pending(example_id=example_id_of(image, ex.question), make=make, group=ex.group)

    return prepare


def run_with_head_stats(adapter: Adapter, image, ex: Example, *, top_k: int = 5):
    """(Record, head statistics) of one example. A generative adapter keeps only some attention rows
    in its Record, so its statistics come from the full maps, layer by layer, as it records."""
    kwargs = dict(top_k=top_k, label=ex.label, source_key=ex.source_key)
    if getattr(adapter, "architecture", "") == "generative":
        from analysis.layer_stats import FullMapHeadStats

        observer = FullMapHeadStats()
        rec = adapter.run(image, ex.question, layer_observer=observer, **kwargs)
        return rec, observer.result()
    rec = adapter.run(image, ex.question, **kwargs)
    return rec, compute_head_stats(rec)


def record_examples(adapter: Adapter, examples: Iterable[Example], store: VLStore, run: str, *,
                    total: int | None = None, progress: bool = True, top_k: int = 5,
                    on_progress: Callable[[int, int | None], None] | None = None,
                    consolidate: bool = True, batch_size: int = 1) -> RecordResult:
    """Record examples with one adapter into ``store`` under run name ``run``; ``batch_size`` examples
    per forward (pipeline/batches.py; each Record as with one example, up to float16 rounding)."""
    if batch_size != 1 and getattr(adapter, "architecture", "") == "generative":
        # its head statistics come from each layer's full map as one example records
        raise ValueError("--batch-size: a generative model records one example at a time (leave it out)")
    start = time.time()
    writer = store.writer(run, with_checkpoint_hash(adapter.provenance()))
    items, prepare, key_of = examples, example_work(adapter, top_k), lambda ex: ex.source_key
    if batch_size != 1:
        from pipeline.batches import batch_work, batched_items, item_key

        items, prepare, key_of = batched_items(examples, batch_size, RECOVERABLE), batch_work(adapter, top_k), item_key
    counts = write_records(items, prepare, writer, key_of=key_of,
                           recoverable=RECOVERABLE, progress=f"record {run}" if progress else None, total=total,
                           on_progress=on_progress, consolidate=consolidate)
    return RecordResult(run=run, written=counts.written, skipped=counts.skipped, failed=counts.failed,
                        seconds=time.time() - start)


def limited(examples: Iterable[Example], limit: int | None) -> Iterable[Example]:
    """Stream at most ``limit`` examples (reads no more than that)."""
    for i, ex in enumerate(examples):
        if limit is not None and i >= limit:
            return
        yield ex
