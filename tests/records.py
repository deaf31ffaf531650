"""Hand-built Records for tests: known attention patterns, no model."""
from __future__ import annotations

import numpy as np

from store.schema import AttentionBlock, HiddenBlock, Prediction, Record


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def grid_record(*, layers: int = 2, heads: int = 2, words=("what", "color"), grid=(2, 2), dim: int = 8,
                attention: np.ndarray | None = None, example_id: str = "ex0", label: str | None = "red",
                answers=("red", "blue"), probs=(0.7, 0.2), seed: int = 0) -> Record:
    """[CLS] words [SEP] [IMG] patches(row-major): a single-stream record with a patch grid."""
    rng = np.random.RandomState(seed)
    gh, gw = grid
    tokens = ["[CLS]", *words, "[SEP]", "[IMG]"] + [f"patch {r},{c}" for r in range(gh) for c in range(gw)]
    modality = ["special"] + ["text"] * len(words) + ["special", "special"] + ["image"] * (gh * gw)
    n = len(tokens)
    boxes = np.full((n, 4), np.nan, np.float32)
    gridpos = np.full((n, 2), -1, np.int32)
    spans = np.full((n, 2), -1, np.int32)
    q = " ".join(words)
    pos = 0
    for i, w in enumerate(words):
        spans[1 + i] = (pos, pos + len(w))
        pos += len(w) + 1
    k = len(words) + 3
    for r in range(gh):
        for c in range(gw):
            boxes[k] = (c / gw, r / gh, (c + 1) / gw, (r + 1) / gh)
            gridpos[k] = (r, c)
            k += 1
    if attention is None:
        attention = softmax_rows(rng.randn(layers, heads, n, n))
    idx = np.arange(n)
    return Record(
        example_id=example_id, question=q, tokens=tuple(tokens), modality=tuple(modality), token_boxes=boxes,
        token_grid=gridpos, token_spans=spans, image=(rng.rand(16, 16, 3) * 255).astype(np.uint8),
        attention={"self": AttentionBlock(values=attention, query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=rng.randn(attention.shape[0] + 1, n, dim), token_index=idx)},
        prediction=Prediction(answers=answers, probabilities=probs), label=label, meta={"model_id": "hand"},
    )
