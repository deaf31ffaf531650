"""Train the easy-VQA demo KD-VLP-style model from scratch, reproducibly.

    python -m demo.train_kdvlp --out demo/models/kdvlp-easyvqa

Seeded, one torch thread (the machine is shared); prints a progress bar, the accuracy on the
full easy-VQA test split and the wall time. The training loop is training.finetune (the one
``cli.py finetune`` runs), with this demo's recipe: softmax cross-entropy, AdamW, one-cycle schedule
(15% warm-up), 64 random questions per batch. The output directory is a KD-VLP checkpoint in the
format of ``adapters/kdvlp_model.py`` (config.json + model.safetensors + tokenizer files) that
``adapters.kdvlp.KdvlpAdapter`` loads, plus training_result.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from adapters.kdvlp_model import KdvlpConfig, KdvlpModel
from demo.report import save_result
from sources.base import Example


def build_model(tokenizer, answers: list[str], *, hidden: int = 64, layers: int = 3, heads: int = 4,
                channels: tuple[int, ...] = (16, 32, 64, 96), seed: int = 0) -> KdvlpModel:
    config = KdvlpConfig(vocab_size=len(tokenizer), answers=tuple(answers), hidden_size=hidden, num_layers=layers,
                         num_heads=heads, intermediate_size=4 * hidden, max_text_tokens=40, image_size=64,
                         cnn_channels=tuple(channels), pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return KdvlpModel(config)


def init_demo_kdvlp(examples: list[Example], answers: list[str], *, hidden: int = 64, layers: int = 3,
                    heads: int = 4, seed: int = 0, channels: tuple[int, ...] = (16, 32, 64, 96),
                    device: str = "cpu"):
    """The easy-VQA demo KD-VLP-style model, untrained (a 4 x 4 CNN grid of a 64 x 64 image)."""
    from adapters.kdvlp import KdvlpAdapter
    from demo.train_vilt import build_tokenizer

    tokenizer = build_tokenizer([ex.question for ex in examples])
    model = build_model(tokenizer, answers, hidden=hidden, layers=layers, heads=heads, channels=channels, seed=seed)
    return KdvlpAdapter(model, tokenizer, model_id="demo-kdvlp", device=device)


def train(out: Path, *, epochs: int = 6, batch_size: int = 64, lr: float = 5e-4, seed: int = 0, hidden: int = 64,
          layers: int = 3, heads: int = 4, channels: tuple[int, ...] = (16, 32, 64, 96), threads: int = 1,
          limit: int | None = None, max_steps: int | None = None, polish_epochs: int = 2,
          polish_lr: float = 1e-4) -> dict:
    """Thin calls to training.finetune: a fresh demo KD-VLP model, every weight trained, then (with
    ``polish_epochs``) a second, gentler one-cycle at ``polish_lr`` on the result.

    Same as ``python cli.py finetune --init demo-kdvlp --dataset easyvqa --split train --eval-split test
    --eval-limit 0 --full --epochs 6 --batch-size 64 --lr 5e-4 --loss softmax --warmup 0.15
    --hidden 64 --layers 3 --heads 4 --out demo/models/kdvlp-easyvqa``, plus training_result.json in the
    demo's format and the training command in config.json's ``extra``.
    """
    import dataclasses

    from sources.easyvqa import EasyVQA, question_kind
    from training.finetune import FinetuneConfig, accuracy_by_kind, finetune_cycles

    torch.set_num_threads(threads)
    start = time.time()
    train_src, test_src = EasyVQA("train"), EasyVQA("test")
    answers = train_src.answers()
    # The vocabulary comes from every training question, also in --limit smoke runs.
    adapter = init_demo_kdvlp(list(train_src), answers, hidden=hidden, layers=layers, heads=heads, seed=seed,
                              channels=channels)
    config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, full=True, limit=limit, seed=seed,
                            weight_decay=0.01, schedule="onecycle", warmup=0.15, eval_limit=limit,
                            new_answers="ignore", loss="softmax", max_steps=max_steps, checkpoint_every_epoch=True)
    cycles = [config]
    if polish_epochs and not max_steps:
        cycles.append(dataclasses.replace(config, epochs=polish_epochs, lr=polish_lr, warmup=0.1, max_steps=None,
                                          checkpoint_every_epoch=False))
    res, stage_history, steps = finetune_cycles(adapter, train_src, cycles, out=out, eval_examples=test_src)
    tests = list(test_src) if limit is None else [ex for _, ex in zip(range(limit), test_src)]
    history = [{"epoch": h["epoch"], "test_accuracy": h["accuracy"], "step": h["step"]} for h in stage_history]
    history[-1]["by_kind"] = accuracy_by_kind(adapter, tests, question_kind)
    a = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, hidden=hidden, layers=layers, heads=heads,
             polish_epochs=polish_epochs, polish_lr=polish_lr)
    complete = max_steps is None or steps < max_steps  # every epoch ran to its end
    result = {
        "test_accuracy": history[-1]["test_accuracy"], "test_questions": res.history[-1]["examples"],
        "complete": bool(complete), "wall_seconds": round(time.time() - start, 1), "epochs_done": len(history),
        "steps": steps, **a, "cnn_channels": list(channels), "grid": adapter.grid, "history": history,
        "parameters": sum(p.numel() for p in adapter.model.parameters()), "torch_threads": torch.get_num_threads(),
    }
    cmd = (f"python -m demo.train_kdvlp --out {out} --epochs {epochs} --batch-size {batch_size} --lr {lr} "
           f"--polish-epochs {polish_epochs} --polish-lr {polish_lr} "
           f"--seed {seed} --hidden {hidden} --layers {layers} --heads {heads} "
           f"--channels {','.join(map(str, channels))}")
    adapter.model.config = adapter.config = dataclasses.replace(adapter.model.config, extra={
        "trained_with": cmd, "test_accuracy": result["test_accuracy"], "epochs_done": len(history),
        "data": "easy-VQA (full train split; accuracy on the full test split)"})
    adapter.save(out)  # again, with the provenance above in config.json
    return save_result(out, result)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo/models/kdvlp-easyvqa"))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--channels", default="16,32,64,96", help="CNN stage widths (each halves the grid)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="use only the first N questions (smoke runs)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke runs)")
    p.add_argument("--polish-epochs", type=int, default=2, help="epochs of the second, gentler cycle (0: none)")
    p.add_argument("--polish-lr", type=float, default=1e-4)
    a = p.parse_args(argv)
    train(a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, hidden=a.hidden, layers=a.layers,
          heads=a.heads, channels=tuple(int(c) for c in a.channels.split(",")), threads=a.threads, limit=a.limit,
          max_steps=a.max_steps, polish_epochs=a.polish_epochs, polish_lr=a.polish_lr)


if __name__ == "__main__":
    main()
