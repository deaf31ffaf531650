"""Fine-tune a model's answer classifier (or the whole model) on any data set of sources/.

    python cli.py finetune --model vilt-easyvqa --dataset folder:my_data --out models/my-vilt

The loss is binary cross-entropy on the VQA soft scores (each answer's score min(1, count / 3)),
summed over answers and averaged over the batch, as VQA fine-tuning of ViLT does. The loop is
generic: it talks to a model only through the adapter's training contract (adapters/base.py:
``encode_batch``, ``forward_logits``, ``answers``, ``trainable_parameters``, ``set_training``,
``add_answers``, ``save``), so every adapter that implements it can be fine-tuned.

Generative adapters (``architecture == "generative"``, e.g. LLaVA) write their answers: the loss is
the language-model cross-entropy of each example's label tokens after its prompt (the adapter's
``encode_batch(images, questions, answers)`` and ``answer_loss``), and evaluation generates the
answers (``generate_batch``) and counts one correct when it equals the label after the VQA answer
normalization. They have no answer set to extend.

Answers of the data set that the model cannot output: with ``new_answers="extend"`` (default) the
classifier gets a new row per answer (old rows unchanged) and the checkpoint's label set grows;
with ``"ignore"`` they get no target, and an example none of whose answers the model knows is left
out (counted in the result).
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from core.answers import normalize_answer
from core.errors import SourceError
from sources.base import Example

IMAGE_CACHE_BYTES = 256 * 2**20  # decoded images kept between epochs (easy-VQA fits whole)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    epochs: int = 1
    lr: float | None = None  # default: 1e-3 for the classifier alone, 1e-4 for the whole model
    batch_size: int = 32
    full: bool = False  # train every weight, not only the classifier
    limit: int | None = None  # use only the first N training examples
    eval_every: int | None = None  # evaluate every K steps too (always at the end of each epoch)
    eval_limit: int | None = 1000  # evaluate on at most N examples
    seed: int = 0
    weight_decay: float = 0.01
    schedule: str = "onecycle"  # "onecycle" (warm up, then cosine down) or "constant"
    warmup: float = 0.1  # fraction of the steps spent warming up (onecycle)
    new_answers: str = "extend"  # "extend" the classifier or "ignore" the answers it lacks
    max_steps: int | None = None  # stop after this many steps (smoke runs, tests)
    progress: bool = True
    # "bce": VQA soft-score BCE (the default, ViLT's VQA loss); "softmax": cross-entropy against the
    # soft scores normalized to sum 1 (the easy-VQA LXMERT / KD-VLP demos, one answer per question).
    loss: str = "bce"
    clip_grad_norm: float | None = None  # clip the gradient norm of the trained parameters
    # A batch holds every question of this many random images instead of batch_size random questions
    # (adapters that run their CNN once per distinct image of a batch then see about 10x fewer images).
    images_per_batch: int | None = None
    checkpoint_every_epoch: bool = False  # write the checkpoint after every epoch (a stopped run keeps one)
    # "dihedral": each training image is flipped / rotated by a random one of the 8 symmetries of a
    # square (seeded). Only for data whose answers do not depend on orientation (easy-VQA: shape and
    # colour questions); never for questions about left / right / above.
    augment: str = "none"
    # Parameter-name prefixes (as in ``adapter.model.named_parameters()``) kept frozen while the rest
    # trains, e.g. ("model.vision_tower.",): LLaVA's recipe keeps its pretrained vision encoder fixed.
    frozen: tuple[str, ...] = ()

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("learning rate must be positive")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval-every must be at least 1")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', not {self.schedule!r}")
        if self.new_answers not in ("extend", "ignore"):
            raise ValueError(f"new_answers must be 'extend' or 'ignore', not {self.new_answers!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {self.augment!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError("clip-grad-norm must be positive")
        if self.images_per_batch is not None and self.images_per_batch < 1:
            raise ValueError("images per batch must be at least 1")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.full else 1e-3)


@dataclass(frozen=True, kw_only=True)
class FinetuneResult:
    out: str | None
    steps: int
    train_examples: int
    skipped_examples: int  # no answer, or (new_answers="ignore") no answer the model knows
    failed: tuple[tuple[str, str], ...]  # (source key, why): unreadable images, left out
    answers_added: tuple[str, ...]
    losses: tuple[float, ...]  # one per step
    history: tuple[dict, ...]  # evaluations: step, epoch, accuracy, vqa_score, examples
    parameters_trained: int
    wall_seconds: float
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [list(f) for f in self.failed]
        d["final_eval"] = self.history[-1] if self.history else None
        return d


class _ImageCache:
    """Decoded images by file (many questions share one image), bounded by pixel bytes."""

    def __init__(self, budget: int = IMAGE_CACHE_BYTES):
        self.budget, self.used, self.images = budget, 0, {}

    def get(self, ex: Example):
        key = ex.meta.get("image_path") or ex.source_key
        im = self.images.get(key)
        if im is None:
            im = ex.image()
            size = im.width * im.height * 3
            if self.used + size <= self.budget:
                self.images[key] = im
                self.used += size
        return im


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def targets_for(examples: list[Example], answers: list[str]) -> torch.Tensor:
    """(examples, answers) soft-score matrix; answers outside ``answers`` get no column."""
    index = {a: i for i, a in enumerate(answers)}
    t = torch.zeros(len(examples), len(answers))
    for r, ex in enumerate(examples):
        for a, s in ex.answers.items():
            j = index.get(a)
            if j is not None:
                t[r, j] = max(float(s), float(t[r, j]))
    return t


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE on soft scores, summed over answers, averaged over the batch (VQA fine-tuning's loss)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(targets)


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the soft scores normalized to sum 1 per example (one-hot: plain cross-entropy)."""
    probs = targets / targets.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.nn.functional.cross_entropy(logits, probs)


