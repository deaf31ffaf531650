"""A tiny random LLaVA saved to a temp dir (CLIP vision 64 px / 8 px patches, a 2-layer Llama, a
WordLevel tokenizer with an <image> token and a chat template): what the tests load."""
from __future__ import annotations

from pathlib import Path

from testkit.tiny_vilt import ANSWERS, QUESTIONS


def make_tiny_llava(path: Path, *, seed: int = 0, do_pad: bool = True, do_center_crop: bool = True,
                    select_strategy: str = "default") -> Path:
    from demo.llava_init import LlavaShape, save_llava

    shape = LlavaShape(image_size=64, patch=8, vision_hidden=32, vision_layers=2, vision_heads=2, hidden=32,
                       layers=2, heads=2, context=128, select_strategy=select_strategy)
    return save_llava(path, QUESTIONS + ANSWERS, shape, seed=seed, do_pad=do_pad, do_center_crop=do_center_crop)


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter, a non-square PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.llava import LlavaAdapter

    adapter = LlavaAdapter.load(str(make_tiny_llava(tmp_path / "llava")))
    adapter.max_new_tokens = 4
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
