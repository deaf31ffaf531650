"""Train the easy-VQA demo ViLT from scratch, reproducibly.

    python -m demo.train_vilt --out demo/models/vilt-easyvqa --epochs 10

Seeded; prints a progress bar, the test accuracy on the full easy-VQA test split and the wall
time. The output directory is an ordinary Hugging Face checkpoint (config.json,
model.safetensors, tokenizer, preprocessor_config.json) that ``adapters.vilt`` loads.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

DEMO_IMAGE_SIZE = 64
DEMO_PATCH = 8


def build_tokenizer(questions: list[str]):
    """A WordPiece tokenizer (BERT-style, lower-cased) whose vocabulary comes from the questions."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, min_frequency=1, special_tokens=specials)
    tok.train_from_iterator(questions, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", do_lower_case=True, model_max_length=40,
    )


def build_model(vocab_size: int, answers: list[str], *, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0):
    from transformers import ViltConfig, ViltForQuestionAnswering

    torch.manual_seed(seed)
    config = ViltConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 4, max_position_embeddings=40, image_size=DEMO_IMAGE_SIZE,
        patch_size=DEMO_PATCH, max_image_length=-1, num_labels=len(answers),
        id2label={i: a for i, a in enumerate(answers)}, label2id={a: i for i, a in enumerate(answers)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    model = ViltForQuestionAnswering(config)
    return model


def build_image_processor():
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    return ViltImageProcessorPil(size={"shortest_edge": DEMO_IMAGE_SIZE}, size_divisor=32)


def encode_split(split: str, tokenizer, image_processor, answers: list[str]):
    """All questions of a split as tensors; images decoded once per image id."""
    from sources.easyvqa import EasyVQA

    src = EasyVQA(split)
    pixel_cache: dict[int, torch.Tensor] = {}
    qs, labels = [], []
    for i in tqdm(range(len(src)), desc=f"encode {split}", unit="q", mininterval=2):
        ex = src[i]
        img_id = ex.meta["image_id"]
        if img_id not in pixel_cache:
            pv = image_processor(ex.image().convert("RGB"), return_tensors="pt")["pixel_values"][0]
            pixel_cache[img_id] = pv
        qs.append(ex.question)
        labels.append(answers.index(ex.label))
    order = {k: j for j, k in enumerate(pixel_cache)}
    img_ids = [src[i].meta["image_id"] for i in range(len(src))]
    pixels = torch.stack([pixel_cache[k] for k in pixel_cache])
    enc = tokenizer(qs, padding="longest", return_tensors="pt")
    return {
        "pixels": pixels,
        "image_index": torch.tensor([order[k] for k in img_ids]),
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor(labels),
    }


def evaluate(model, data, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    n = len(data["labels"])
    with torch.no_grad():
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            out = model(
                input_ids=data["input_ids"][sl], attention_mask=data["attention_mask"][sl],
                pixel_values=data["pixels"][data["image_index"][sl]],
            )
            correct += (out.logits.argmax(-1) == data["labels"][sl]).sum().item()
    return correct / n


def train(out: Path, *, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
          hidden: int = 128, layers: int = 4, heads: int = 4, limit: int | None = None) -> dict:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.time()
    from sources.easyvqa import EasyVQA

    answers = EasyVQA("train").answers()
    tokenizer = build_tokenizer([e.question for e in EasyVQA("train")])
    image_processor = build_image_processor()
    train_data = encode_split("train", tokenizer, image_processor, answers)
    test_data = encode_split("test", tokenizer, image_processor, answers)
    if limit:
        for d in (train_data, test_data):
            for k in ("image_index", "input_ids", "attention_mask", "labels"):
                d[k] = d[k][:limit]
    model = build_model(len(tokenizer), answers, hidden=hidden, layers=layers, heads=heads, seed=seed)
    n = len(train_data["labels"])
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train", unit="step")
    history = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            outputs = model(
                input_ids=train_data["input_ids"][idx], attention_mask=train_data["attention_mask"][idx],
                pixel_values=train_data["pixels"][train_data["image_index"][idx]],
            )
            target = torch.nn.functional.one_hot(train_data["labels"][idx], len(answers)).float()
            # Binary cross-entropy on (soft) answer scores, as VQA fine-tuning does.
            loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs.logits, target, reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        acc = evaluate(model, test_data)
        history.append({"epoch": epoch + 1, "test_accuracy": acc})
        tqdm.write(f"epoch {epoch + 1}: test accuracy {acc:.4f}")
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    result = {
        "test_accuracy": history[-1]["test_accuracy"], "test_questions": len(test_data["labels"]),
        "wall_seconds": round(time.time() - start, 1), "epochs": epochs, "seed": seed,
        "hidden": hidden, "layers": layers, "heads": heads, "history": history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "training_result.json").write_text(json.dumps(result, indent=2))
    print(f"test accuracy {result['test_accuracy']:.4f} on {result['test_questions']} questions; "
          f"wall time {result['wall_seconds']:.0f} s")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo/models/vilt-easyvqa"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (smoke runs)")
    a = p.parse_args(argv)
    train(a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, hidden=a.hidden,
          layers=a.layers, heads=a.heads, limit=a.limit)


if __name__ == "__main__":
    main()
