"""The one resume-aware write loop: work items -> Records -> one run of a store.

Recording (pipeline/record.py), each Dask worker's chunk of examples (pipeline/parallel.py) and the
VL-InterpreT import (pipeline/importers/vlinterpret.py) all write through ``write_records``. For
each work item it asks the caller for the example id (``prepare``: cheap, no model), skips the
item when that example is already committed (a rerun resumes without running the model), else
makes the Record and its head statistics (``Pending.make``) and commits them. It counts what was
written, skipped and failed, drives the progress bar and writes the run's index at the end.

Errors: an exception of a type in ``recoverable`` fails that one item (reported with the item's
key, the loop goes on); any other exception (a StoreError: a full disk, a read-only store; an
unsafe database) stops the loop. The run's index is then still rewritten to cover what was
committed before it (a failure of that rewrite does not hide the error that stopped the loop).
An interrupt (Ctrl-C) stops at once: the committed examples are kept, the index is left as it was.

``background=N``: the commits (head statistics, when ``make`` leaves them to the committer, and the
store write) run on one thread of their own, up to N made examples behind the loop, so the next
forward runs while the last batch is written (record --batch-size). Errors keep their meaning: a
recoverable one fails its item, any other stops the loop at its next item (an error of the loop's
own still lets the examples made before it be committed, as without the thread); an interrupt drops
what is queued and waits only for the example being written.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from store.schema import Record
from store.zarr_store import RunWriter

log = logging.getLogger("vl_lens.pipeline")

Item = TypeVar("Item")


@dataclass(frozen=True, kw_only=True)
class Pending:
    """One work item, identified: the example it would write and how to make it.

    ``make`` returns (Record, head statistics by kind, or a function of no arguments computing them:
    then the committing thread does, off the loop); it is called only when the example is not
    committed yet, so a resumed recording does not run the model for it.
    """

    example_id: str
    make: Callable[[], tuple[Record, dict]]
    group: str | None = None


@dataclass
class WriteCounts:
    written: int = 0
    skipped: int = 0  # already committed (resume)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item key, reason)


def write_records(items: Iterable[Item], prepare: Callable[[Item], Pending], writer: RunWriter, *,
                  key_of: Callable[[Item], str] = str, recoverable: tuple[type[Exception], ...] = (),
                  list_committed: bool = True, progress: str | None = None, total: int | None = None,
                  on_progress: Callable[[int, int | None], None] | None = None,
                  consolidate: bool = True, background: int = 0) -> WriteCounts:
    """Write every item's example into ``writer``'s run; see the module docstring.

    ``list_committed``: read the run's committed ids once, up front (one writer per run); False asks
    the store per item instead (a Dask worker writing a chunk of a large shared run, where listing
    the whole run per chunk would cost more than the chunk). ``progress``: the progress bar's
    description (None: no bar). ``on_progress(done, total)`` after each item. ``background``: see the
    module docstring (0: commit each example before making the next).
    """
    counts = WriteCounts()
    done = writer.committed_ids() if list_committed else None
    bar = progress_bar(progress, total)
    committer = Committer(writer, counts, recoverable, background) if background else None
    try:
        for i, item in enumerate(items):
            try:
                _write_one(prepare(item), writer, done, counts, committer, key_of(item))
            except recoverable as e:
                counts.failed.append((key_of(item), str(e)))
                log.warning("skipped %s: %s", key_of(item), e)
            if bar is not None:
                bar.update(1)
            if on_progress is not None:
                on_progress(i + 1, total)
        if committer is not None:
            committer.finish()
    except Exception:
        if committer is not None:  # what was made before the error is committed, as without the thread
            committer.stop()
        if consolidate:
            _consolidate_quietly(writer)
        raise
    except BaseException:  # an interrupt: what is queued is dropped, the example being written finishes
        if committer is not None:
            committer.abandon()
        raise
    finally:
        if bar is not None:
            bar.close()
    if consolidate:
        writer.consolidate()
    return counts


def _write_one(pending: Pending, writer: RunWriter, done: set[str] | None, counts: WriteCounts,
               committer: Committer | None, key: str) -> None:
    """Skip a committed (or queued) example, else make it and commit it, here or on the committer's thread."""
    eid = pending.example_id
    # Queued first: the committer forgets an example only after committing it, so asked in this order
    # an example being committed is seen as one or the other.
    if (committer is not None and committer.has(eid)) or (
            (eid in done) if done is not None else writer.is_committed(eid)):
        counts.skipped += 1
        return
    record, stats = pending.make()
    if committer is not None:
        committer.submit(key, pending, record, stats, done)
    else:
        _count(_commit(writer, pending, record, stats), eid, done, counts)


