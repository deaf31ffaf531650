"""Train the easy-VQA demo LXMERT (and its grid region extractor) from scratch, reproducibly.

    python -m demo.train_lxmert --out demo/models/lxmert-easyvqa --epochs 2

A small LXMERT-architecture model (width 64, 2 language / 2 vision / 2 cross-modality layers,
4 heads) reads "regions" made by a small CNN trained jointly with it: the 64 x 64 image becomes
a 4 x 4 grid of cells, each cell one region (feature + its box). Seeded; prints a progress bar,
the test accuracy on the full easy-VQA test split and the wall time. The output directory is an
ordinary Hugging Face LXMERT checkpoint (config.json, model.safetensors, tokenizer) plus
``region_extractor.safetensors`` / ``region_extractor.json``, which ``adapters.lxmert`` loads.
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

from adapters.lxmert import GridRegionExtractor
from demo.train_vilt import build_tokenizer

DEMO_IMAGE_SIZE = 64
MAX_TEXT_TOKENS = 40


def build_model(vocab_size: int, answers: list[str], *, hidden: int = 64, layers: tuple[int, int, int] = (2, 2, 2),
                heads: int = 4, feat_dim: int | None = None, seed: int = 0):
    from transformers import LxmertConfig, LxmertForQuestionAnswering

    torch.manual_seed(seed)
    l_layers, r_layers, x_layers = layers
    feat_dim = feat_dim or hidden
    config = LxmertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads, intermediate_size=hidden * 4,
        l_layers=l_layers, r_layers=r_layers, x_layers=x_layers, visual_feat_dim=feat_dim, visual_pos_dim=4,
        max_position_embeddings=MAX_TEXT_TOKENS, num_qa_labels=len(answers),
        id2label={i: a for i, a in enumerate(answers)}, label2id={a: i for i, a in enumerate(answers)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        # Trained with softmax cross-entropy (one answer per question), so the adapter reports softmax.
        answer_probability="softmax",
    )
    model = LxmertForQuestionAnswering(config)
    extractor = GridRegionExtractor(image_size=DEMO_IMAGE_SIZE, grid=4, feat_dim=feat_dim)
    return model, extractor


def encode_split(split: str, tokenizer, answers: list[str], image_size: int):
    """All questions of a split as tensors; each image decoded once (uint8, resized as the adapter does)."""
    from PIL import Image

    from sources.easyvqa import EasyVQA

    src = EasyVQA(split)
    pixel_cache: dict[int, np.ndarray] = {}
    qs, labels, img_ids = [], [], []
    for i in tqdm(range(len(src)), desc=f"encode {split}", unit="q", mininterval=2):
        ex = src[i]
        img_id = ex.meta["image_id"]
        if img_id not in pixel_cache:
            im = ex.image().convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixel_cache[img_id] = np.asarray(im, np.uint8)
        qs.append(ex.question)
        labels.append(answers.index(ex.label))
        img_ids.append(img_id)
    order = {k: j for j, k in enumerate(pixel_cache)}
    pixels = torch.from_numpy(np.stack(list(pixel_cache.values()))).permute(0, 3, 1, 2).contiguous()
    enc = tokenizer(qs, padding="longest", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt")
    return {"pixels": pixels, "image_index": torch.tensor([order[k] for k in img_ids]),
            "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.tensor(labels)}


def logits_of(model, extractor, data, idx, boxes):
    """Logits of questions ``idx``; the extractor runs once per distinct image of the batch."""
    images, local = torch.unique(data["image_index"][idx], return_inverse=True)
    feats = extractor(extractor.normalize(data["pixels"][images].float() / 255.0))[local]
    ids = data["input_ids"][idx]
    return model(input_ids=ids, attention_mask=data["attention_mask"][idx], token_type_ids=torch.zeros_like(ids),
                 visual_feats=feats, visual_pos=boxes.expand(len(ids), -1, -1)).question_answering_score


def image_batches(data, images_per_batch: int, gen: torch.Generator):
    """Batches of question indices holding every question of ``images_per_batch`` random images.

    easy-VQA asks about 10 questions per image; batching by image runs the CNN once per image
    instead of once per question, which is most of the saving on a CPU.
    """
    image_index = data["image_index"]
    order = torch.argsort(image_index, stable=True)
    counts = torch.bincount(image_index)
    groups = [g for g in torch.split(order, counts.tolist()) if len(g)]
    perm = torch.randperm(len(groups), generator=gen).tolist()
    for s in range(0, len(perm), images_per_batch):
        yield torch.cat([groups[j] for j in perm[s:s + images_per_batch]])


def evaluate(model, extractor, data, boxes, *, limit: int | None = None, batch_size: int = 256) -> float:
    model.eval()
    extractor.eval()
    n = len(data["labels"]) if limit is None else min(limit, len(data["labels"]))
    correct = 0
    with torch.no_grad():
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(s + batch_size, n))  # test questions are grouped by image
            correct += (logits_of(model, extractor, data, idx, boxes).argmax(-1) == data["labels"][idx]).sum().item()
    return correct / n


def save(out: Path, model, tokenizer, extractor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    extractor.save(out)


def train(out: Path, *, epochs: int = 2, images_per_batch: int = 8, lr: float = 2e-3, seed: int = 0, hidden: int = 64,
          heads: int = 4, threads: int = 1, limit: int | None = None, epoch_eval: int = 2000) -> dict:
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.time()
    from sources.easyvqa import EasyVQA

    answers = EasyVQA("train").answers()
    tokenizer = build_tokenizer([e.question for e in EasyVQA("train")])
    tokenizer.model_max_length = MAX_TEXT_TOKENS
    train_data = encode_split("train", tokenizer, answers, DEMO_IMAGE_SIZE)
    test_data = encode_split("test", tokenizer, answers, DEMO_IMAGE_SIZE)
    if limit:
        for d in (train_data, test_data):
            for k in ("image_index", "input_ids", "attention_mask", "labels"):
                d[k] = d[k][:limit]
    model, extractor = build_model(len(tokenizer), answers, hidden=hidden, heads=heads, seed=seed)
    boxes = torch.from_numpy(extractor.boxes())[None]
    params = list(model.parameters()) + list(extractor.parameters())
    n_images = int((torch.bincount(train_data["image_index"]) > 0).sum())
    steps = epochs * ((n_images + images_per_batch - 1) // images_per_batch)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train", unit="step", mininterval=5)
    history = []
    for epoch in range(epochs):
        model.train()
        extractor.train()
        for idx in image_batches(train_data, images_per_batch, gen):
            logits = logits_of(model, extractor, train_data, idx, boxes)
            loss = torch.nn.functional.cross_entropy(logits, train_data["labels"][idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        last = epoch == epochs - 1
        acc = evaluate(model, extractor, test_data, boxes, limit=None if last else epoch_eval)
        history.append({"epoch": epoch + 1, "test_accuracy": acc,
                        "test_questions": len(test_data["labels"]) if last else min(epoch_eval, len(test_data["labels"])),
                        "seconds": round(time.time() - start, 1)})
        tqdm.write(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({history[-1]['test_questions']} questions)")
        save(out, model, tokenizer, extractor)
    bar.close()
    model.eval()
    extractor.eval()
    result = {
        "test_accuracy": history[-1]["test_accuracy"], "test_questions": len(test_data["labels"]),
        "wall_seconds": round(time.time() - start, 1), "epochs": epochs, "seed": seed, "images_per_batch": images_per_batch,
        "lr": lr, "hidden": hidden, "heads": heads, "layers": {"lang": 2, "vision": 2, "cross": 2},
        "region_grid": [extractor.grid, extractor.grid], "history": history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "extractor_parameters": sum(p.numel() for p in extractor.parameters()),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "training_result.json").write_text(json.dumps(result, indent=2))
    print(f"test accuracy {result['test_accuracy']:.4f} on {result['test_questions']} questions; "
          f"wall time {result['wall_seconds']:.0f} s")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo/models/lxmert-easyvqa"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images-per-batch", type=int, default=8, help="a batch holds every question of these images")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo was trained with 1)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (smoke runs)")
    a = p.parse_args(argv)
    train(a.out, epochs=a.epochs, images_per_batch=a.images_per_batch, lr=a.lr, seed=a.seed, hidden=a.hidden, heads=a.heads,
          threads=a.threads, limit=a.limit)


if __name__ == "__main__":
    main()
