"""Attention sinks (analysis/sinks.py) on a hand-built causal map with a known sink."""
from __future__ import annotations

import numpy as np
import pytest

from analysis.sinks import SINK_THRESHOLD, received_attention, sink_mask, without_sinks


def _causal_uniform(n: int) -> np.ndarray:
    """(query, key): each query spreads its row evenly over itself and the keys before it."""
    m = np.tril(np.ones((n, n), np.float32))
    return m / m.sum(-1, keepdims=True)


N = 40


def hand_built() -> np.ndarray:
    """(layer 2, head 2, N, N): layer 0 causal-uniform; layer 1, head 0: every query from token 1 on
    puts 0.7 on token 0 and spreads 0.3 over the rest it sees; head 1 causal-uniform."""
    uni = _causal_uniform(N)
    sink = uni.copy()
    for q in range(1, N):
        sink[q] = 0.0
        sink[q, 0] = 0.7
        sink[q, 1:q + 1] = 0.3 / q
    return np.stack([np.stack([uni, uni]), np.stack([sink, uni])])


def test_hand_built_sink_is_flagged_in_its_layer_only():
    v = hand_built()
    idx = np.arange(N)
    rec = received_attention(v, idx, idx, causal=True)
    uniform_first = np.mean(1 / np.arange(1, N + 1))  # token 0 under causal-uniform rows: H_N / N = 0.107
    np.testing.assert_allclose(rec[0, 0], uniform_first, rtol=1e-5)
    np.testing.assert_allclose(rec[1, 0], (np.mean([1] + [0.7] * (N - 1)) + uniform_first) / 2, rtol=1e-5)
    # the last token is seen by the last query only: 0.3 / 39 from head 0, 1 / 40 from head 1
    np.testing.assert_allclose(rec[1, N - 1], (0.3 / (N - 1) + 1 / N) / 2, rtol=1e-5)
    mask = sink_mask(v, idx, idx, causal=True)
    assert not mask[0].any()  # causal-uniform rows have no sink
    assert mask[1].nonzero()[0].tolist() == [0]
    assert rec[1, 0] >= SINK_THRESHOLD > rec[0, 0]
    # causal averaging matters: over every query, late keys would look starved by the rows that cannot see them
    assert received_attention(v, idx, idx, causal=False)[1, N - 1] < rec[1, N - 1] / 10


def test_without_sinks_renormalizes_the_rest():
    row = np.array([0.7, 0.1, 0.1, 0.1], np.float32)
    out = without_sinks(row, np.array([True, False, False, False]))
    np.testing.assert_allclose(out, [0, 1 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    assert without_sinks(np.array([1.0, 0.0]), np.array([True, False])).tolist() == [0.0, 0.0]


def test_judging_rows_leave_out_late_words_and_rows_that_see_nothing():
    """A causal prompt: <s>, 3 image tokens, 4 words. Every word puts 0.5 on <s>; the last word's
    row puts 0.9 on the word before it (recent content, seen by two rows only), and <s>'s own row
    gives it 1.0. With the words as judges, only <s> is a sink, with the words' mean 0.5."""
    from analysis.sinks import layer_sinks

    n, words = 8, [4, 5, 6, 7]
    rows = np.zeros((n, n), np.float32)
    rows[0, 0] = 1.0
    for q in range(1, 4):
        rows[q, :q + 1] = 1 / (q + 1)
    for q in words:
        rows[q, 0] = 0.5
        rows[q, 1:q + 1] = 0.5 / q
    rows[7] = 0.0
    rows[7, 0], rows[7, 6], rows[7, 7] = 0.05, 0.9, 0.05
    qidx = np.arange(n)
    values = rows[None, None]  # (layer 1, head 1, query, key)
    plain = sink_mask(values, qidx, qidx, causal=True)[0]
    assert plain[6] and plain[0]  # without judges the late word looks like a sink (0.9 and 0.5 from two rows)
    judges = np.isin(qidx, words)
    sinks = layer_sinks(values[0], qidx, qidx, causal=True, judges=judges)
    assert sinks.tokens == [0]
    assert sinks.share(0) == pytest.approx((0.5 * 3 + 0.05) / 4)
    assert sink_mask(values, qidx, qidx, causal=True, judges=judges)[0].tolist() == sinks.mask.tolist()
    # bidirectional rows see every key: the image tokens are judged too, the words are not
    assert not layer_sinks(values[0], qidx, qidx, causal=False, judges=judges).mask[words].any()