def _commit(writer: RunWriter, pending: Pending, record: Record, stats) -> bool:
    """Write one made example (its head statistics made first when ``stats`` is a function); False:
    committed meanwhile by another writer."""
    return writer.write(record, stats() if callable(stats) else stats, group=pending.group)


def _count(written: bool, eid: str, done: set[str] | None, counts: WriteCounts) -> None:
    if written:
        counts.written += 1
        if done is not None:
            done.add(eid)
    else:
        counts.skipped += 1


class Committer:
    """Commits made examples on one thread of its own, at most ``depth`` behind the loop that makes them.

    It counts what it commits in counts of its own, added to the loop's when it stops (nothing is
    counted by two threads); a recoverable error fails its item, any other is kept and raised in the
    loop (``submit``, ``finish``).
    """

    def __init__(self, writer: RunWriter, counts: WriteCounts, recoverable: tuple[type[Exception], ...],
                 depth: int):
        self.writer, self.recoverable = writer, recoverable
        self.loop_counts, self.counts = counts, WriteCounts()
        self.lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.queued: set[str] = set()  # submitted, not yet committed or failed
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="vl-lens-commit", daemon=True)
        self.thread.start()

    def has(self, eid: str) -> bool:
        """Whether ``eid`` is waiting to be committed (a repeated example is not made twice)."""
        with self.lock:
            return eid in self.queued

    def submit(self, key: str, pending: Pending, record: Record, stats, done: set[str] | None) -> None:
        self._raise()
        with self.lock:
            self.queued.add(pending.example_id)
        self.jobs.put((key, pending, record, stats, done))

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            key, pending, record, stats, done = job
            if self.error is None:  # after an error, what is still queued is dropped
                try:
                    _count(_commit(self.writer, pending, record, stats), pending.example_id, done, self.counts)
                except self.recoverable as e:
                    self.counts.failed.append((key, str(e)))
                    log.warning("skipped %s: %s", key, e)
                except BaseException as e:  # noqa: BLE001 - raised in the loop
                    self.error = e
            with self.lock:
                self.queued.discard(pending.example_id)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until every submitted example is committed; raise the error that stopped the thread."""
        self.stop()
        self._raise()

    def abandon(self) -> None:
        """Drop what is queued, let the example being written finish, stop the thread."""
        while True:
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        self.stop()

    def stop(self) -> None:
        """Commit what is queued (unless an error stopped the thread: then it is dropped), stop the thread."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join()
            total = self.loop_counts
            total.written += self.counts.written
            total.skipped += self.counts.skipped
            total.failed.extend(self.counts.failed)


def progress_bar(desc: str | None, total: int | None):
    """A tqdm bar counting examples, or None without a description."""
    if desc is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ex", dynamic_ncols=True)


def _consolidate_quietly(writer: RunWriter) -> None:
    """Index what was committed before the loop stopped; the error that stopped it is the one to report."""
    try:
        writer.consolidate()
    except Exception as e:  # noqa: BLE001 - a second failure must not replace the first
        log.warning("could not rewrite the run's index after the error: %s", e)
