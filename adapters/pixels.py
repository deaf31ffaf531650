"""Pixels for adapters whose image side is a CNN on a fixed square (KD-VLP, LXMERT's grid extractor).

One resize rule (the image stretched to S x S, bilinear), one normalization, and a cache of
resized pixels for training, which reads every image each epoch.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch
from PIL import Image

from adapters.inputs import check_image


def resized_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """(3, S, S) uint8: the checked RGB image stretched to ``size`` x ``size`` (bilinear)."""
    rgb = check_image(image)  # a converted copy: the caller's object is left as it is
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, np.uint8).copy()).permute(2, 0, 1)


def stack_resized(images, size: int) -> torch.Tensor:
    """PIL images -> (B, 3, S, S) uint8, each resized by ``resized_uint8``."""
    return torch.stack([resized_uint8(im, size) for im in images])


def normalize(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, S, S) uint8 (or floats in 0..1) -> (x - mean) / std per channel, float32."""
    x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels
    mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (mean, std))
    return (x - mean) / std


class ResizedPixelCache:
    """(3, S, S) uint8 pixels of an image, resized once: training reads each image every epoch.

    Keyed by the image object (the fine-tuning loop keeps one decoded object per image file);
    a weak reference checks the key still names the same object, so a recycled id() never hits.
    Bounded by entries; plain images are cheap to redo when it is full.
    """

    def __init__(self, max_entries: int = 50_000):
        self.max_entries, self.entries = max_entries, {}

    def get(self, image: Image.Image, size: int) -> torch.Tensor:
        hit = self.entries.get(id(image))
        if hit is not None and hit[0]() is image and hit[1].shape[-1] == size:
            return hit[1]
        pixels = resized_uint8(image, size)
        if len(self.entries) >= self.max_entries:
            self.entries = {k: v for k, v in self.entries.items() if v[0]() is not None}
        if len(self.entries) < self.max_entries:
            try:
                self.entries[id(image)] = (weakref.ref(image), pixels)
            except TypeError:  # not weak-referenceable: do not cache
                pass
        return pixels
