"""A tiny random LXMERT (+ tiny grid region extractor) saved to a temp dir, for tests (no hub)."""
from __future__ import annotations

from pathlib import Path

from testkit.tiny_vilt import ANSWERS, QUESTIONS

TINY_FEAT_DIM = 24
TINY_GRID = 3  # 9 regions: differs from the text length of the test questions, so transposes show


def make_tiny_lxmert(path: Path, *, seed: int = 0, extractor: bool = True, hidden: int = 32, heads: int = 2,
                     l_layers: int = 2, r_layers: int = 1, x_layers: int = 2) -> Path:
    import torch
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    from adapters.regions import GridRegionExtractor
    from demo.train_vilt import build_tokenizer

    tok = build_tokenizer(QUESTIONS)
    torch.manual_seed(seed)
    config = LxmertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_attention_heads=heads, intermediate_size=hidden * 2,
        l_layers=l_layers, r_layers=r_layers, x_layers=x_layers, visual_feat_dim=TINY_FEAT_DIM, visual_pos_dim=4,
        max_position_embeddings=16, num_qa_labels=len(ANSWERS), id2label=dict(enumerate(ANSWERS)),
        label2id={a: i for i, a in enumerate(ANSWERS)}, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # Large random weights make attention peaked, so tests can tell one map from another.
        initializer_range=0.3,
    )
    model = LxmertForQuestionAnswering(config).eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.model_max_length = 16
    tok.save_pretrained(path)
    if extractor:
        GridRegionExtractor(image_size=32, grid=TINY_GRID, channels=(8, 16), feat_dim=TINY_FEAT_DIM).save(path)
    return path


def make_tiny_adapter(tmp_path: Path):
    """Contract-suite factory: (adapter with a grid extractor, a PIL image it accepts)."""
    import numpy as np
    from PIL import Image

    from adapters.lxmert import LxmertAdapter

    adapter = LxmertAdapter.load(str(make_tiny_lxmert(tmp_path / "lxmert")))
    img = Image.fromarray((np.random.RandomState(1).rand(40, 56, 3) * 255).astype(np.uint8))
    return adapter, img
