"""The one record pipeline: source -> adapter -> head statistics -> store.

Used by ``cli.py record`` and by the app (to build the demo store on first start). Resumable:
examples already committed in the run are skipped without running the model.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from adapters.base import Adapter
from core.errors import InputError
from analysis.head_stats import compute_head_stats
from sources.base import Example
from core.errors import SourceError
from store.zarr_store import VLStore

log = logging.getLogger("vl_lens.record")


@dataclass
class RecordResult:
    run: str
    written: int = 0
    skipped: int = 0  # already committed (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source key, reason)
    seconds: float = 0.0


def record_examples(adapter: Adapter, examples: Iterable[Example], store: VLStore, run: str, *,
                    total: int | None = None, progress: bool = True, top_k: int = 5,
                    on_progress: Callable[[int, int | None], None] | None = None,
                    consolidate: bool = True) -> RecordResult:
    """Record examples with one adapter into ``store`` under run name ``run``."""
    from core.ids import example_id_of

    writer = store.writer(run, adapter.provenance())
    done = writer.committed_ids()
    result = RecordResult(run=run)
    start = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"record {run}", unit="ex", dynamic_ncols=True)
    for i, ex in enumerate(examples):
        try:
            image = ex.image()
            eid = example_id_of(image, ex.question)
            if eid in done:
                result.skipped += 1
            else:
                rec = adapter.run(image, ex.question, top_k=top_k, label=ex.label, source_key=ex.source_key)
                if writer.write(rec, compute_head_stats(rec), group=ex.group):
                    result.written += 1
                    done.add(eid)
                else:
                    result.skipped += 1
        except (InputError, SourceError, OSError, ValueError) as e:
            result.failed.append((ex.source_key, str(e)))
            log.warning("skipped %s: %s", ex.source_key, e)
        if bar is not None:
            bar.update(1)
        if on_progress is not None:
            on_progress(i + 1, total)
    if bar is not None:
        bar.close()
    if consolidate:
        writer.consolidate()
    result.seconds = time.time() - start
    return result


def limited(examples: Iterable[Example], limit: int | None) -> Iterable[Example]:
    """Stream at most ``limit`` examples (reads no more than that)."""
    for i, ex in enumerate(examples):
        if limit is not None and i >= limit:
            return
        yield ex
