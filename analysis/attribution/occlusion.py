"""Occlusion: each region / word replaced by its baseline (``adapter.occlude``), batched; score = drop of
the target score."""
from __future__ import annotations

import time

import numpy as np

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.scoring import make_result, target_scores


class Occlusion(Method):
    name = "occlusion"
    defaults = {"batch_size": 16}

    def forward_equivalents(self, spec, **params) -> float:
        return 1.0 + len(spec.region_boxes) + int((~np.asarray(spec.word_is_special, bool)).sum())

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        bs = max(1, int(p["batch_size"]))
        n_r = len(spec.region_boxes)
        special = np.asarray(spec.word_is_special, bool)
        n_w = len(special)
        variants = [spec.inputs]
        for r in range(n_r):
            m = np.zeros(n_r, bool)
            m[r] = True
            variants.append(adapter.occlude(spec.inputs, spec, region_mask=m))
        word_pos = np.nonzero(~special)[0]
        for w in word_pos:
            m = np.zeros(n_w, bool)
            m[w] = True
            variants.append(adapter.occlude(spec.inputs, spec, word_mask=m))
        s = target_scores(adapter, target, variants, batch_size=bs)
        reg = s[0] - s[1:1 + n_r]
        words = np.zeros(n_w, np.float32)
        words[word_pos] = s[0] - s[1 + n_r:]
        return make_result(adapter, spec, target, self.name, reg, words, params=p, t0=t0,
                       notes=["score = drop of the target score when that region / word alone is replaced by "
                              "its baseline"])
