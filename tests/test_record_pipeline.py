"""pipeline.record.record_examples: per-example failures are reported, a store error stops the run, nothing committed is lost."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.record import limited, record_examples
from sources.easyvqa import EasyVQA
from store.zarr_store import RunWriter, VLStore
from core.errors import StoreError


def _examples(n):
    return list(limited(iter(EasyVQA("test")), n))


def test_every_example_is_written_and_equals_a_direct_record(tmp_path, tiny_vilt):
    from analysis.head_stats import compute_head_stats

    exs = _examples(5)
    res = record_examples(tiny_vilt, iter(exs), VLStore(tmp_path / "s.zarr", mode="a"), "r", progress=False)
    assert (res.written, res.skipped, res.failed) == (5, 0, [])
    run = VLStore(tmp_path / "s.zarr").run("r")
    assert sorted(s.source_key for s in run.summaries()) == sorted(e.source_key for e in exs)
    direct = tiny_vilt.run(exs[3].image(), exs[3].question, label=exs[3].label)
    back = run.record(direct.example_id)
    np.testing.assert_array_equal(back.attention["self"].values, direct.attention["self"].values)
    names, vals = run.head_stats(direct.example_id)["self"]
    np.testing.assert_allclose(vals, compute_head_stats(direct)["self"].values, atol=1e-6)


def test_a_per_example_write_failure_is_reported_and_the_rest_written(tmp_path, tiny_vilt, monkeypatch):
    original = RunWriter.write
    calls = itertools.count()

    def flaky(self, record, *a, **kw):
        if next(calls) == 1:
            raise OSError("disk hiccup")
        return original(self, record, *a, **kw)

    monkeypatch.setattr(RunWriter, "write", flaky)
    res = record_examples(tiny_vilt, iter(_examples(4)), VLStore(tmp_path / "s.zarr", mode="a"), "r",
                          progress=False)
    assert res.written == 3
    assert res.failed == [("easyvqa/test/1", "disk hiccup")]


def test_a_store_error_stops_the_run_and_keeps_what_was_committed(tmp_path, tiny_vilt, monkeypatch):
    original = RunWriter.write
    calls = itertools.count()

    def full_disk(self, record, *a, **kw):
        if next(calls) >= 2:
            raise StoreError("cannot write: no space left on the device")
        return original(self, record, *a, **kw)

    monkeypatch.setattr(RunWriter, "write", full_disk)
    with pytest.raises(StoreError, match="no space left"):
        record_examples(tiny_vilt, iter(_examples(8)), VLStore(tmp_path / "s.zarr", mode="a"), "r",
                        progress=False)
    monkeypatch.undo()
    assert len(VLStore(tmp_path / "s.zarr").run("r").example_ids()) == 2
    # a rerun resumes: the two committed examples are skipped, the rest written
    res = record_examples(tiny_vilt, iter(_examples(8)), VLStore(tmp_path / "s.zarr", mode="a"), "r",
                          progress=False)
    assert (res.written, res.skipped) == (6, 2)


def test_an_interrupt_keeps_every_example_already_recorded(tmp_path, tiny_vilt):
    exs = _examples(6)

    def interrupted():
        yield from exs[:4]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_examples(tiny_vilt, interrupted(), VLStore(tmp_path / "s.zarr", mode="a"), "r", progress=False,
                        consolidate=False)
    run = VLStore(tmp_path / "s.zarr").run("r")
    assert sorted(s.source_key for s in run.summaries()) == sorted(e.source_key for e in exs[:4])
