"""Runs of consecutive indices: picking a few blocks of adjacent positions with slices instead of a
gather over every position (a gather of each (query, key) pair cost three times as much)."""
from __future__ import annotations

import numpy as np


def index_runs(indices) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive integers in increasing ``indices``."""
    idx = np.asarray(indices, np.int64)
    if not idx.size:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts, stops = np.concatenate([[0], breaks]), np.concatenate([breaks, [idx.size]])
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def take_runs(values: np.ndarray, runs: list[tuple[int, int]], axis: int) -> np.ndarray:
    """``values`` at the positions of ``runs`` along ``axis``, in order (one run: a view, no copy)."""
    index = [slice(None)] * values.ndim

    def part(a: int, b: int) -> np.ndarray:
        index[axis] = slice(a, b)
        return values[tuple(index)]

    if len(runs) == 1:
        return part(*runs[0])
    return np.concatenate([part(a, b) for a, b in runs], axis=axis)
