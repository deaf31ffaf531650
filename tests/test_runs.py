"""core/runs.py: runs of consecutive indices, and picking them with slices equals a gather."""
from __future__ import annotations

import numpy as np
import pytest

from core.runs import index_runs, take_runs


def test_runs_of_consecutive_indices():
    assert index_runs([]) == []
    assert index_runs([3]) == [(3, 4)]
    assert index_runs([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 7), (9, 10)]
    assert index_runs(np.arange(4, 9)) == [(4, 9)]


@pytest.mark.parametrize("positions", [[0, 1, 2, 7, 9, 10, 11], [2, 3, 4], [5]])
def test_taking_runs_equals_a_gather(positions):
    values = np.random.default_rng(0).random((2, 3, 12, 12)).astype(np.float16)
    pos = np.asarray(positions)
    runs = index_runs(pos)
    got = take_runs(take_runs(values, runs, 2), runs, 3)
    np.testing.assert_array_equal(got, values[:, :, pos[:, None], pos])
    assert np.shares_memory(got, values) == (len(runs) == 1)  # one run: a view, no copy
