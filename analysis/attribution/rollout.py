"""Attention rollout (Abnar & Zuidema 2020); dual-stream models are rolled out over the joint token set,
one matrix per attention sub-layer (see ``rules.attention_schedule``). The row read is the target's
(``rules.target_row``): the classifier token's, or for a generated token the position that produced it."""
from __future__ import annotations

import time

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.rules import attention_maps, rollout_matrix, row_scores, target_row
from analysis.attribution.scoring import make_result


class AttentionRollout(Method):
    name = "rollout"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        attentions, index = attention_maps(adapter, spec)
        row, explained = target_row(attentions, index, spec, target, rollout_matrix)
        reg, words, self_entry = row_scores(row, spec, explained)
        notes = [f"rollout depends on the target only through the row it reads; the explained row keeps "
                 f"{self_entry:.2f} of itself"]
        if len(attentions) > 1:
            notes.append("dual-stream: rolled out over the joint token set, one matrix per attention sub-layer")
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)
