"""pipeline.write_loop.write_records, the one loop recording, parallel workers and the importer share."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import StoreError
from pipeline.write_loop import Pending, write_records
from store.zarr_store import VLStore
from tests.records import grid_record


def _work(made: list[str], fail: dict[str, Exception] | None = None):
    """Items are example ids; ``made`` lists the ids whose Record was made (the "model ran")."""
    fail = fail or {}

    def prepare(eid: str) -> Pending:
        if eid in fail:
            raise fail[eid]

        def make():
            made.append(eid)
            return grid_record(example_id=eid), None

        return Pending(example_id=eid, make=make, group="g" if eid.endswith("1") else None)

    return prepare


@pytest.mark.parametrize("background", [0, 3], ids=["inline", "background"])
@pytest.mark.parametrize("list_committed", [True, False])
def test_a_rerun_skips_committed_examples_without_making_them(tmp_path, list_committed, background):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    made: list[str] = []
    first = write_records(["e0", "e1"], _work(made), store.writer("r", {"model_id": "m"}),
                          list_committed=list_committed, background=background)
    assert (first.written, first.skipped, first.failed, made) == (2, 0, [], ["e0", "e1"])
    made.clear()
    again = write_records(["e0", "e1", "e2", "e2"], _work(made), store.writer("r", {"model_id": "m"}),
                          list_committed=list_committed, background=background)
    # e0, e1 committed before; the second e2 committed by this very loop: none of them made again
    assert (again.written, again.skipped, made) == (1, 3, ["e2"])
    run = VLStore(tmp_path / "s.zarr").run("r")
    assert {s.example_id: s.group for s in run.summaries()} == {"e0": None, "e1": "g", "e2": None}


@pytest.mark.parametrize("background", [0, 3], ids=["inline", "background"])
def test_recoverable_errors_fail_one_item_and_others_stop_the_loop_after_indexing(tmp_path, background):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    writer = store.writer("r", {"model_id": "m"})
    made: list[str] = []
    res = write_records(["e0", "bad", "e2"], _work(made, {"bad": ValueError("unreadable row")}), writer,
                        key_of=lambda eid: f"key/{eid}", recoverable=(ValueError,), background=background)
    assert (res.written, res.failed) == (2, [("key/bad", "unreadable row")])
    seen = []
    with pytest.raises(StoreError, match="disk full"):
        write_records(["e3", "stop", "e5"], _work(made, {"stop": StoreError("disk full")}), writer,
                      recoverable=(ValueError,), on_progress=lambda i, n: seen.append(i), background=background)
    assert "e5" not in made and seen == [1]
    # the index was rewritten after the error: it covers e3, committed before the loop stopped
    import zarr

    indexed = zarr.open_array(str(tmp_path / "s.zarr"), path="runs/r/index/example", mode="r")[:]
    assert sorted(indexed) == ["e0", "e2", "e3"]


# ---- commits on a background thread (record --batch-size) ------------------------------------------
class FailingWrites:
    """A RunWriter whose write raises ``errors[eid]`` for those examples (once the write starts)."""

    def __init__(self, writer, errors: dict[str, Exception]):
        self.writer, self.errors = writer, errors

    def __getattr__(self, name):
        return getattr(self.writer, name)

    def write(self, record, stats=None, *, group=None):
        if record.example_id in self.errors:
            raise self.errors[record.example_id]
        return self.writer.write(record, stats, group=group)


def test_a_failed_background_write_fails_its_item_or_stops_the_loop(tmp_path):
    import zarr

    store = VLStore(tmp_path / "s.zarr", mode="a")
    made: list[str] = []
    writer = FailingWrites(store.writer("r", {"model_id": "m"}), {"e1": OSError("one bad write")})
    res = write_records(["e0", "e1", "e2"], _work(made), writer, recoverable=(OSError,), background=2)
    assert (res.written, res.failed) == (2, [("e1", "one bad write")])
    writer = FailingWrites(store.writer("r", {"model_id": "m"}), {"e4": StoreError("disk full")})
    with pytest.raises(StoreError, match="disk full"):
        write_records([f"e{i}" for i in range(3, 40)], _work(made), writer, recoverable=(OSError,), background=2)
    indexed = set(zarr.open_array(str(tmp_path / "s.zarr"), path="runs/r/index/example", mode="r")[:])
    assert {"e0", "e2", "e3"} <= indexed and "e4" not in indexed
    # it stopped soon after: at most the queue's depth plus one made past the failed write
    assert len([e for e in made if e.startswith("e") and int(e[1:]) > 4]) <= 3
    assert indexed == set(VLStore(tmp_path / "s.zarr").run("r").example_ids())


def test_background_stats_are_made_off_the_loop_and_stored(tmp_path):
    """``make`` may leave the head statistics to the committer: they are stored as made."""
    import threading

    from analysis.head_stats import compute_head_stats

    threads = []

    def prepare(eid):
        rec = grid_record(example_id=eid)

        def stats():
            threads.append(threading.current_thread().name)
            return compute_head_stats(rec)

        return Pending(example_id=eid, make=lambda: (rec, stats))

    store = VLStore(tmp_path / "s.zarr", mode="a")
    write_records(["a", "b"], prepare, store.writer("r", {"model_id": "m"}), background=2)
    write_records(["c"], prepare, store.writer("r", {"model_id": "m"}))
    assert threads[:2] == ["vl-lens-commit"] * 2 and threads[2] == threading.current_thread().name
    run = VLStore(tmp_path / "s.zarr").run("r")
    for eid in ("a", "b", "c"):
        want = compute_head_stats(grid_record(example_id=eid))
        got = run.head_stats(eid)
        for kind, table in want.items():
            names, values = got[kind]
            assert list(names) == list(table.names)
            np.testing.assert_allclose(values, table.values, atol=1e-3, equal_nan=True)


def test_an_interrupt_keeps_what_was_committed(tmp_path):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    made: list[str] = []
    work = _work(made)

    def prepare(eid):
        if eid == "e6":
            raise KeyboardInterrupt
        return work(eid)

    with pytest.raises(KeyboardInterrupt):
        write_records([f"e{i}" for i in range(10)], prepare, store.writer("r", {"model_id": "m"}), background=4)
    writer = store.writer("r", {"model_id": "m"})
    committed = writer.committed_ids()
    assert committed <= {f"e{i}" for i in range(6)}
    for eid in committed:  # each one whole
        assert VLStore(tmp_path / "s.zarr").run("r").record(eid).example_id == eid
    again = write_records([f"e{i}" for i in range(10)], _work(made), writer, background=4)
    assert again.written == 10 - len(committed) and again.skipped == len(committed)
