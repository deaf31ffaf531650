"""Evaluating a target on many inputs, the answer probability (the adapter's rule), and building results."""
from __future__ import annotations

import time

import numpy as np
import torch

from analysis.attribution.results import AttributionResult
from analysis.attribution.targets import Target


def tensor_keys(inputs: dict) -> list[str]:
    return [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]


def concat_inputs(batch: list[dict]) -> dict:
    """Stack several batch-of-1 input dicts along the batch dimension (non-tensors from the first)."""
    first = batch[0]
    out = dict(first)
    for k in tensor_keys(first):
        out[k] = torch.cat([b[k] for b in batch], dim=0)
    return out


def _batched(adapter, inputs_list: list[dict], batch_size: int, fn) -> np.ndarray:
    """fn(logits) -> (batch,) for each input dict, evaluated in batches without gradients."""
    out = []
    with torch.no_grad():
        for i in range(0, len(inputs_list), batch_size):
            logits = adapter.forward_logits(**concat_inputs(inputs_list[i:i + batch_size]))
            out.append(fn(logits).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def target_scores(adapter, target: Target, inputs_list: list[dict], batch_size: int = 16) -> np.ndarray:
    """Target score of each input dict (batch-of-1 dicts), evaluated in batches, no gradients."""
    return _batched(adapter, inputs_list, batch_size, target.score)


def target_probabilities(adapter, target: Target, inputs_list: list[dict], batch_size: int = 16) -> np.ndarray:
    """Probability of the answer (minus the contrast's, for "A rather than B") for each input dict, by the
    adapter's own rule (``answer_probabilities``: softmax or sigmoid, as the model was trained); for a generated
answer, the product of its tokens' probabilities (``GenerationTarget``)."""
    return _batched(adapter, inputs_list, batch_size, lambda logits: target.probability_margin(adapter, logits))


def answer_probability(adapter, spec, target: Target) -> float:
    """The answer's probability on the spec's input, by the adapter's rule (the same as its prediction)."""
    with torch.no_grad():
        return float(target.probability(adapter, adapter.forward_logits(**spec.inputs))[0])


def make_result(adapter, spec, target, method, region_scores, token_scores, *, params, t0, notes=(),
                **kw) -> AttributionResult:
    """An AttributionResult for ``spec`` (boxes, words, the spec's notices first) timed from ``t0``."""
    return AttributionResult(
        method=method, target=target.label, probability=answer_probability(adapter, spec, target),
        region_boxes=spec.region_boxes, region_scores=np.asarray(region_scores, np.float32),
        tokens=tuple(spec.words), token_scores=np.asarray(token_scores, np.float32),
        token_is_special=np.asarray(spec.word_is_special, bool), params=params,
        seconds=time.perf_counter() - t0, notes=tuple(spec.notices) + tuple(notes), **kw)
