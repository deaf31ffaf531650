"""Raw attention: the last layer's attention of the explained row (the classifier token, or the position that
produced a generated token), mean over heads."""
from __future__ import annotations

import time

import numpy as np

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.rules import attention_maps, attention_schedule, last_attention_matrix, row_scores, target_row
from analysis.attribution.scoring import make_result
from core.errors import AdapterError


class RawAttention(Method):
    name = "attention"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        attentions, index = attention_maps(adapter, spec)
        rows = {int(r) for _, r, _ in target.rows(spec)}
        used: dict[str, int] = {}
        for group in attention_schedule(attentions):
            for kind, layer in group:
                if rows & set(np.asarray(index[kind][0], np.int64).tolist()):
                    used[kind] = layer  # the last layer that reads each key wins
        if not used:
            raise AdapterError("no attention map has the explained token as a query")
        row, explained = target_row(attentions, index, spec, target, last_attention_matrix)
        reg, words, self_entry = row_scores(row, spec, explained)
        last = [f"{kind} layer {layer}" for kind, layer in used.items()]
        notes = [f"last-layer attention of the explained row ({', '.join(last)}), mean over heads; "
                 "it depends on the target only through the row it reads"]
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)
