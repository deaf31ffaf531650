"""How much memory one Integrated Gradients step needs, measured, and the internal batch that fits a budget."""
from __future__ import annotations

import math

import torch

from analysis.attribution.scoring import concat_inputs


def _saved_bytes(adapter, inputs: dict, layers: dict) -> int:
    """Bytes of the storages autograd saves in one forward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    def make_leaf(module, inp, out):
        if isinstance(out, torch.Tensor) and not out.requires_grad:
            return out.detach().requires_grad_(True)
        return out

    handles = [m.register_forward_hook(make_leaf) for m in layers.values()]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = adapter.forward_logits(**inputs)
    finally:
        for h in handles:
            h.remove()
    del logits
    return int(sum(seen.values()))


def saved_bytes_per_step(adapter, spec, layers: dict) -> int:
    """Bytes autograd keeps per IG step (one interpolated input), measured: the saved storages of a forward on
    two copies of the input minus those on one, so weights (saved once, whatever the batch) cancel out."""
    one = _saved_bytes(adapter, spec.inputs, layers)
    two = _saved_bytes(adapter, concat_inputs([spec.inputs, spec.inputs]), layers)
    return max(two - one, 1)


def choose_internal_batch(n_steps: int, bytes_per_step: int, memory_budget_mb: float) -> int:
    """Largest number of steps per chunk within the budget, then evened out so chunks are equal."""
    fit = max(1, int(memory_budget_mb * 2**20 // max(bytes_per_step, 1)))
    fit = min(fit, n_steps)
    chunks = math.ceil(n_steps / fit)
    return math.ceil(n_steps / chunks)
