"""Attention sinks: tokens that take a large share of attention whatever the content (generative
models' first token, some image tokens; Xiao et al. 2023, "Efficient Streaming Language Models with
Attention Sinks").

Rule (per layer): a key token is a sink when the attention it receives, averaged over the heads and
over the query rows that can see it (causal rows see only keys up to themselves), is at least
``SINK_THRESHOLD`` (0.2: a fifth of a row, on average). Views can flag sinks and, with
``without_sinks``, leave them out and renormalize the rest of each row.
"""
from __future__ import annotations

import numpy as np

SINK_THRESHOLD = 0.2


def received_attention(values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *,
                       causal: bool) -> np.ndarray:
    """(layer, key): mean attention each key receives over heads and the queries that can see it.

    ``values``: (layer, head, query, key) rows; ``causal``: a query sees only keys with a token index
    not after its own. A key no recorded query can see gets NaN.
    """
    v = np.asarray(values, np.float32).mean(axis=1)  # (layer, query, key)
    q, k = np.asarray(query_index), np.asarray(key_index)
    sees = (k[None, :] <= q[:, None]) if causal else np.ones((len(q), len(k)), bool)  # (query, key)
    count = sees.sum(0).astype(np.float32)
    total = (v * sees[None]).sum(axis=1)  # (layer, key)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def sink_mask(values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *, causal: bool,
              threshold: float = SINK_THRESHOLD) -> np.ndarray:
    """(layer, key) bool: the sinks of each layer (see the module docstring)."""
    received = received_attention(values, query_index, key_index, causal=causal)
    return np.nan_to_num(received, nan=0.0) >= threshold


def without_sinks(rows: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    """Rows (..., key) with the ``sinks`` keys (key,) set to 0 and the rest renormalized to sum to 1
    (a row whose whole mass was on sinks becomes all 0)."""
    r = np.where(np.asarray(sinks, bool), 0.0, np.asarray(rows, np.float32))
    total = r.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, r / np.where(total > 0, total, 1.0), 0.0).astype(np.float32)
