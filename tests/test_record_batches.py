"""record_examples(batch_size=B): B examples per forward, the same store as one at a time (up to
float16 rounding), a bad example failing alone, and a rerun resuming without running the model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.record import limited, record_examples
from sources.easyvqa import EasyVQA
from store.zarr_store import VLStore


@pytest.fixture(scope="module")
def tiny_lxmert_adapter(tmp_path_factory):
    from testkit.tiny_lxmert import make_tiny_adapter

    return make_tiny_adapter(tmp_path_factory.mktemp("lx"))[0]


def _examples(n, bad=()):
    exs = list(limited(iter(EasyVQA("test")), n))
    return [dataclasses.replace(ex, load_image_bytes=lambda: b"not an image") if i in bad else ex
            for i, ex in enumerate(exs)]


def _count_batches(adapter, monkeypatch):
    sizes = []
    original = adapter.run_batch

    def counted(images, questions, **kw):
        sizes.append(len(images))
        return original(images, questions, **kw)

    monkeypatch.setattr(adapter, "run_batch", counted)
    return sizes


@pytest.mark.parametrize("adapter_name", ["tiny_vilt", "tiny_lxmert_adapter"])
def test_batched_recording_writes_what_one_at_a_time_writes(tmp_path, request, monkeypatch, adapter_name):
    adapter = request.getfixturevalue(adapter_name)
    exs = _examples(7, bad={4})
    one = record_examples(adapter, iter(exs), VLStore(tmp_path / "one.zarr", mode="a"), "r", progress=False)
    sizes = _count_batches(adapter, monkeypatch)
    res = record_examples(adapter, iter(exs), VLStore(tmp_path / "b.zarr", mode="a"), "r", progress=False,
                          batch_size=3)
    assert sizes == [3, 2, 1]  # chunks of 3; the one with the unreadable image runs its 2 good ones
    assert (res.written, res.skipped) == (one.written, one.skipped) == (6, 0)
    assert [k for k, _ in res.failed] == [k for k, _ in one.failed] == [exs[4].source_key]
    a, b = VLStore(tmp_path / "one.zarr").run("r"), VLStore(tmp_path / "b.zarr").run("r")
    assert sorted(a.example_ids()) == sorted(b.example_ids())
    for eid in a.example_ids():
        ra, rb = a.record(eid), b.record(eid)
        assert ra.tokens == rb.tokens and ra.prediction.answers == rb.prediction.answers
        for kind in ra.attention:
            np.testing.assert_allclose(rb.attention[kind].values.astype(np.float32),
                                       ra.attention[kind].values.astype(np.float32), atol=2e-3, err_msg=kind)

    # a rerun resumes: every example is committed, so no batch runs
    sizes.clear()
    again = record_examples(adapter, iter(exs), VLStore(tmp_path / "b.zarr", mode="a"), "r", progress=False,
                            batch_size=3)
    assert (again.written, again.skipped, sizes) == (0, 6, [])


def test_a_per_example_error_in_a_batch_fails_only_that_example(tmp_path, tiny_vilt):
    exs = _examples(4)
    exs[1] = dataclasses.replace(exs[1], question="   ")  # an empty question: InputError in run_batch
    res = record_examples(tiny_vilt, iter(exs), VLStore(tmp_path / "s.zarr", mode="a"), "r", progress=False,
                          batch_size=4)
    assert res.written == 3 and [k for k, _ in res.failed] == [exs[1].source_key]


def test_batch_size_must_be_positive(tmp_path, tiny_vilt):
    with pytest.raises(ValueError, match="at least 1"):
        record_examples(tiny_vilt, iter(_examples(2)), VLStore(tmp_path / "s.zarr", mode="a"), "r",
                        progress=False, batch_size=0)


def test_record_cli_batch_size(tmp_path, tiny_vilt_dir, capsys):
    from cli import main

    out = tmp_path / "s.zarr"
    base = ["record", "--model", f"vilt:{tiny_vilt_dir}", "--limit", "5", "--out", str(out), "--run", "r"]
    assert main(base + ["--batch-size", "2", "--device", "cpu"]) == 0
    assert "5 written" in capsys.readouterr().out
    assert len(VLStore(out).run("r").example_ids()) == 5
    assert main(base + ["--batch-size", "0"]) != 0
    err = capsys.readouterr().err
    assert "--batch-size must be at least 1" in err and "Traceback" not in err