AUGMENTATIONS = ("none", "dihedral")
# The 8 symmetries of a square (None: unchanged).
_DIHEDRAL = (None, "ROTATE_90", "ROTATE_180", "ROTATE_270", "FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "TRANSPOSE",
             "TRANSVERSE")


def augment_dihedral(images: list, gen: torch.Generator) -> list:
    """Each image under a random symmetry of the square (drawn from ``gen``, so runs repeat)."""
    from PIL import Image

    picks = torch.randint(0, len(_DIHEDRAL), (len(images),), generator=gen).tolist()
    return [im if _DIHEDRAL[k] is None else im.transpose(getattr(Image.Transpose, _DIHEDRAL[k]))
            for im, k in zip(images, picks)]


LOSSES = {"bce": vqa_loss, "softmax": softmax_loss}


def loss_on(adapter, examples: list[Example], loss: str = "bce") -> float:
    """The loss of ``adapter`` on these examples as one batch (eval mode, no gradient)."""
    adapter.set_training(False)
    with torch.no_grad():
        inputs = adapter.encode_batch([ex.image() for ex in examples], [ex.question for ex in examples])
        logits = adapter.forward_logits(**inputs).float()
        return float(LOSSES[loss](logits, targets_for(examples, adapter.answers()).to(logits.device)))


def _load_images(examples: list[Example], cache: _ImageCache, failed: list):
    kept, images = [], []
    for ex in examples:
        try:
            images.append(cache.get(ex))
            kept.append(ex)
        except SourceError as e:
            failed.append((ex.source_key, str(e)))
    return kept, images


def is_generative(adapter) -> bool:
    return getattr(adapter, "architecture", "") == "generative"


def evaluate(adapter, examples: list[Example], *, batch_size: int = 64, cache: _ImageCache | None = None) -> dict:
    """accuracy (top answer == label) and VQA score (the top answer's soft score), over labelled examples.

    A generative model's top answer is its generated text, compared after the VQA answer normalization."""
    cache = cache or _ImageCache()
    labelled = [ex for ex in examples if ex.label is not None]
    adapter.set_training(False)
    correct, score, n, failed = 0, 0.0, 0, []
    with torch.no_grad():
        for s in range(0, len(labelled), batch_size):
            kept, images = _load_images(labelled[s:s + batch_size], cache, failed)
            if not kept:
                continue
            for ex, top in zip(kept, _top_answers(adapter, images, [ex.question for ex in kept])):
                ok, sc = _answer_scores(adapter, ex, top)
                correct += ok
                score += sc
                n += 1
    return {"accuracy": correct / n if n else float("nan"), "vqa_score": score / n if n else float("nan"),
            "examples": n}


