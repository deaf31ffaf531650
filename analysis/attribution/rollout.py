"""Attention rollout (Abnar & Zuidema 2020); dual-stream models are rolled out over the joint token set,
one matrix per attention sub-layer (see ``rules.attention_schedule``)."""
from __future__ import annotations

import time


from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.rules import attention_maps, attention_steps, rollout_matrix, row_scores
from analysis.attribution.scoring import make_result


class AttentionRollout(Method):
    name = "rollout"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        attentions, index = attention_maps(adapter, spec)
        groups = attention_steps(attentions, index)
        R = rollout_matrix(groups, len(spec.record_tokens))
        reg, words, self_entry = row_scores(R[spec.cls_token_index], spec)
        notes = [f"rollout does not depend on the target; the classifier token keeps {self_entry:.2f} of itself"]
        if len(attentions) > 1:
            notes.append("dual-stream: rolled out over the joint token set, one matrix per attention sub-layer")
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)
