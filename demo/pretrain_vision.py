"""Stage 1 of the demo LLaVA: pretrain its vision tower on the training images, as a real LLaVA starts
from a pretrained CLIP encoder.

Why: trained from scratch through the language model alone, the demo LLaVA learned colour (99%) but
never shape (40%, "rectangle" for most shapes), in 9 epochs. The same vision tower alone, with a linear
read-out of its mean patch feature, learns shape to 98.8% of the test images in 1,000 steps; through the
language model on shape questions alone it reached 57% in as many. So the features are learnable and
the language-model path is a poor teacher for them. With the tower pretrained here for 400 steps, the
language model reads shape from it at 98% after 3 epochs of shape questions. demo/train_llava.py then
keeps the tower fixed (trained on with the rest at 1e-3 on every question, it lost shape again).

The labels are what each training image's questions say: the shape named by the answer of its "what
shape" questions and the colour named by its "what colour" ones (an image without such a question has
no label of that kind and adds no loss for it). The two linear heads are thrown away afterwards; only
the tower's weights are kept. Test images are never seen.
"""
from __future__ import annotations

import time

import torch

from sources.base import Example
from training.finetune import image_key

IGNORE = -100  # cross_entropy's ignore_index: an image without a question of this kind


def image_labels(examples: list[Example], kind_of) -> tuple[list[Example], dict[str, list[str]], torch.Tensor]:
    """(one example per distinct image, the classes of each kind, labels (images, kinds) with IGNORE where an
    image has no question of that kind). Kinds: "shape" and "color", read from the answers."""
    kinds = ("shape", "color")
    first: dict[str, Example] = {}
    named: dict[str, dict[str, str]] = {}
    for ex in examples:
        key = image_key(ex)
        first.setdefault(key, ex)
        kind = kind_of(ex)
        if kind in kinds:
            named.setdefault(key, {})[kind] = ex.label
    classes = {k: sorted({n[k] for n in named.values() if k in n}) for k in kinds}
    keys = list(first)
    labels = torch.tensor([[classes[k].index(named.get(key, {})[k]) if k in named.get(key, {}) else IGNORE
                            for k in kinds] for key in keys])
    return [first[k] for k in keys], classes, labels


def pretrain_vision_tower(adapter, examples: list[Example], kind_of, *, steps: int = 400, batch_size: int = 64,
                          lr: float = 1e-3, seed: int = 0, log_every: int = 100) -> dict:
    """Train ``adapter``'s vision tower in place to classify each image's shape and colour from the mean of its
    patch features (the features the projector reads). One-cycle schedule, AdamW, seeded. Returns a summary."""
    start = time.time()
    images, classes, labels = image_labels(examples, kind_of)
    if not all(classes.values()):
        raise ValueError("vision pretraining needs questions that name both a shape and a colour")
    processed = adapter.processor.image_processor(images=[ex.image() for ex in images], return_tensors="pt")
    pixels = processed["pixel_values"]
    tower = adapter.model.model.vision_tower
    width = tower.config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    heads = torch.nn.ModuleList(torch.nn.Linear(width, len(c)) for c in classes.values())
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tower.train()
    losses = []
    try:
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(pixels), (batch_size,), generator=gen)
            # hidden_states[-1] minus the class token: what LLaVA's "default" feature strategy hands the projector
            feats = tower(pixel_values=pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:].mean(1)
            loss = sum(torch.nn.functional.cross_entropy(h(feats), labels[idx, k], ignore_index=IGNORE)
                       for k, h in enumerate(heads) if (labels[idx, k] != IGNORE).any())  # else NaN
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if log_every and step % log_every == 0:
                print(f"vision pretraining step {step}/{steps}: loss {loss:.3f}", flush=True)
    finally:
        tower.eval()

    def mean(xs):
        return round(sum(xs) / len(xs), 4)

    return {"steps": steps, "images": len(images), "classes": classes, "lr": lr, "batch_size": batch_size,
            "first_loss": mean(losses[:20]), "final_loss": mean(losses[-20:]),
            "wall_seconds": round(time.time() - start, 1)}