def _top_answers(adapter, images: list, questions: list[str]) -> list[str]:
    if is_generative(adapter):
        return adapter.generate_batch(images, questions)
    answers = adapter.answers()
    logits = adapter.forward_logits(**adapter.encode_batch(images, questions))
    return [answers[j] for j in logits.argmax(-1).tolist()]


def _answer_scores(adapter, ex: Example, top: str) -> tuple[bool, float]:
    """(``top`` is the label, its soft score); a generated text is compared after the VQA normalization."""
    if not is_generative(adapter):
        return top == ex.label, float(ex.answers.get(top, 0.0))
    norm = normalize_answer(top)
    score = max((float(s) for a, s in ex.answers.items() if normalize_answer(a) == norm), default=0.0)
    return norm == normalize_answer(ex.label), score


def image_key(ex: Example) -> str:
    return str(ex.meta.get("image_path") or ex.meta.get("image_id") or ex.source_key)


def _batches(usable: list[Example], config: FinetuneConfig, gen: torch.Generator, groups: list[list[int]] | None):
    """Index lists of one epoch: random questions, or every question of ``images_per_batch`` random images."""
    if groups is None:
        order = torch.randperm(len(usable), generator=gen).tolist()
        return [order[s:s + config.batch_size] for s in range(0, len(order), config.batch_size)]
    perm = torch.randperm(len(groups), generator=gen).tolist()
    k = config.images_per_batch
    return [[i for j in perm[s:s + k] for i in groups[j]] for s in range(0, len(perm), k)]


def _take(examples: Iterable[Example], limit: int | None) -> list[Example]:
    out = []
    for ex in examples:
        if limit is not None and len(out) >= limit:
            break
        out.append(ex)
    return out


def finetune(adapter, train: Iterable[Example], *, out: str | Path | None = None,
             config: FinetuneConfig = FinetuneConfig(), eval_examples: Iterable[Example] | None = None,
             extra_result: dict | None = None) -> FinetuneResult:
    """Fine-tune ``adapter`` in place on ``train``; write a checkpoint to ``out`` when given.

    ``eval_examples`` (default: a seeded 5% of the training examples, at most ``eval_limit``, held
    out) are evaluated at the end of every epoch and every ``eval_every`` steps.
    """
    start = time.time()
    gen = seed_everything(config.seed)
    examples, eval_list = _split_eval(_take(train, config.limit), eval_examples, config)
    added, usable = _learnable(adapter, examples, config)
    params = _unfreeze(adapter, config.full, config.frozen)
    groups, per_epoch, total = _step_plan(usable, config)
    trainer = _Trainer(adapter, params, config, total)
    run = _RunLog(total=total, progress=config.progress)
    try:
        for epoch in range(1, config.epochs + 1):
            for indices in _batches(usable, config, gen, groups):
                if run.step >= total:
                    break
                batch, images = _load_images([usable[i] for i in indices], run.cache, run.failed)
                if batch:
                    run.log_step(trainer.step(batch, images), epoch)
                    if config.eval_every and run.step % config.eval_every == 0 and run.step % per_epoch != 0:
                        run.evaluate(adapter, eval_list, epoch)
            run.evaluate(adapter, eval_list, epoch)
            if out is not None and config.checkpoint_every_epoch:
                adapter.save(Path(out))
            if run.step >= total:
                break
    finally:
        run.close()
        adapter.set_training(False)
        for p in adapter.trainable_parameters(True):
            p.requires_grad_(True)
    result = FinetuneResult(
        out=str(out) if out is not None else None, steps=run.step, train_examples=len(usable),
        skipped_examples=len(examples) - len(usable), failed=tuple(dict.fromkeys(run.failed)), answers_added=added,
        losses=tuple(run.losses), history=tuple(run.history), parameters_trained=sum(p.numel() for p in params),
        wall_seconds=round(time.time() - start, 1), config={**asdict(config), "learning_rate": config.learning_rate},
    )
    if out is not None:
        _save(Path(out), adapter, result, extra_result)
    return result


