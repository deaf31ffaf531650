"""A tiny random KD-VLP-style checkpoint saved to a temp dir: what the tests load."""
from __future__ import annotations

from pathlib import Path

from testkit.tiny_vilt import ANSWERS, QUESTIONS


def make_tiny_kdvlp(path: Path, *, seed: int = 0, image_size: int = 32, channels=(8, 16, 16), layers: int = 2,
                    heads: int = 2, hidden: int = 32, max_text_tokens: int = 16) -> Path:
    import torch

    from adapters.kdvlp_model import KdvlpConfig, KdvlpModel, save_checkpoint
    from demo.train_vilt import build_tokenizer

    tok = build_tokenizer(QUESTIONS)
    tok.model_max_length = max_text_tokens
    config = KdvlpConfig(vocab_size=len(tok), answers=tuple(ANSWERS), hidden_size=hidden, num_layers=layers,
                         num_heads=heads, intermediate_size=2 * hidden, max_text_tokens=max_text_tokens,
                         image_size=image_size, cnn_channels=tuple(channels), pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = KdvlpModel(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(model.eval(), tok, path)


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter, a PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.kdvlp import KdvlpAdapter

    adapter = KdvlpAdapter.load(str(make_tiny_kdvlp(tmp_path / "kdvlp")))
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
