"""Models for attribution tests: tiny random ViLTs whose answers depend clearly on the input.

The default tiny ViLT (tests/tiny_vilt.py) is initialised with std 0.02, so its logits barely move
with the input; maps of such a model are numerically flat. Re-drawing the matrices with a larger
std gives a random model with a real input -> answer dependence, still built offline in a second.
"""
from __future__ import annotations

from pathlib import Path


def make_signal_vilt(path: Path, *, seed: int = 0, std: float = 0.15) -> Path:
    import torch
    from transformers import ViltForQuestionAnswering

    from testkit.tiny_vilt import make_tiny_vilt

    make_tiny_vilt(path, seed=seed)
    model = ViltForQuestionAnswering.from_pretrained(path, attn_implementation="eager")
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(path)
    return path


def shape_image(size: int = 32, box=(8, 8, 20, 20), color=(220, 30, 30)):
    """A plain image with one colored square (easy-VQA-like), as a PIL image."""
    import numpy as np
    from PIL import Image

    arr = np.full((size, size, 3), 240, np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = color
    return Image.fromarray(arr)
