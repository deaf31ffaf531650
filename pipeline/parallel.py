"""Parallel recording: the record pipeline over several processes, or a Dask cluster.

    python cli.py record --model vilt-easyvqa --limit 1000 --out store.zarr --workers 4
    python cli.py record --model vilt-easyvqa --out s3://bucket/store.zarr --scheduler tcp://host:8786

The coordinator (this process) creates the run group first, so workers never race to create
it; then it splits the example indices into contiguous chunks and hands them to Dask workers
(``LocalCluster(processes=True)`` on one machine, or the cluster behind ``scheduler``). Each
worker loads the model once (cached per worker process), opens the store in mode "a" and writes
its own examples. ``RunWriter.write`` commits one example atomically and different examples
touch disjoint keys, so no lock is needed and a worker killed midway loses only the example it
was writing. Committed examples are skipped before the model runs, so a rerun resumes. At the
end the coordinator writes the run's consolidated index once.

Every worker needs this repository on its Python path, the requirements installed, the model
(a hub id it can reach, or a directory it can see) and the data set; the store location must
be one every worker can write (a shared file system, or an fsspec URL such as
``s3://bucket/store.zarr`` with s3fs installed on the workers). See docs/scale.md.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field

from pipeline.record import RecordResult

# Per-worker-process model cache: model spec -> adapter (each worker loads the model once).
_ADAPTERS: dict = {}


@dataclass(frozen=True, kw_only=True)
class ChunkResult:
    """What one worker did with one chunk of example indices."""

    written: int = 0
    skipped: int = 0
    failed: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _adapter(model: str):
    if model not in _ADAPTERS:
        from adapters.registry import load_model

        _ADAPTERS[model] = load_model(model)
    return _ADAPTERS[model]


def _provenance(model: str) -> dict:
    """Runs on a worker: load the model there (warming its cache) and return the run provenance
    (a local checkpoint hashed there, where its directory is)."""
    from pipeline.provenance import with_checkpoint_hash

    return with_checkpoint_hash(_adapter(model).provenance())


def _examples(dataset_spec: str, split: str | None, start: int, stop: int):
    from sources import open_source

    source = open_source(dataset_spec, split=split)
    if hasattr(source, "__getitem__"):
        return (source[i] for i in range(start, min(stop, len(source))))
    return itertools.islice(iter(source), start, stop)  # streaming sources: examples load lazily


def record_chunk(model: str, dataset_spec: str, split: str | None, start: int, stop: int, out: str,
                 run_name: str, provenance: dict, top_k: int = 5) -> ChunkResult:
    """Record examples [start, stop) of a data set into ``out``; runs on a worker process.

    The same loop as one-process recording; committed examples are checked one by one (a listing
    of a large shared run per chunk would cost more than the chunk), and the coordinator writes
    the index once at the end.
    """
    from pipeline.record import RECOVERABLE, example_work
    from pipeline.write_loop import write_records
    from store.zarr_store import VLStore

    writer = VLStore(out, mode="a").writer(run_name, provenance)
    counts = write_records(_examples(dataset_spec, split, start, stop), example_work(_adapter(model), top_k),
                           writer, key_of=lambda ex: ex.source_key, recoverable=RECOVERABLE,
                           list_committed=False, consolidate=False)
    return ChunkResult(written=counts.written, skipped=counts.skipped, failed=tuple(counts.failed))


def chunk_ranges(total: int, workers: int, chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges covering 0..total: about 4 chunks per worker, at most 64 examples.

    Several chunks per worker balance the load (examples differ in cost) and bound what a
    failed task has to redo; contiguous ranges let streaming sources skip ahead cheaply.
    """
    if total <= 0:
        return []
    size = chunk_size or max(1, min(64, math.ceil(total / (max(1, workers) * 4))))
    return [(s, min(s + size, total)) for s in range(0, total, size)]


def _worker_setup():
    """Each worker process runs one example at a time on one core."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a requirement
        pass


def record_parallel(model: str, dataset_spec: str, split: str | None, limit: int | None, out: str,
                    run_name: str, *, workers: int = 2, scheduler: str | None = None, top_k: int = 5,
                    chunk_size: int | None = None, progress: bool = True, client=None) -> RecordResult:
    """Record ``limit`` examples (all when None) of a data set with ``workers`` Dask worker processes.

    ``scheduler``: address of a running Dask scheduler (``tcp://host:8786``); without it a
    ``LocalCluster`` of ``workers`` single-threaded processes is started and stopped here.
    ``client``: an existing ``distributed.Client`` to use instead (left open).
    """
    from sources import open_source
    from store.zarr_store import VLStore

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    source = open_source(dataset_spec, split=split)
    total = len(source) if limit is None else min(limit, len(source))
    store = VLStore(out, mode="a")  # fail fast on a bad store, before starting processes
    start = time.time()
    own_client = client is None
    client, cluster, n_workers = _connect(client, scheduler, workers)
    try:
        client.run(_worker_setup)
        # The run group is created once, here, before any worker writes into it.
        provenance = client.submit(_provenance, model, pure=False).result()
        writer = store.writer(run_name, provenance)
        ranges = chunk_ranges(total, n_workers, chunk_size)
        futures = {client.submit(record_chunk, model, dataset_spec, split, a, b, out, run_name, provenance, top_k,
                                 pure=False, retries=1): (a, b) for a, b in ranges}
        desc = f"record {run_name} ({n_workers} workers)" if progress else None
        result = _gather(futures, RecordResult(run=run_name), desc, total)
        writer.consolidate()
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
    result.seconds = time.time() - start
    return result


def _connect(client, scheduler: str | None, workers: int):
    """(client, the LocalCluster started here or None, worker threads): the given client, the
    scheduler's, or a new LocalCluster of ``workers`` single-threaded processes."""
    from distributed import Client, LocalCluster

    from core.errors import StoreError

    if client is not None:
        return client, None, max(1, sum(client.nthreads().values()))
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as e:
            raise StoreError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from e
        return client, None, max(1, sum(client.nthreads().values()))
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster, workers


def _gather(futures: dict, result: RecordResult, desc: str | None, total: int) -> RecordResult:
    """Add up the chunks' results as they finish; the progress bar advances a chunk at a time."""
    from distributed import as_completed

    from pipeline.write_loop import progress_bar

    bar = progress_bar(desc, total)
    try:
        for fut in as_completed(futures):
            a, b = futures[fut]
            chunk = fut.result()
            result.written += chunk.written
            result.skipped += chunk.skipped
            result.failed.extend(chunk.failed)
            if bar is not None:
                bar.update(b - a)
    finally:
        if bar is not None:
            bar.close()
    return result
