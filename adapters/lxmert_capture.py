"""Every attention map of one LXMERT forward, captured with hooks (no transformers code edited).

``output_attentions`` returns only language self, vision self and language->vision cross
attention. Here a pre-hook on each ``LxmertAttention`` module asks each call for its
probabilities, a post-hook takes them and hands the caller the output it asked for; hooks on
the word embeddings block and the visual feature encoder take both streams' embedding outputs
(LXMERT's hidden states exclude them). Hooks are removed after every forward (``try``/``finally``).
The shared cross module runs twice per layer: its first call of a forward is language->vision,
its second vision->language (the order of ``LxmertXLayer.cross_att``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from core.errors import AdapterError


def attention_modules(model) -> list[tuple[nn.Module, tuple[str, ...], int]]:
    """(LxmertAttention module, kinds of its successive calls in one forward, layer index)."""
    enc = model.lxmert.encoder
    out = [(layer.attention.self, ("lang_self",), i) for i, layer in enumerate(enc.layer)]
    out += [(layer.attention.self, ("vision_self",), i) for i, layer in enumerate(enc.r_layers)]
    for i, x in enumerate(enc.x_layers):
        # One shared module, called language->vision first, then vision->language (LxmertXLayer.cross_att).
        out.append((x.visual_attention.att, ("cross_l2v", "cross_v2l"), i))
        out.append((x.lang_self_att.self, ("cross_lang_self",), i))
        out.append((x.visn_self_att.self, ("cross_vision_self",), i))
    return out


def layer_counts(config) -> dict[str, int]:
    """Layers of each attention kind (a kind with zero layers is captured as an empty list)."""
    c = config
    return {"lang_self": c.l_layers, "vision_self": c.r_layers, "cross_l2v": c.x_layers,
            "cross_v2l": c.x_layers, "cross_lang_self": c.x_layers, "cross_vision_self": c.x_layers}


def _attention_hooks(module, kinds, layer, store, keep):
    """(pre-hook, post-hook) that put each call's probabilities into ``store[kind][layer]``."""
    state = {"calls": 0, "asked": False}

    def pre(mod, args, kwargs):
        asked = kwargs.get("output_attentions", args[3] if len(args) > 3 else False)
        state["asked"] = bool(asked)
        return args[:3], dict(kwargs, output_attentions=True)

    def post(mod, args, kwargs, output):
        kind = kinds[state["calls"] % len(kinds)]
        state["calls"] += 1
        store[kind][layer] = keep(output[1])
        return output if state["asked"] else output[:1]

    return (module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True))


@contextmanager
def capture(model, *, keep_graph: bool = False, offload: bool = False):
    """Hooks that collect every attention map and both embedding outputs during one forward.

    Yields {"attention": {kind: [tensor (B, H, Q, K) per layer]}, "embeddings": {stream: tensor}}.
    With ``keep_graph`` the tensors stay in the autograd graph (they are the very tensors the
    model multiplies with the values, so their gradients are the model's). With ``offload`` each
    map moves to the CPU as float16 as soon as it is computed (what a Record stores), so a GPU
    holds only the forward itself.
    """
    if keep_graph and offload:
        raise ValueError("keep_graph keeps the maps in the autograd graph; they cannot be offloaded")
    captured: dict = {"attention": {k: [None] * n for k, n in layer_counts(model.config).items()},
                      "embeddings": {}}
    handles = []

    def keep(t):
        if offload:
            return t.detach().to("cpu", torch.float16)
        return t if keep_graph else t.detach()

    def emb_hook(stream):
        def hook(mod, args, output):
            captured["embeddings"][stream] = keep(output)
        return hook

    try:
        for module, kinds, layer in attention_modules(model):
            handles += _attention_hooks(module, kinds, layer, captured["attention"], keep)
        handles.append(model.lxmert.embeddings.register_forward_hook(emb_hook("lang")))
        handles.append(model.lxmert.encoder.visn_fc.register_forward_hook(emb_hook("vision")))
        yield captured
    finally:
        for h in handles:
            h.remove()
    missing = [f"{k}[{i}]" for k, maps in captured["attention"].items() for i, m in enumerate(maps) if m is None]
    if missing:
        raise AdapterError(f"internal: attention not captured for {', '.join(missing[:4])}")
