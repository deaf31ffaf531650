"""Shared helpers for the benchmark modules: figures, timing, model builders (no hub)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from core.paths import REPO_ROOT

DEMO_VILT_DIR = REPO_ROOT / "demo" / "models" / "vilt-easyvqa"


def figure(value, baseline=None, unit: str = "", note: str = "") -> dict:
    """One row of the table; ratio = value / baseline when both are numbers."""
    ratio = None
    if isinstance(value, (int, float)) and isinstance(baseline, (int, float)) and baseline:
        ratio = value / baseline
    return {"value": value, "baseline": baseline, "ratio": ratio, "unit": unit, "note": note}


def median(xs) -> float:
    return float(statistics.median(xs))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def easyvqa_examples(n: int, split: str = "test"):
    """The first n easy-VQA examples with their images decoded (so timings exclude disk reads)."""
    from sources.easyvqa import EasyVQA

    src = EasyVQA(split)
    out = []
    for i in range(min(n, len(src))):
        ex = src[i]
        out.append((ex, ex.image().convert("RGB")))
    return out


def demo_vilt():
    """(adapter, description): the shipped demo ViLT, or a random one of the same size."""
    from adapters.vilt import ViltAdapter

    if (DEMO_VILT_DIR / "config.json").exists():
        return ViltAdapter.load(str(DEMO_VILT_DIR), device="auto"), "demo ViLT (trained, demo/models/vilt-easyvqa)"
    from demo.train_vilt import build_image_processor, build_model, build_tokenizer
    from sources.easyvqa import EasyVQA

    src = EasyVQA("train")
    tok = build_tokenizer([src[i].question for i in range(0, len(src), 10)])
    model = build_model(len(tok), src.answers())
    adapter = ViltAdapter(model, tok, build_image_processor(), model_id="vilt-demo-size-random", device="auto")
    return adapter, "demo-sized random ViLT (hidden 128, 4 layers, 4 heads, 64 px, patch 8; demo weights absent)"


def vilt_b32_random():
    """(adapter, description): a ViLT-B/32-sized model with random weights, built from a config (no hub)."""
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    from adapters.vilt import ViltAdapter
    from demo.train_vilt import build_tokenizer
    from sources.easyvqa import EasyVQA
    from testkit.tiny_vilt import QUESTIONS

    answers = EasyVQA("test").answers()
    tok = build_tokenizer(QUESTIONS)
    torch.manual_seed(0)
    config = ViltConfig(
        vocab_size=len(tok), hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=40, image_size=384, patch_size=32, max_image_length=-1, num_labels=len(answers),
        id2label=dict(enumerate(answers)), label2id={a: i for i, a in enumerate(answers)},
    )
    model = ViltForQuestionAnswering(config)
    processor = ViltImageProcessorPil(size={"shortest_edge": 384}, size_divisor=32)
    return (ViltAdapter(model, tok, processor, model_id="vilt-b32-size-random", device="auto"),
            "ViLT-B/32-sized random ViLT (hidden 768, 12 layers, 12 heads, 384 px, patch 32)")
