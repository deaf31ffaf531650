"""The methods by name, the one entry point ``attribute``, and cost estimates in measured forward passes."""
from __future__ import annotations

import time

import torch

from adapters.base import AttributionSpec
from analysis.attribution.base import Method
from analysis.attribution.ig import IntegratedGradients
from analysis.attribution.occlusion import Occlusion
from analysis.attribution.raw_attention import RawAttention
from analysis.attribution.relevance import GradientWeightedRelevance
from analysis.attribution.results import METHODS, AttributionResult
from analysis.attribution.rollout import AttentionRollout
from analysis.attribution.targets import Target, resolve_target
from core.errors import InputError

METHOD_CLASSES: dict[str, Method] = {m.name: m for m in (IntegratedGradients(), AttentionRollout(),
                                                          GradientWeightedRelevance(), Occlusion(), RawAttention())}
assert tuple(METHOD_CLASSES) == METHODS, "every method name has one class, in METHODS order"


def get_method(name: str) -> Method:
    if name not in METHOD_CLASSES:
        raise InputError(f"unknown attribution method {name!r}; known: {', '.join(METHODS)}")
    return METHOD_CLASSES[name]


def attribute(adapter, spec: AttributionSpec, target, method: str, **params) -> AttributionResult:
    """Run one method. ``target`` is a Target, or anything ``resolve_target`` reads."""
    m = get_method(method)
    if not isinstance(target, Target):
        target = resolve_target(adapter, spec, target)
    return m.attribute(adapter, spec, target, **params)


def time_one_forward(adapter, spec: AttributionSpec) -> float:
    """Seconds for one forward pass on this input (the unit of cost estimates)."""
    with torch.no_grad():
        adapter.forward_logits(**spec.inputs)  # warm-up
        t0 = time.perf_counter()
        adapter.forward_logits(**spec.inputs)
    return time.perf_counter() - t0


def estimate_seconds(spec: AttributionSpec, method: str, forward_seconds: float, **params) -> float:
    """A cost estimate shown before long methods run: forward equivalents x measured forward time."""
    return get_method(method).forward_equivalents(spec, **params) * forward_seconds
