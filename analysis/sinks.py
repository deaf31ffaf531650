"""Attention sinks: tokens that take a large share of attention whatever the content (generative
models' first token, some image tokens; Xiao et al. 2023, "Efficient Streaming Language Models with
Attention Sinks").

Rule (per layer): a key token is a sink when the attention it receives, averaged over the heads and
over the query rows that can see it (causal rows see only keys up to themselves), is at least
``SINK_THRESHOLD`` (0.2: a fifth of a row, on average).

Judges (what the views use): with ``judges`` (the rows of the question's and the answer's words)
only those rows are averaged, and only keys that every one of them sees, other than those words
themselves, are judged. In a causal sequence that leaves out (1) the question's words and the
answer as keys: each is seen by the few rows after it, which attend to recent content words (on the
demo LLaVA's 82.1% checkpoint, easy-VQA, 20 examples, "brown" or "circle" received 0.2-0.6 from the
5-6 rows after them), which is not a sink's content-blind pull; and (2) rows that see almost nothing (the first
token's row gives it all of its attention). What remains is what a sink is: a token before the
question (the first token, template tokens, image tokens) that takes attention from every word (on
the same 20 examples: ``<s>`` in the last layer in 18, with 0.21-0.41; ``<user>`` and an image
patch once each, 0.20-0.26; with the 83.8% checkpoint: ``<s>`` in 16, 0.22-0.42, and an image patch
once, 0.21; the 85.5% checkpoint, 4 vision layers: ``<user>`` in the first layer in 2, 0.20-0.21;
the shipped 97.6% one: an image patch in the last layer in 5, 0.21-0.23, nothing else). In
a bidirectional model every row sees every key, so every non-word key is judged ([CLS] / [SEP]
sinks, image tokens). Views flag sinks and, with ``without_sinks``, leave them out and renormalize
the rest of each row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SINK_THRESHOLD = 0.2


def received_attention(values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *,
                       causal: bool) -> np.ndarray:
    """(layer, key): mean attention each key receives over heads and the queries that can see it.

    ``values``: (layer, head, query, key) rows; ``causal``: a query sees only keys with a token index
    not after its own. A key no recorded query can see gets NaN.
    """
    v = np.asarray(values, np.float32).mean(axis=1)  # (layer, query, key)
    sees = _sees(query_index, key_index, causal)
    count = sees.sum(0).astype(np.float32)
    total = (v * sees[None]).sum(axis=1)  # (layer, key)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def sink_mask(values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *, causal: bool,
              threshold: float = SINK_THRESHOLD, judges: np.ndarray | None = None) -> np.ndarray:
    """(layer, key) bool: the sinks of each layer (see the module docstring); ``judges``: (query,) bool,
    the rows that must all see a key for it to be judged (default: every row)."""
    judged = _judged(query_index, key_index, causal, judges)
    values, query_index = _judging(values, query_index, judges)
    received = received_attention(values, query_index, key_index, causal=causal)
    return (np.nan_to_num(received, nan=0.0) >= threshold) & judged


def _judging(values: np.ndarray, query_index: np.ndarray, judges: np.ndarray | None):
    """(values, query_index) of the judging rows only (all rows when ``judges`` is None or selects none)."""
    if judges is None or not np.asarray(judges, bool).any():
        return np.asarray(values), np.asarray(query_index)
    keep = np.asarray(judges, bool)
    return np.asarray(values)[..., keep, :], np.asarray(query_index)[keep]


def _judged(query_index: np.ndarray, key_index: np.ndarray, causal: bool, judges: np.ndarray | None) -> np.ndarray:
    """(key,) bool: every key without ``judges``; with them, the keys every judging row sees other
    than the judging tokens themselves (a row's attention on its own token is no pull from the others)."""
    if judges is None or not np.asarray(judges, bool).any():
        return np.ones(len(key_index), bool)
    _, qi = _judging(np.zeros((len(query_index), 1)), query_index, judges)
    return _sees(qi, key_index, causal).all(0) & ~np.isin(np.asarray(key_index), qi)


def _sees(query_index: np.ndarray, key_index: np.ndarray, causal: bool) -> np.ndarray:
    """(query, key) bool: which keys each query row can see."""
    q, k = np.asarray(query_index), np.asarray(key_index)
    return (k[None, :] <= q[:, None]) if causal else np.ones((len(q), len(k)), bool)


def without_sinks(rows: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    """Rows (..., key) with the ``sinks`` keys (key,) set to 0 and the rest renormalized to sum to 1
    (a row whose whole mass was on sinks becomes all 0)."""
    r = np.where(np.asarray(sinks, bool), 0.0, np.asarray(rows, np.float32))
    total = r.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, r / np.where(total > 0, total, 1.0), 0.0).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class LayerSinks:
    """The sinks of one layer of one attention kind (see the module docstring)."""

    key_index: np.ndarray  # (key,) record token index of each key
    received: np.ndarray  # (key,) mean attention each key receives (NaN: no recorded query sees it)
    mask: np.ndarray  # (key,) bool: the key is a sink
    threshold: float

    @property
    def tokens(self) -> list[int]:
        """Record token indices of the sinks, the strongest first."""
        pos = np.flatnonzero(self.mask)
        return [int(self.key_index[p]) for p in pos[np.argsort(-self.received[pos], kind="stable")]]

    def share(self, token: int) -> float:
        """Mean attention ``token`` receives (as a key) at this layer."""
        return float(self.received[np.flatnonzero(self.key_index == token)[0]])


def layer_sinks(layer_values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *, causal: bool,
                threshold: float = SINK_THRESHOLD, judges: np.ndarray | None = None) -> LayerSinks:
    """Sinks of one layer from its (head, query, key) rows (``judges`` as in ``sink_mask``); ``received``
    is the mean over the judging rows."""
    v, qi = _judging(np.asarray(layer_values, np.float32)[None], query_index, judges)
    received = received_attention(v, qi, key_index, causal=causal)[0]
    mask = (np.nan_to_num(received, nan=0.0) >= threshold) & _judged(query_index, key_index, causal, judges)
    return LayerSinks(key_index=np.asarray(key_index), received=received, mask=mask, threshold=threshold)


def head_stats_without_sinks(values: np.ndarray, query_index: np.ndarray, key_index: np.ndarray, *,
                             modality, grid: np.ndarray, role, kind: str, causal: bool,
                             threshold: float = SINK_THRESHOLD) -> tuple[list[str], np.ndarray]:
    """Head statistics of one kind's recorded rows with each layer's sinks left out (rows renormalized).

    ``values``: (layer, head, query, key) over the record's ``modality`` (token,), ``grid`` (token, 2),
    ``role`` (token,). Returns (names, (stat, layer, head)): every statistic of analysis/head_stats.py
    and, for a generated answer, answer_to_image / answer_to_question. A statistic whose query rows were
    not recorded (a generative run keeps no image rows by default: image -> text) is NaN.
    """
    from analysis.head_stats import HEAD_STATS, StatInput, stat_values
    from analysis.layer_stats import answer_stats_of_rows

    v = np.asarray(values, np.float32)
    modality, qi, ki = np.asarray(modality), np.asarray(query_index), np.asarray(key_index)
    mask = sink_mask(v, qi, ki, causal=causal, threshold=threshold, judges=modality[qi] == "text")  # (layer, key)
    clean = np.stack([without_sinks(v[layer], mask[layer]) for layer in range(len(v))])
    grid = np.asarray(grid)
    inp = StatInput(values=clean, query_modality=modality[qi], key_modality=modality[ki], query_token=qi, key_token=ki,
                    query_grid=grid[qi], key_grid=grid[ki], kind=kind)
    out = dict(zip(HEAD_STATS, stat_values(inp)[0]))
    if np.array_equal(ki, np.arange(len(modality))):  # answer rows need every token as a key
        out.update(answer_stats_of_rows(clean, qi, modality, role))
    return list(out), np.stack(list(out.values()))
