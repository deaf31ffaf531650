"""ViLT-specific checks: the patch shuffle is undone, patches land on their own boxes."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def test_patch_tokens_are_in_row_col_order_with_matching_boxes(tiny_vilt):
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    rec = tiny_vilt.run(img, "what color is the shape?")
    patches = rec.indices("image")
    grid = rec.token_grid[patches]
    keys = grid[:, 0] * 1000 + grid[:, 1]
    assert (np.diff(keys) > 0).all(), "image tokens must be in (row, col) order"
    gh, gw = grid[:, 0].max() + 1, grid[:, 1].max() + 1
    boxes = rec.token_boxes[patches]
    np.testing.assert_allclose(boxes[:, 0], grid[:, 1] / gw, atol=1e-6)
    np.testing.assert_allclose(boxes[:, 1], grid[:, 0] / gh, atol=1e-6)
    np.testing.assert_allclose(boxes[:, 2], (grid[:, 1] + 1) / gw, atol=1e-6)


def test_patch_token_hidden_state_comes_from_its_own_pixels(tiny_vilt):
    """Brighten one patch: the embedding that changes must be that patch's token."""
    base = np.zeros((32, 32, 3), np.uint8)
    bright = base.copy()
    bright[8:16, 16:24] = 255  # row 1, col 2 of the 8-pixel grid
    q = "what color is the shape?"
    a = tiny_vilt.run(Image.fromarray(base), q)
    b = tiny_vilt.run(Image.fromarray(bright), q)
    patches = a.indices("image")
    ta = a.hidden["joint"].values[0][patches].astype(np.float32)
    tb = b.hidden["joint"].values[0][patches].astype(np.float32)
    changed = np.abs(ta - tb).sum(-1)
    hit = patches[int(np.argmax(changed))]
    assert tuple(a.token_grid[hit]) == (1, 2)
    assert (changed > 1e-3).sum() == 1


def test_shuffle_would_otherwise_change_order(tiny_vilt):
    """Guard: the wrapped visual_embed keeps all patches sorted even though the library shuffles."""
    emb = tiny_vilt.model.vilt.embeddings
    pv = torch.zeros(1, 3, 32, 32)
    pm = torch.ones(1, 32, 32, dtype=torch.long)
    _, _, (idx1, _) = emb.visual_embed(pv, pm)
    _, _, (idx2, _) = emb.visual_embed.original(pv, pm, max_image_length=-1)
    flat = (idx1[0, :, 0] * 4 + idx1[0, :, 1]).tolist()
    assert flat == sorted(flat) and len(flat) == 16
    assert sorted((idx2[0, :, 0] * 4 + idx2[0, :, 1]).tolist()) == flat
