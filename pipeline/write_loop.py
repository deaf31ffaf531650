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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, TypeVar

from store.schema import Record
from store.zarr_store import RunWriter

log = logging.getLogger("vl_lens.pipeline")

Item = TypeVar("Item")


@dataclass(frozen=True, kw_only=True)
class Pending:
    """One work item, identified: the example it would write and how to make it.

    ``make`` returns (Record, head statistics by kind); it is called only when the example is not
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
                  consolidate: bool = True) -> WriteCounts:
    """Write every item's example into ``writer``'s run; see the module docstring.

    ``list_committed``: read the run's committed ids once, up front (one writer per run); False asks
    the store per item instead (a Dask worker writing a chunk of a large shared run, where listing
    the whole run per chunk would cost more than the chunk). ``progress``: the progress bar's
    description (None: no bar). ``on_progress(done, total)`` after each item.
    """
    counts = WriteCounts()
    done = writer.committed_ids() if list_committed else None
    bar = progress_bar(progress, total)
    try:
        for i, item in enumerate(items):
            try:
                _write_one(prepare(item), writer, done, counts)
            except recoverable as e:
                counts.failed.append((key_of(item), str(e)))
                log.warning("skipped %s: %s", key_of(item), e)
            if bar is not None:
                bar.update(1)
            if on_progress is not None:
                on_progress(i + 1, total)
    except Exception:
        if consolidate:
            _consolidate_quietly(writer)
        raise
    finally:
        if bar is not None:
            bar.close()
    if consolidate:
        writer.consolidate()
    return counts


def _write_one(pending: Pending, writer: RunWriter, done: set[str] | None, counts: WriteCounts) -> None:
    """Skip a committed example, else make and commit it (``done`` grows with what this loop wrote)."""
    eid = pending.example_id
    if (eid in done) if done is not None else writer.is_committed(eid):
        counts.skipped += 1
        return
    record, stats = pending.make()
    if writer.write(record, stats, group=pending.group):
        counts.written += 1
        if done is not None:
            done.add(eid)
    else:  # committed meanwhile by another writer
        counts.skipped += 1


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
