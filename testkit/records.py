"""Token geometry of synthetic Records (no model needed), for the tests' and the benchmarks' hand-built
examples: each builds its own attention values, and they all lay tokens out the same way."""
from __future__ import annotations

import numpy as np


def grid_geometry(n_tokens: int, first: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_boxes (n, 4), token_grid (n, 2)) for a row-major rows x cols patch grid whose first patch is
    token ``first``; every other token has NaN boxes and grid (-1, -1)."""
    boxes = np.full((n_tokens, 4), np.nan, np.float32)
    grid = np.full((n_tokens, 2), -1, np.int32)
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        boxes[first + k] = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
        grid[first + k] = (r, c)
    return boxes, grid


def word_spans(n_tokens: int, words: dict[int, str], question: str) -> np.ndarray:
    """token_spans (n, 2): the character span of each word token ``{token index: word}`` in ``question``,
    found left to right; (-1, -1) for every other token."""
    spans = np.full((n_tokens, 2), -1, np.int32)
    start = 0
    for i, w in sorted(words.items()):
        s = question.index(w, start)
        spans[i] = (s, s + len(w))
        start = s + len(w)
    return spans
