"""Parallel recording with Dask: every example exactly once, identical to one process, and resume."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import zarr

N_EXAMPLES = 8


@pytest.fixture(scope="module")
def client():
    import sys
    import types

    from distributed import Client, LocalCluster

    # Streamlit's script runner (the AppTests earlier in the session) installs the app script as
    # __main__ and leaves it there; a spawned worker re-runs __main__'s file as it starts, so it would
    # run streamlit_app.py. The workers start from a bare __main__ instead.
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    finally:
        sys.modules["__main__"] = main
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_vilt_dir):
    """The same examples recorded in this process, one at a time (one torch thread, like a worker)."""
    import torch

    from adapters.vilt import ViltAdapter
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record_examples(ViltAdapter.load(str(tiny_vilt_dir)), limited(iter(EasyVQA("test")), N_EXAMPLES),
                        VLStore(path, mode="a"), "tiny", progress=False)
    finally:
        torch.set_num_threads(threads)
    return VLStore(path).run("tiny")


def assert_same_run(reader, reference):
    ids = [s.example_id for s in reader.summaries()]
    assert len(ids) == len(set(ids)) == N_EXAMPLES  # each example exactly once
    assert set(ids) == set(reference.example_ids())
    indexed = zarr.open_array(reader.store._store, path=f"{reader.path}/index/example", mode="r")[:]
    assert sorted(indexed) == sorted(ids)  # consolidated at the end
    for eid in ids:
        got, want = reader.record(eid), reference.record(eid)
        assert got.tokens == want.tokens and got.source_key == want.source_key
        np.testing.assert_array_equal(got.attention["self"].values, want.attention["self"].values)
        np.testing.assert_array_equal(got.hidden["joint"].values, want.hidden["joint"].values)
        assert got.prediction == want.prediction and got.label == want.label
        np.testing.assert_array_equal(reader.head_stats(eid)["self"][1], reference.head_stats(eid)["self"][1])


def test_two_workers_record_every_example_once_identical_to_one_process(tmp_path, tiny_vilt_dir, client,
                                                                        reference):
    from pipeline.parallel import record_parallel
    from store.zarr_store import VLStore

    out = str(tmp_path / "par.zarr")
    res = record_parallel(f"vilt:{tiny_vilt_dir}", "easyvqa", "test", N_EXAMPLES, out, "tiny", client=client,
                          chunk_size=2, progress=False)
    assert (res.written, res.skipped, res.failed) == (N_EXAMPLES, 0, [])
    # both workers took part (4 chunks of 2 over 2 single-threaded workers)
    assert len(client.nthreads()) == 2
    assert_same_run(VLStore(out).run("tiny"), reference)


def test_rerun_after_a_killed_run_resumes_and_rewrites_the_half_example(tmp_path, tiny_vilt_dir, client, reference):
    from adapters.vilt import ViltAdapter
    from pipeline.record import limited, record_examples
    from pipeline.parallel import record_parallel
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    out = tmp_path / "resume.zarr"
    store = VLStore(out, mode="a")
    record_examples(ViltAdapter.load(str(tiny_vilt_dir)), limited(iter(EasyVQA("test")), 3), store, "tiny",
                    progress=False, consolidate=False)
    # A run killed mid-example: the 4th example's arrays are partly there, its commit marker is not.
    half = sorted(set(reference.example_ids()) - set(store.run("tiny").example_ids()))[0]
    g = zarr.open_group(str(out), path=f"runs/tiny/examples/{half}", mode="w")
    g.create_array("image", shape=(2, 2, 3), dtype="uint8")
    g.attrs["question"] = "half written"
    assert half not in store.run("tiny").example_ids()  # readers ignore it

    res = record_parallel(f"vilt:{tiny_vilt_dir}", "easyvqa", "test", N_EXAMPLES, str(out), "tiny",
                          client=client, chunk_size=3, progress=False)
    assert (res.written, res.skipped, res.failed) == (N_EXAMPLES - 3, 3, [])
    assert_same_run(VLStore(out).run("tiny"), reference)


def test_chunk_ranges_cover_every_index_once():
    from pipeline.parallel import chunk_ranges

    for total, workers in ((0, 2), (1, 4), (8, 2), (1000, 3), (37, 5)):
        ranges = chunk_ranges(total, workers)
        covered = [i for a, b in ranges for i in range(a, b)]
        assert covered == list(range(total))
        assert all(0 < b - a <= 64 for a, b in ranges)
    assert chunk_ranges(10, 2, chunk_size=4) == [(0, 4), (4, 8), (8, 10)]