def _split_eval(examples: list[Example], eval_examples: Iterable[Example] | None,
                config: FinetuneConfig) -> tuple[list[Example], list[Example]]:
    """(training examples, evaluation examples): the given evaluation set, or a seeded 5% held out
    of the training examples (at most ``eval_limit``; none below 20 examples)."""
    if not examples:
        raise SourceError("the training data set has no examples")
    if eval_examples is not None:
        return examples, _take(eval_examples, config.eval_limit)
    n_eval = min(config.eval_limit or 1000, max(1, len(examples) // 20)) if len(examples) >= 20 else 0
    perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed + 1)).tolist()
    held = set(perm[:n_eval])
    return [ex for i, ex in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def _learnable(adapter, examples: list[Example], config: FinetuneConfig) -> tuple[tuple[str, ...], list[Example]]:
    """(answers added to the classifier, the examples with an answer the model can learn).

    ``new_answers="extend"``: the data set's answers the model lacks get classifier rows, most
    frequent first; ``"ignore"``: they get no target."""
    if is_generative(adapter):  # it learns to write the label, whatever it is
        usable = [ex for ex in examples if ex.label]
        if not usable:
            raise SourceError("no training example has an answer (a generative model learns to write the label)")
        return (), usable
    known = set(adapter.answers())
    unseen = Counter(a for ex in examples for a in ex.answers if a not in known)
    added: tuple[str, ...] = ()
    if unseen and config.new_answers == "extend":
        added = tuple(a for a, _ in unseen.most_common())
        adapter.add_answers(list(added))
    answer_set = set(adapter.answers())
    usable = [ex for ex in examples if any(a in answer_set for a in ex.answers)]
    if not usable:
        raise SourceError("no training example has an answer this model can learn (examples need an 'answer'; "
                          "with new_answers='ignore', one in the model's label set)")
    return added, usable


def _unfreeze(adapter, full: bool, frozen: tuple[str, ...] = ()) -> list:
    """The parameters to train, with gradients on; the rest frozen (only the classifier learns, and
    backward is cheaper) unless ``full``. Parameters named under a ``frozen`` prefix never train."""
    params = adapter.trainable_parameters(full)
    if frozen:
        named = [p for name, p in adapter.model.named_parameters() if name.startswith(tuple(frozen))]
        if not named:
            raise ValueError(f"no parameter of the model is named under {', '.join(frozen)}")
        held = {id(p) for p in named}
        params = [p for p in params if id(p) not in held]
    kept = {id(p) for p in params}
    for p in adapter.trainable_parameters(True):
        p.requires_grad_(id(p) in kept)
    for p in params:
        p.requires_grad_(True)
    return params


def _step_plan(usable: list[Example], config: FinetuneConfig) -> tuple[list[list[int]] | None, int, int]:
    """(question indices per image when batching by image, else None; steps per epoch; total steps)."""
    groups = None
    if config.images_per_batch:
        by_image: dict[str, list[int]] = {}
        for i, ex in enumerate(usable):
            by_image.setdefault(image_key(ex), []).append(i)
        groups = list(by_image.values())
        per_epoch = (len(groups) + config.images_per_batch - 1) // config.images_per_batch
    else:
        per_epoch = (len(usable) + config.batch_size - 1) // config.batch_size
    total = per_epoch * config.epochs
    return groups, per_epoch, total if config.max_steps is None else min(total, config.max_steps)


class _Trainer:
    """One optimizer step on a batch: augment, forward, loss, backward, clip, step, schedule."""

    def __init__(self, adapter, params: list, config: FinetuneConfig, total: int):
        self.adapter, self.params, self.config = adapter, params, config
        self.answers = adapter.answers()
        self.loss_fn = LOSSES[config.loss]
        lr = config.learning_rate
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        self.sched = None
        if config.schedule == "onecycle" and total > 1:
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=total,
                                                             pct_start=config.warmup)
        self.aug_gen = torch.Generator().manual_seed(config.seed + 2)

    def step(self, batch: list[Example], images: list) -> float:
        """Train on one batch; returns its loss."""
        if self.config.augment == "dihedral":
            images = augment_dihedral(images, self.aug_gen)
        self.adapter.set_training(True)
        loss = self._loss(batch, images)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return float(loss.detach())


    def _loss(self, batch: list[Example], images: list) -> torch.Tensor:
        """The classifier's loss on the answer logits, or (generative) the label tokens' cross-entropy."""
        questions = [ex.question for ex in batch]
        if is_generative(self.adapter):
            return self.adapter.answer_loss(self.adapter.encode_batch(images, questions, [ex.label for ex in batch]))
        logits = self.adapter.forward_logits(**self.adapter.encode_batch(images, questions)).float()
        return self.loss_fn(logits, targets_for(batch, self.answers).to(logits.device))  # on the model's device


