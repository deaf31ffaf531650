"""Integrated Gradients (Sundararajan et al. 2017) at the adapter's text and image layers, via Captum.

Per word: the layer attribution summed over the hidden dimension; per region: ``adapter.layer_scores``.
``internal_batch_size="auto"`` measures the autograd memory of one step and chooses the batch that fits
``memory_budget_mb``. The convergence delta is reported; above DELTA_WARNING of f(x) - f(baseline) a note
says to raise n_steps.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from analysis.attribution.base import Method
from analysis.attribution.memory import choose_internal_batch, saved_bytes_per_step
from analysis.attribution.results import DELTA_WARNING, AttributionResult
from analysis.attribution.scoring import make_result, tensor_keys
from core.errors import InputError


class IntegratedGradients(Method):
    name = "ig"
    defaults = {"n_steps": 30, "internal_batch_size": "auto", "memory_budget_mb": 1024.0,
                "integration": "gausslegendre"}

    def forward_equivalents(self, spec, **params) -> float:
        p = self.params(**params)
        return 3.0 * int(p["n_steps"]) + 6.0

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        from captum.attr import LayerIntegratedGradients

        t0 = time.perf_counter()
        p = self.params(**params)
        n_steps = int(p["n_steps"])
        if n_steps < 1:
            raise InputError("ig: n_steps must be at least 1")
        layers = adapter.attribution_layers()
        names = [n for n in ("text", "image") if n in layers]
        keys = tensor_keys(spec.inputs)
        others = {k: v for k, v in spec.inputs.items() if k not in keys}
        ibs = p["internal_batch_size"]
        per_step = None
        if ibs == "auto":
            per_step = saved_bytes_per_step(adapter, spec, layers)
            ibs = choose_internal_batch(n_steps, per_step, float(p["memory_budget_mb"]))
        elif ibs is not None:
            ibs = max(1, int(ibs))

        def forward(*tensors):
            return target.score(adapter.forward_logits(**dict(zip(keys, tensors)), **others))

        with warnings.catch_warnings():  # the text and image layers are parallel, not one after the other
            warnings.filterwarnings("ignore", message="Multiple layers provided")
            lig = LayerIntegratedGradients(forward, [layers[n] for n in names])
        inputs = tuple(spec.inputs[k] for k in keys)
        baselines = tuple(spec.baselines.get(k, spec.inputs[k]) for k in keys)
        with torch.enable_grad():
            attributions = lig.attribute(inputs, baselines=baselines, n_steps=n_steps, method=p["integration"],
                                         internal_batch_size=ibs)
        # the convergence delta as Captum's (sum of the attributions - (f(x) - f(baseline))), computed here: a
        # layer whose output has no batch axis (an image's frames or patches stacked) fails Captum's own check
        total = float(sum(a.detach().double().sum() for a in attributions))
        attributions = dict(zip(names, attributions))
        tok = adapter.layer_scores("text", attributions["text"], spec) if "text" in attributions else \
            np.zeros(len(spec.word_token_index))
        reg = adapter.layer_scores("image", attributions["image"], spec) if "image" in attributions else \
            np.zeros(len(spec.region_boxes))
        with torch.no_grad():
            fx = float(target.score(adapter.forward_logits(**spec.inputs))[0])
            fb = float(target.score(adapter.forward_logits(**spec.baselines))[0])
        delta = total - (fx - fb)
        notes = []
        rel = abs(delta) / max(abs(fx - fb), 1e-8)
        if rel > DELTA_WARNING:
            notes.append(f"IG convergence delta is {rel:.0%} of f(x) - f(baseline): raise the number of steps "
                         f"(now {n_steps}) before trusting this map")
        params_out = dict(p, internal_batch_size=ibs)
        if per_step is not None:
            params_out["measured_mb_per_step"] = round(per_step / 2**20, 2)
        return make_result(adapter, spec, target, self.name, reg, tok, params=params_out, t0=t0, notes=notes,
                           delta=delta, score_difference=fx - fb)
