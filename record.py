"""The one record pipeline: source -> adapter -> head statistics -> store.

Used by ``cli.py record`` and by the app (to build the demo store on first start). Resumable:
examples already committed in the run are skipped without running the model.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from adapters.base import Adapter, InputError
from analysis.head_stats import compute_head_stats
from sources.base import Example, SourceError
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
    from adapters.base import example_id_of

    writer = store.writer(run, adapter.provenance())
    done = writer.committed_ids()
    result = RecordResult(run=run)
    start = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"record {run}", unit="ex", dynamic_ncols=True)
    behind = WriteBehind(writer, result)
    try:
        for i, ex in enumerate(examples):
            try:
                image = ex.image()
                eid = example_id_of(image, ex.question)
                if eid in done:
                    result.skipped += 1
                else:
                    rec = adapter.run(image, ex.question, top_k=top_k, label=ex.label, source_key=ex.source_key)
                    behind.submit(rec, group=ex.group, source_key=ex.source_key)
                    done.add(eid)
            except (InputError, SourceError, OSError, ValueError) as e:
                result.failed.append((ex.source_key, str(e)))
                log.warning("skipped %s: %s", ex.source_key, e)
            if bar is not None:
                bar.update(1)
            if on_progress is not None:
                on_progress(i + 1, total)
    finally:
        behind.close()  # commits what was handed over, also on Ctrl-C; re-raises a write error
        if bar is not None:
            bar.close()
    if consolidate:
        writer.consolidate()
    result.seconds = time.time() - start
    return result


class WriteBehind:
    """Head statistics and the store write of one example run in a background thread while the
    model runs the next one.

    For a small model the write (a few dozen small files) costs about as much as the forward
    pass; overlapping them is most of the recording speed-up (bench/recording.py). At most
    ``max_pending`` records wait, so memory stays bounded. A run stopped midway loses only
    the records still waiting: nothing is committed half-way, and a rerun records them again.
    Per-example failures (OSError, ValueError) land in ``result.failed`` as before; anything
    else (a StoreError such as a full disk) stops the run at the next ``submit`` or ``close``.
    """

    def __init__(self, writer, result: RecordResult, *, max_pending: int = 2):
        self._writer = writer
        self._result = result
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._raised = False
        self._thread = threading.Thread(target=self._work, name="vl-lens-write-behind", daemon=True)
        self._thread.start()

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing; the main thread raises the error once
            rec, group, source_key = item
            try:
                if self._writer.write(rec, compute_head_stats(rec), group=group):
                    self._result.written += 1
                else:
                    self._result.skipped += 1
            except (OSError, ValueError) as e:
                self._result.failed.append((source_key, str(e)))
                log.warning("skipped %s: %s", source_key, e)
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                self._error = e

    def _raise_pending(self):
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def submit(self, record, *, group: str | None, source_key: str | None) -> None:
        self._raise_pending()
        self._queue.put((record, group, source_key))

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()


def limited(examples: Iterable[Example], limit: int | None) -> Iterable[Example]:
    """Stream at most ``limit`` examples (reads no more than that)."""
    for i, ex in enumerate(examples):
        if limit is not None and i >= limit:
            return
        yield ex
