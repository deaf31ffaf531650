"""Raw attention: the last layer's attention of the classifier token, mean over heads."""
from __future__ import annotations

import time

import numpy as np

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.rules import attention_maps, attention_schedule, reduce_heads, row_scores
from analysis.attribution.scoring import make_result
from core.errors import AdapterError


class RawAttention(Method):
    name = "attention"
    defaults = {}

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        attentions, index = attention_maps(adapter, spec)
        row = np.zeros(len(spec.record_tokens))
        used: dict[str, int] = {}
        for group in attention_schedule(attentions):
            for kind, layer in group:
                q, k = (np.asarray(i, np.int64) for i in index[kind])
                hit = np.nonzero(q == spec.cls_token_index)[0]
                if len(hit):  # later maps overwrite earlier ones: the last layer that reads each key wins
                    row[k] = reduce_heads(attentions[kind][layer])[hit[0]]
                    used[kind] = layer
        if not used:
            raise AdapterError("no attention map has the classifier token as a query")
        reg, words, self_entry = row_scores(row, spec)
        last = [f"{kind} layer {layer}" for kind, layer in used.items()]
        notes = [f"last-layer attention of the classifier token ({', '.join(last)}), mean over heads; "
                 "it does not depend on the target"]
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0, notes=notes)
