"""Attribution of an answer to image regions and words, by several methods, model-independent.

Every method is written against the adapter contract (adapters/base.py), never a model's
internals, and has the same entry point::

    spec = adapter.attribution_spec(image, question)
    target = resolve_target(adapter, spec, "red")            # or "red rather than blue", or None (top answer)
    result = attribute(adapter, spec, target, "ig", n_steps=30)   # -> AttributionResult

Methods (``METHODS``):
    ig          Layer Integrated Gradients (Captum) at the adapter's text and image layers; per word the
                attribution summed over the hidden dimension, per region via ``adapter.layer_scores``.
                ``internal_batch_size="auto"`` measures the autograd memory of one step and chooses the
                batch that fits ``memory_budget_mb``.
    rollout     attention rollout (Abnar & Zuidema 2020); dual-stream models are rolled out over the joint
                token set, one matrix per attention sub-layer (see ``attention_schedule``).
    relevance   gradient-weighted attention relevance (Chefer, Gur & Wolf 2021): the single-stream rule,
                and the bi-modal self / cross rules with the residual normalization for dual-stream models.
    occlusion   each region / word replaced by its baseline (``adapter.occlude``), batched; score = drop of
                the target score.
    attention   raw attention of the last layer from the classifier token, mean over heads.

Attention methods read the target's rows (``rules.target_row``): the classifier token's, or for a generated token
the position that produced it (t - 1 for token t); a whole answer sums its tokens' rows, "A rather than B"
subtracts B's.

Generative models (adapters/generative_attribution.py) explain a generated answer, teacher-forced::

    spec, target = target_spec(adapter, image, question)          # token 0 of the greedy answer
    target = resolve_target(adapter, spec, 2)                     # token 2 of the same answer (no new spec)
    spec, target = target_spec(adapter, image, question, "whole")  # or "red", or "red rather than blue"
    result = attribute(adapter, spec, target, "ig")

The explained quantity ("target score") is the answer's logit, or for "A rather than B" the
difference of the two logits; for a generated answer a token's log-probability (or logit), the whole answer's
summed log-probabilities, or the difference of two answers' (``GenerationTarget``). ``probability`` is the answer's probability on the input, by the adapter's own rule
(``adapter.answer_probabilities``: softmax or sigmoid, as the model was trained), the same as its prediction's.

Layout (one job per module): ``targets`` (Target, resolve_target), ``results`` (AttributionResult),
``scoring`` (batched target scores / probabilities), ``rules`` (attention schedule, rollout and relevance
matrices), ``memory`` (IG's measured memory per step), ``base`` (the Method contract), one module per method
(``ig``, ``rollout``, ``relevance``, ``occlusion``, ``raw_attention``) and ``registry`` (names -> methods,
``attribute``, cost estimates).
"""
from __future__ import annotations

from analysis.attribution.base import Method
from analysis.attribution.ig import IntegratedGradients
from analysis.attribution.memory import choose_internal_batch, saved_bytes_per_step
from analysis.attribution.occlusion import Occlusion
from analysis.attribution.raw_attention import RawAttention
from analysis.attribution.registry import (METHOD_CLASSES, attribute, estimate_seconds, get_method,
                                           time_one_forward)
from analysis.attribution.relevance import GradientWeightedRelevance
from analysis.attribution.results import DELTA_WARNING, METHODS, AttributionResult
from analysis.attribution.rollout import AttentionRollout
from analysis.attribution.rules import (AttentionStep, attention_maps, attention_schedule, attention_steps,
                                        last_attention_matrix, reduce_heads, relevance_matrix, residual_normalized,
                                        rollout_matrix, row_scores, target_row)
from analysis.attribution.scoring import concat_inputs, target_probabilities, target_scores
from analysis.attribution.targets import (GenerationTarget, Target, generation_target, resolve_target, target_fields,
                                          target_spec)

__all__ = [
    "METHODS", "METHOD_CLASSES", "DELTA_WARNING", "AttentionRollout", "AttentionStep", "AttributionResult",
    "GenerationTarget", "GradientWeightedRelevance", "IntegratedGradients", "Method", "Occlusion", "RawAttention",
    "Target", "generation_target", "last_attention_matrix", "target_fields", "target_row", "target_spec",
    "attention_maps", "attention_schedule", "attention_steps", "attribute", "choose_internal_batch", "concat_inputs",
    "estimate_seconds", "get_method", "reduce_heads", "relevance_matrix", "residual_normalized",
    "resolve_target", "rollout_matrix", "row_scores", "saved_bytes_per_step", "target_probabilities",
    "target_scores", "time_one_forward",
]
