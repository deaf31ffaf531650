"""Recording B examples per forward: the write loop's work items, made a batch at a time.

``write_records`` (pipeline/write_loop.py) takes one work item at a time: it asks for the example
id (``prepare``) and makes the Record only when the example is not committed yet. Here the items
are (batch, position) pairs over chunks of ``batch_size`` examples; the first Record a chunk is
asked for runs ``adapter.run_batch`` over the whole chunk, and the others are then ready. A chunk
whose examples are all committed never runs the model (a rerun resumes as before).

One bad example must not fail its neighbours: an unreadable image fails only its own item, and
when ``run_batch`` raises a per-example error the chunk is made again one example at a time.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from adapters.base import Adapter
from analysis.head_stats import compute_head_stats
from pipeline.write_loop import Pending
from sources.base import Example


class ExampleBatch:
    """Up to B examples whose Records are made together, the first time one of them is needed."""

    def __init__(self, examples: list[Example], recoverable: tuple[type[Exception], ...]):
        self.examples = examples
        self.recoverable = recoverable
        self._images: dict[int, object] = {}
        self._records: list | None = None

    def image(self, i: int):
        """Example ``i``'s decoded image (read once); its read error is raised for it alone."""
        if i not in self._images:
            try:
                self._images[i] = self.examples[i].image()
            except self.recoverable as e:
                self._images[i] = e
        return _value(self._images[i])

    def record(self, i: int, adapter: Adapter, top_k: int):
        """Example ``i``'s Record, the whole chunk run on the first call."""
        if self._records is None:
            self._records = self._run(adapter, top_k)
        return _value(self._records[i])

    def _run(self, adapter: Adapter, top_k: int) -> list:
        """One entry per example: its Record, or the error that fails it."""
        for i in range(len(self.examples)):
            try:
                self.image(i)
            except self.recoverable:
                pass  # stays an error entry
        ok = [i for i in range(len(self.examples)) if not isinstance(self._images[i], Exception)]
        out: list = [self._images[i] for i in range(len(self.examples))]
        try:
            for i, rec in zip(ok, self._run_some(adapter, ok, top_k)):
                out[i] = rec
        except self.recoverable:  # one example's bad input: make each alone, so only it fails
            for i in ok:
                try:
                    out[i] = self._run_some(adapter, [i], top_k)[0]
                except self.recoverable as e:
                    out[i] = e
        return out

    def _run_some(self, adapter: Adapter, idx: list[int], top_k: int) -> list:
        if not idx:
            return []
        exs = [self.examples[i] for i in idx]
        return adapter.run_batch([self._images[i] for i in idx], [ex.question for ex in exs], top_k=top_k,
                                 labels=[ex.label for ex in exs], source_keys=[ex.source_key for ex in exs])


def _value(v):
    if isinstance(v, Exception):
        raise v
    return v


def batched_items(examples: Iterable[Example], batch_size: int,
                  recoverable: tuple[type[Exception], ...]) -> Iterator[tuple[ExampleBatch, int]]:
    """(chunk, position) work items, reading ``batch_size`` examples ahead at most."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    chunk: list[Example] = []
    for ex in examples:
        chunk.append(ex)
        if len(chunk) == batch_size:
            yield from _positions(ExampleBatch(chunk, recoverable))
            chunk = []
    if chunk:
        yield from _positions(ExampleBatch(chunk, recoverable))


def _positions(batch: ExampleBatch) -> Iterator[tuple[ExampleBatch, int]]:
    return ((batch, i) for i in range(len(batch.examples)))


def batch_work(adapter: Adapter, top_k: int = 5) -> Callable[[tuple[ExampleBatch, int]], Pending]:
    """What one (chunk, position) item becomes: its content hash now, its Record when needed."""
    from core.ids import example_id_of

    def prepare(item: tuple[ExampleBatch, int]) -> Pending:
        batch, i = item
        ex = batch.examples[i]

        def make():
            rec = batch.record(i, adapter, top_k)
            return rec, compute_head_stats(rec)

        return Pending(example_id=example_id_of(batch.image(i), ex.question), make=make, group=ex.group)

    return prepare


def item_key(item: tuple[ExampleBatch, int]) -> str:
    batch, i = item
    return batch.examples[i].source_key
