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

log = logging.getLogger("vl_lens.pipeline.parallel")

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
    """Runs on a worker: load the model there (warming its cache) and return the run provenance."""
    return _adapter(model).provenance()


def _examples(dataset_spec: str, split: str | None, start: int, stop: int):
    from sources import open_source

    source = open_source(dataset_spec, split=split)
    if hasattr(source, "__getitem__"):
        return (source[i] for i in range(start, min(stop, len(source))))
    return itertools.islice(iter(source), start, stop)  # streaming sources: examples load lazily


def record_chunk(model: str, dataset_spec: str, split: str | None, start: int, stop: int, out: str,
                 run_name: str, provenance: dict, top_k: int = 5) -> ChunkResult:
    """Record examples [start, stop) of a data set into ``out``; runs on a worker process."""
    from core.errors import InputError
    from core.ids import example_id_of
    from analysis.head_stats import compute_head_stats
    from core.errors import SourceError
    from store.zarr_store import VLStore

    adapter = _adapter(model)
    writer = VLStore(out, mode="a").writer(run_name, provenance)
    written = skipped = 0
    failed = []
    for ex in _examples(dataset_spec, split, start, stop):
        try:
            image = ex.image()
            if writer.is_committed(example_id_of(image, ex.question)):
                skipped += 1  # resume: committed by an earlier (or killed) run
                continue
            rec = adapter.run(image, ex.question, top_k=top_k, label=ex.label, source_key=ex.source_key)
            if writer.write(rec, compute_head_stats(rec), group=ex.group):
                written += 1
            else:
                skipped += 1
        except (InputError, SourceError, OSError, ValueError) as e:
            failed.append((ex.source_key, str(e)))
            log.warning("skipped %s: %s", ex.source_key, e)
    return ChunkResult(written=written, skipped=skipped, failed=tuple(failed))


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
    from distributed import Client, LocalCluster, as_completed

    from sources import open_source
    from core.errors import StoreError
    from store.zarr_store import VLStore

    if workers < 1:
        raise ValueError("--workers must be at least 1")
    source = open_source(dataset_spec, split=split)
    total = len(source) if limit is None else min(limit, len(source))
    store = VLStore(out, mode="a")  # fail fast on a bad store, before starting processes
    start = time.time()
    cluster = None
    own_client = client is None
    if client is not None:
        n_workers = max(1, sum(client.nthreads().values()))
    elif scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as e:
            raise StoreError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from e
        n_workers = max(1, sum(client.nthreads().values()))
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        n_workers = workers
    result = RecordResult(run=run_name)
    bar = None
    try:
        client.run(_worker_setup)
        # The run group is created once, here, before any worker writes into it.
        provenance = client.submit(_provenance, model, pure=False).result()
        writer = store.writer(run_name, provenance)
        ranges = chunk_ranges(total, n_workers, chunk_size)
        futures = {client.submit(record_chunk, model, dataset_spec, split, a, b, out, run_name, provenance, top_k,
                                 pure=False, retries=1): (a, b) for a, b in ranges}
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"record {run_name} ({n_workers} workers)", unit="ex", dynamic_ncols=True)
        for fut in as_completed(futures):
            a, b = futures[fut]
            chunk = fut.result()
            result.written += chunk.written
            result.skipped += chunk.skipped
            result.failed.extend(chunk.failed)
            if bar is not None:
                bar.update(b - a)
        writer.consolidate()
    finally:
        if bar is not None:
            bar.close()
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
    result.seconds = time.time() - start
    return result