class _RunLog:
    """What a run has done so far: losses (one per step), evaluations, unreadable images, the bar."""

    def __init__(self, *, total: int, progress: bool):
        self.cache = _ImageCache()
        self.failed: list[tuple[str, str]] = []
        self.losses: list[float] = []
        self.history: list[dict] = []
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="finetune", unit="step", dynamic_ncols=True)

    @property
    def step(self) -> int:
        return len(self.losses)

    def log_step(self, loss: float, epoch: int) -> None:
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")

    def evaluate(self, adapter, eval_list: list[Example], epoch: int) -> None:
        if not eval_list:
            return
        res = evaluate(adapter, eval_list, cache=self.cache)
        self.history.append({"step": self.step, "epoch": epoch, **res})
        if self.bar is not None:
            self.bar.write(f"step {self.step} (epoch {epoch}): accuracy {res['accuracy']:.4f}, "
                           f"VQA score {res['vqa_score']:.4f} on {res['examples']} examples")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _save(out: Path, adapter, result: FinetuneResult, extra_result: dict | None) -> None:
    """The checkpoint, and finetune_result.json beside it (the last 1000 losses)."""
    adapter.save(out)
    payload = {**result.as_dict(), **(extra_result or {})}
    payload["losses"] = payload["losses"][-1000:]
    (out / "finetune_result.json").write_text(json.dumps(payload, indent=2, default=str))


def finetune_cycles(adapter, train: list[Example], configs: list[FinetuneConfig], *, out: str | Path | None = None,
                    eval_examples: list[Example] | None = None) -> tuple[FinetuneResult, list[dict], int]:
    """Several ``finetune`` runs in sequence on the same model: e.g. a main one-cycle, then a
    gentler one at a lower learning rate (what took the LXMERT and KD-VLP demos past 90%).

    Returns the last run's result, the evaluation history of all runs with epochs and steps
    counted across them (each entry says its ``cycle``, from 0), and the total optimizer steps.
    """
    history: list[dict] = []
    epochs = steps = 0
    res = None
    for cycle, config in enumerate(configs):
        res = finetune(adapter, train, out=out, config=config, eval_examples=eval_examples)
        history += [{**h, "epoch": epochs + h["epoch"], "step": steps + h["step"], "cycle": cycle}
                    for h in res.history]
        epochs += config.epochs
        steps += res.steps
    if res is None:
        raise ValueError("finetune_cycles needs at least one config")
    return res, history, steps


def evaluate_each_kind(adapter, examples: list[Example], kind_of, *, batch_size: int = 256) -> dict[str, dict]:
    """``evaluate``'s result per question kind, ``kind_of(example) -> str`` (e.g. easy-VQA's yes/no,
    shape, colour), kinds in sorted order; each question answered once."""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(kind_of(ex), []).append(ex)
    return {k: evaluate(adapter, g, batch_size=batch_size) for k, g in sorted(groups.items())}


def accuracy_by_kind(adapter, examples: list[Example], kind_of, *, batch_size: int = 256) -> dict[str, float]:
    """Accuracy per question kind (``evaluate_each_kind``), rounded to 4 places."""
    return {k: round(r["accuracy"], 4)
            for k, r in evaluate_each_kind(adapter, examples, kind_of, batch_size=batch_size).items()}
