"""Tiny random models saved to a temp dir: what the tests load instead of hub checkpoints."""
from __future__ import annotations

from pathlib import Path

QUESTIONS = [
    "what color is the shape?", "what shape is in the image?", "is there a red circle?",
    "does the image contain a blue triangle?", "what is the green shape?", "is the shape not gray?",
]
ANSWERS = ["circle", "red", "yes", "no", "blue", "triangle"]


def make_tiny_vilt(path: Path, *, seed: int = 0, image_size: int = 32, patch: int = 8, layers: int = 2,
                   heads: int = 2, hidden: int = 32) -> Path:
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering

    from demo.train_vilt import build_tokenizer
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    tok = build_tokenizer(QUESTIONS)
    torch.manual_seed(seed)
    config = ViltConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, max_position_embeddings=16, image_size=image_size, patch_size=patch,
        max_image_length=-1, num_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)),
        label2id={a: i for i, a in enumerate(ANSWERS)}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = ViltForQuestionAnswering(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.model_max_length = 16
    tok.save_pretrained(path)
    ViltImageProcessorPil(size={"shortest_edge": image_size}, size_divisor=patch).save_pretrained(path)
    return path


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter, a PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.vilt import ViltAdapter

    adapter = ViltAdapter.load(str(make_tiny_vilt(tmp_path / "vilt")))
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
