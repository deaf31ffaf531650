"""Synthetic Records for store tests: deterministic from an integer, no model needed."""
from __future__ import annotations

import numpy as np

from store.schema import AttentionBlock, HiddenBlock, Prediction, Record
from testkit.records import grid_geometry, word_spans


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def synthetic_record(i: int, *, n_text: int = 4, grid: int = 3, layers: int = 2, heads: int = 2,
                     dim: int = 8, label: str | None = "red") -> Record:
    """Example ``ex{i:04d}``: [CLS] words [SEP] + a grid x grid patch image, softmax attention."""
    rng = np.random.RandomState(i)
    words = [f"w{k}" for k in range(n_text)]
    question = " ".join(words)
    tokens = ["[CLS]"] + words + ["[SEP]"] + [f"patch {r},{c}" for r in range(grid) for c in range(grid)]
    modality = ["special"] + ["text"] * n_text + ["special"] + ["image"] * grid * grid
    n = len(tokens)
    boxes, grid_idx = grid_geometry(n, n_text + 2, grid, grid)
    spans = word_spans(n, {1 + k: w for k, w in enumerate(words)}, question)
    attn = softmax_rows(rng.randn(layers, heads, n, n).astype(np.float32))
    hidden = rng.randn(layers + 1, n, dim).astype(np.float32)
    idx = np.arange(n)
    probs = np.sort(rng.rand(3))[::-1]
    return Record(
        example_id=f"ex{i:04d}", question=question, tokens=tuple(tokens), modality=tuple(modality),
        token_boxes=boxes, token_grid=grid_idx, token_spans=spans,
        image=(rng.rand(12, 12, 3) * 255).astype(np.uint8),
        attention={"self": AttentionBlock(values=attn, query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=hidden, token_index=idx)},
        prediction=Prediction(answers=("red", "blue", "green"), probabilities=tuple(float(p) for p in probs)),
        label=label, source_key=f"synthetic/{i}", meta={"model_id": "synthetic"},
    )


PROVENANCE = {"model_id": "synthetic", "adapter": "synthetic", "adapter_version": "1",
              "architecture": "single-stream", "attention_kinds": ["self"],
              "config": {"layers": 2, "heads": 2}}


def same_record(a: Record, b: Record) -> bool:
    """The stored parts of two records are equal (attention / hidden compared after float16 storage)."""
    if (a.example_id, a.question, a.tokens, a.modality, a.label) != (b.example_id, b.question, b.tokens,
                                                                      b.modality, b.label):
        return False
    if a.prediction.answers != b.prediction.answers:
        return False
    if not np.allclose(a.prediction.probabilities, b.prediction.probabilities):
        return False
    for kind in a.attention:
        if not np.array_equal(a.attention[kind].values, b.attention[kind].values):
            return False
    for stream in a.hidden:
        if not np.array_equal(a.hidden[stream].values, b.hidden[stream].values):
            return False
    return (np.array_equal(a.image, b.image) and np.array_equal(a.token_grid, b.token_grid)
            and np.array_equal(a.token_spans, b.token_spans)
            and np.array_equal(a.token_boxes, b.token_boxes, equal_nan=True))
