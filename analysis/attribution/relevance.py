"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021): the single-stream rule and the
bi-modal self / cross rules with the residual normalization (``rules.relevance_matrix``); over a causal
decoder's maps the self rule, read at the row that produced the explained token (``rules.target_row``)."""
from __future__ import annotations

import time

import torch

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.rules import relevance_matrix, row_scores, target_row
from analysis.attribution.scoring import make_result
from core.errors import AdapterError


class GradientWeightedRelevance(Method):
    name = "relevance"
    defaults = {}

    def forward_equivalents(self, spec, **params) -> float:
        return 3.0

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        with torch.enable_grad():
            logits, attentions, index = adapter.attention_probs(spec.inputs)
            for maps in attentions.values():
                for a in maps:
                    if not a.requires_grad:
                        raise AdapterError("attention maps are not in the autograd graph; relevance needs them")
                    a.retain_grad()
            target.score(logits).sum().backward()
        grads = {k: [a.grad for a in maps] for k, maps in attentions.items()}
        row, explained = target_row(attentions, index, spec, target, relevance_matrix, grads)
        reg, words, self_entry = row_scores(row, spec, explained)
        notes = [f"the explained row's self relevance ({self_entry:.3g}) is left out"]
        if len(attentions) > 1:
            notes.append("dual-stream: bi-modal rules; a cross layer's two co-attention updates are both computed "
                         "from the relevance before that layer, then added")
        silent = [f"{k} layer {l}" for k, gs in grads.items() for l, g in enumerate(gs) if g is None]
        if silent:
            notes.append(f"no gradient reached {', '.join(silent)} (the answer does not depend on them): "
                         "they contribute nothing")
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)
