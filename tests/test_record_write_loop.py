"""pipeline.write_loop.write_records, the one loop recording, parallel workers and the importer share."""
from __future__ import annotations

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


@pytest.mark.parametrize("list_committed", [True, False])
def test_a_rerun_skips_committed_examples_without_making_them(tmp_path, list_committed):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    made: list[str] = []
    first = write_records(["e0", "e1"], _work(made), store.writer("r", {"model_id": "m"}),
                          list_committed=list_committed)
    assert (first.written, first.skipped, first.failed, made) == (2, 0, [], ["e0", "e1"])
    made.clear()
    again = write_records(["e0", "e1", "e2", "e2"], _work(made), store.writer("r", {"model_id": "m"}),
                          list_committed=list_committed)
    # e0, e1 committed before; the second e2 committed by this very loop: none of them made again
    assert (again.written, again.skipped, made) == (1, 3, ["e2"])
    run = VLStore(tmp_path / "s.zarr").run("r")
    assert {s.example_id: s.group for s in run.summaries()} == {"e0": None, "e1": "g", "e2": None}


def test_recoverable_errors_fail_one_item_and_others_stop_the_loop_after_indexing(tmp_path):
    store = VLStore(tmp_path / "s.zarr", mode="a")
    writer = store.writer("r", {"model_id": "m"})
    made: list[str] = []
    res = write_records(["e0", "bad", "e2"], _work(made, {"bad": ValueError("unreadable row")}), writer,
                        key_of=lambda eid: f"key/{eid}", recoverable=(ValueError,))
    assert (res.written, res.failed) == (2, [("key/bad", "unreadable row")])
    seen = []
    with pytest.raises(StoreError, match="disk full"):
        write_records(["e3", "stop", "e5"], _work(made, {"stop": StoreError("disk full")}), writer,
                      recoverable=(ValueError,), on_progress=lambda i, n: seen.append(i))
    assert "e5" not in made and seen == [1]
    # the index was rewritten after the error: it covers e3, committed before the loop stopped
    import zarr

    indexed = zarr.open_array(str(tmp_path / "s.zarr"), path="runs/r/index/example", mode="r")[:]
    assert sorted(indexed) == ["e0", "e2", "e3"]
