"""Train the easy-VQA demo KD-VLP-style model from scratch, reproducibly.

    python -m demo.train_kdvlp --out demo/models/kdvlp-easyvqa

Seeded, one torch thread (the machine is shared); prints a progress bar, the accuracy on the
full easy-VQA test split and the wall time. The output directory is a KD-VLP checkpoint in the
format of ``adapters/kdvlp_model.py`` (config.json + model.safetensors + tokenizer files) that
``adapters.kdvlp.KdvlpAdapter`` loads, plus training_result.json.
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

from adapters.kdvlp_model import KdvlpConfig, KdvlpModel, images_to_uint8, normalize_pixels, save_checkpoint


def encode_split(split: str, tokenizer, image_size: int, answers: list[str], max_text_tokens: int):
    """All questions of a split: uint8 pixels decoded once per image, token ids padded to the longest."""
    from sources.easyvqa import EasyVQA

    src = EasyVQA(split)
    images, order, img_index, qs, labels = [], {}, [], [], []
    for i in tqdm(range(len(src)), desc=f"encode {split}", unit="q", mininterval=2):
        ex = src[i]
        img_id = ex.meta["image_id"]
        if img_id not in order:
            order[img_id] = len(images)
            images.append(images_to_uint8([ex.image()], image_size)[0])
        img_index.append(order[img_id])
        qs.append(ex.question)
        labels.append(answers.index(ex.label))
    enc = tokenizer(qs, padding="longest", truncation=True, max_length=max_text_tokens, return_tensors="pt")
    return {"pixels": torch.stack(images), "image_index": torch.tensor(img_index),
            "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": torch.tensor(labels)}


def evaluate(model: KdvlpModel, data, batch_size: int = 500, answers: list[str] | None = None):
    """Accuracy over the split; with ``answers``, also per question kind (yes/no, shape, color)."""
    model.eval()
    hits = []
    with torch.no_grad():
        for s in range(0, len(data["labels"]), batch_size):
            sl = slice(s, s + batch_size)
            pv = normalize_pixels(data["pixels"][data["image_index"][sl]], model.config)
            logits = model(data["input_ids"][sl], pv, data["attention_mask"][sl]).logits
            hits.append(logits.argmax(-1) == data["labels"][sl])
    hits = torch.cat(hits)
    if answers is None:
        return hits.float().mean().item()
    kind = {a: "yes/no" if a in ("yes", "no") else "shape" if a in ("circle", "rectangle", "triangle") else "color"
            for a in answers}
    labels = [kind[answers[i]] for i in data["labels"].tolist()]
    by_kind = {k: round(hits[[lab == k for lab in labels]].float().mean().item(), 4) for k in sorted(set(labels))}
    return hits.float().mean().item(), by_kind


def train(out: Path, *, epochs: int = 3, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, hidden: int = 64,
          layers: int = 3, heads: int = 4, channels: tuple[int, ...] = (16, 32, 64, 96), threads: int = 1,
          limit: int | None = None, max_steps: int | None = None) -> dict:
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    start = time.time()
    from demo.train_vilt import build_tokenizer
    from sources.easyvqa import EasyVQA

    answers = EasyVQA("train").answers()
    tokenizer = build_tokenizer([e.question for e in EasyVQA("train")])
    config = KdvlpConfig(vocab_size=len(tokenizer), answers=tuple(answers), hidden_size=hidden, num_layers=layers,
                         num_heads=heads, intermediate_size=4 * hidden, max_text_tokens=40, image_size=64,
                         cnn_channels=channels, pad_token_id=tokenizer.pad_token_id)
    train_data = encode_split("train", tokenizer, config.image_size, answers, config.max_text_tokens)
    test_data = encode_split("test", tokenizer, config.image_size, answers, config.max_text_tokens)
    if limit:
        for d in (train_data, test_data):
            for k in ("image_index", "input_ids", "attention_mask", "labels"):
                d[k] = d[k][:limit]
    torch.manual_seed(seed)
    model = KdvlpModel(config)
    n = len(train_data["labels"])
    steps_per_epoch = (n + batch_size - 1) // batch_size
    steps = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc="train", unit="step", mininterval=5)
    history, step = [], 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            if step >= steps:
                break
            idx = perm[s: s + batch_size]
            ids, mask = train_data["input_ids"][idx], train_data["attention_mask"][idx]
            width = int(mask.sum(1).max())  # drop all-padding columns of this batch
            pv = normalize_pixels(train_data["pixels"][train_data["image_index"][idx]], config)
            logits = model(ids[:, :width], pv, mask[:, :width]).logits
            loss = torch.nn.functional.cross_entropy(logits, train_data["labels"][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
        acc, by_kind = evaluate(model, test_data, answers=answers)
        history.append({"epoch": epoch + 1, "test_accuracy": acc, "by_kind": by_kind,
                        "wall_seconds": round(time.time() - start, 1)})
        tqdm.write(f"epoch {epoch + 1}: test accuracy {acc:.4f} {by_kind} ({time.time() - start:.0f} s)")
        done = step >= steps or epoch + 1 == epochs
        # every epoch leaves a loadable checkpoint, so an interrupted run still ships its best so far
        result = _save(model, config, tokenizer, Path(out), history=history, start=start, step=step, complete=done,
                       n_test=len(test_data["labels"]),
                       args=dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, hidden=hidden, layers=layers,
                                 heads=heads, channels=channels))
        if done:
            break
    bar.close()
    print(f"test accuracy {result['test_accuracy']:.4f} on {result['test_questions']} questions; "
          f"wall time {result['wall_seconds']:.0f} s")
    return result


def _save(model, config, tokenizer, out: Path, *, history, start, step, complete, n_test, args) -> dict:
    a = args
    result = {
        "test_accuracy": history[-1]["test_accuracy"], "test_questions": n_test, "complete": complete,
        "wall_seconds": round(time.time() - start, 1), "epochs_done": len(history), "steps": step, **{k: v for k, v in a.items() if k != "channels"},
        "cnn_channels": list(a["channels"]), "grid": config.grid, "history": history,
        "parameters": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads(),
    }
    cmd = (f"python -m demo.train_kdvlp --out {out} --epochs {a['epochs']} --batch-size {a['batch_size']} "
           f"--lr {a['lr']} --seed {a['seed']} --hidden {a['hidden']} --layers {a['layers']} --heads {a['heads']} "
           f"--channels {','.join(map(str, a['channels']))}")
    fields = {k: getattr(config, k) for k in config.__dataclass_fields__}
    model.config = KdvlpConfig(**{**fields, "extra": {
        "trained_with": cmd, "test_accuracy": result["test_accuracy"], "epochs_done": len(history),
        "data": "easy-VQA (full train split; accuracy on the full test split)"}})
    was_training = model.training
    model.eval()
    save_checkpoint(model, tokenizer, out)
    model.train(was_training)
    (out / "training_result.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo/models/kdvlp-easyvqa"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--channels", default="16,32,64,96", help="CNN stage widths (each halves the grid)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (smoke runs)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke runs)")
    a = p.parse_args(argv)
    train(a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, hidden=a.hidden, layers=a.layers,
          heads=a.heads, channels=tuple(int(c) for c in a.channels.split(",")), threads=a.threads, limit=a.limit,
          max_steps=a.max_steps)


if __name__ == "__main__":
    main()
