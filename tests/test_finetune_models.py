"""Fine-tuning LXMERT and KD-VLP through the generic loop: the adapters' training contract.

Tiny random models (tests/tiny_lxmert.py, tests/tiny_kdvlp.py), 4 one-colour images: a 2-step
run lowers the loss; a checkpoint reloads through the registry with the same logits; classifier-only
leaves every other weight (and BatchNorm statistic) bit-identical; new answers keep old logits.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sources import open_source
from tests.test_finetune import _images, make_folder_csv
from training.finetune import FinetuneConfig, _batches, finetune, loss_on, softmax_loss, targets_for

MODELS = ("lxmert", "kdvlp")
QUESTION = "what color is the shape?"


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from testkit.tiny_kdvlp import make_tiny_kdvlp
    from testkit.tiny_lxmert import make_tiny_lxmert

    root = tmp_path_factory.mktemp("tiny_models")
    return {"lxmert": make_tiny_lxmert(root / "lxmert"), "kdvlp": make_tiny_kdvlp(root / "kdvlp")}


def load(name, tiny_dirs):
    from adapters.registry import load_model

    return load_model(f"{name}:{tiny_dirs[name]}")


def quick(**kw):
    base = dict(epochs=2, batch_size=4, lr=0.02, seed=0, progress=False, schedule="constant", weight_decay=0.0)
    return FinetuneConfig(**{**base, **kw})


def head_names(adapter) -> set[str]:
    """Names (in the adapter's module) of the answer head's parameters."""
    if adapter.name == "lxmert":
        return {f"model.answer_head.{n}" for n, _ in adapter.model.answer_head.named_parameters()}
    return {f"model.classifier.{n}" for n, _ in adapter.model.classifier.named_parameters()}


def state(adapter) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, the LXMERT region extractor's included, copied."""
    out = {f"model.{k}": v.detach().clone() for k, v in adapter.model.state_dict().items()}
    if getattr(adapter, "extractor", None) is not None:
        out.update({f"extractor.{k}": v.detach().clone() for k, v in adapter.extractor.state_dict().items()})
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_two_full_steps_lower_the_loss(name, loss, tiny_dirs, tmp_path):
    examples = list(open_source(make_folder_csv(tmp_path)))
    adapter = load(name, tiny_dirs)
    before = loss_on(adapter, examples, loss)
    res = finetune(adapter, examples, config=quick(full=True, lr=2e-3, loss=loss), eval_examples=examples)
    after = loss_on(adapter, examples, loss)
    assert res.steps == 2 and after < before - 1e-3, (before, after)
    assert res.parameters_trained == sum(p.numel() for p in adapter.trainable_parameters(True))
    if name == "lxmert":  # the region extractor's CNN is trained too
        assert res.parameters_trained > sum(p.numel() for p in adapter.model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_classifier_only_leaves_every_other_weight_bit_identical(name, tiny_dirs, tmp_path):
    examples = list(open_source(make_folder_csv(tmp_path)))
    adapter = load(name, tiny_dirs)
    heads = head_names(adapter)
    before = state(adapter)
    res = finetune(adapter, examples, config=quick())
    after = state(adapter)
    assert res.parameters_trained == sum(p.numel() for p in adapter.trainable_parameters(False))
    assert heads and heads <= set(after)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and changed <= heads, sorted(changed - heads)  # BatchNorm statistics untouched too
    assert all(p.requires_grad for p in adapter.trainable_parameters(True))  # unfrozen afterwards


@pytest.mark.parametrize("name", MODELS)
def test_add_answers_keeps_old_logits_and_the_checkpoint_reloads(name, tiny_dirs, tmp_path):
    from adapters.registry import load_model

    _images(tmp_path)
    (tmp_path / "q.csv").write_text(f"image,question,answer\nr.png,{QUESTION},crimson\nb.png,{QUESTION},blue\n")
    examples = list(open_source(f"folder:{tmp_path}"))
    img = examples[0].image()
    adapter = load(name, tiny_dirs)
    old = adapter.answers()
    with torch.no_grad():
        old_logits = adapter.forward_logits(**adapter.encode_batch([img], [QUESTION]))
        adapter.add_answers(["crimson", "blue"])  # blue is known: only crimson is new
        new_logits = adapter.forward_logits(**adapter.encode_batch([img], [QUESTION]))
    assert adapter.answers() == old + ["crimson"] and new_logits.shape == (1, len(old) + 1)
    torch.testing.assert_close(new_logits[:, :len(old)], old_logits, rtol=0, atol=1e-6)

    adapter = load(name, tiny_dirs)
    out = tmp_path / "ckpt"
    res = finetune(adapter, examples, out=out, config=quick(epochs=1, full=True, lr=1e-3))
    assert res.answers_added == ("crimson",)
    loaded = load_model(f"{name}:{out}")
    assert type(loaded) is type(adapter) and loaded.answers() == old + ["crimson"]
    other = Image.fromarray((np.random.RandomState(3).rand(20, 28, 3) * 255).astype(np.uint8))
    inputs = adapter.encode_batch([img, other], [QUESTION, "is there a red circle?"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_logits(**inputs), adapter.forward_logits(**inputs),
                                   rtol=0, atol=1e-5)
    assert loaded.predict(other, QUESTION).answers == adapter.predict(other, QUESTION).answers


def test_lxmert_runs_its_cnn_once_per_distinct_image(tiny_dirs):
    adapter = load("lxmert", tiny_dirs)
    rng = np.random.RandomState(0)
    a, b = (Image.fromarray((rng.rand(30, 30, 3) * 255).astype(np.uint8)) for _ in range(2))
    a_copy = a.copy()  # same pixels, another object: its own row
    shared = adapter.encode_batch([a, b, a, a_copy], [QUESTION] * 4)
    assert shared["pixel_values"].shape[0] == 3 and shared["image_index"].tolist() == [0, 1, 0, 2]
    calls = []
    handle = adapter.extractor.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        with torch.no_grad():
            logits = adapter.forward_logits(**shared)
            one_by_one = torch.cat([adapter.forward_logits(**adapter.encode_batch([im], [QUESTION]))
                                    for im in (a, b, a, a_copy)])
    finally:
        handle.remove()
    assert calls[0] == 3
    torch.testing.assert_close(logits, one_by_one, rtol=1e-4, atol=1e-5)


def test_softmax_loss_and_image_batches():
    # uniform logits: cross-entropy log(n) whatever the (normalized) targets
    t = torch.tensor([[1.0, 0, 0, 0], [1 / 3, 1.0, 0, 0]])
    assert float(softmax_loss(torch.zeros(2, 4), t)) == pytest.approx(np.log(4), rel=1e-6)
    # a one-hot target is plain cross-entropy
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(torch.tensor([4, 0, 2]), 5).float()
    assert float(softmax_loss(logits, onehot)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([4, 0, 2]))), rel=1e-6)
    # image batches: every question of 2 images per batch, each question once per epoch
    groups = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9], [10]]
    cfg = FinetuneConfig(images_per_batch=2, progress=False)
    batches = _batches([None] * 11, cfg, torch.Generator().manual_seed(0), groups)
    assert len(batches) == 3 and sorted(i for b in batches for i in b) == list(range(11))
    for b in batches:
        assert all(set(g) <= set(b) or not set(g) & set(b) for g in groups)  # images are never split


def test_image_batches_in_a_run_hold_whole_images(tiny_dirs, tmp_path):
    examples = list(open_source(make_folder_csv(tmp_path)))  # 2 images, 2 questions each
    adapter = load("lxmert", tiny_dirs)
    seen = []
    encode = adapter.encode_batch

    def spy(images, questions):
        seen.append(len(images))
        return encode(images, questions)

    adapter.encode_batch = spy
    res = finetune(adapter, examples, config=quick(images_per_batch=1, loss="softmax", clip_grad_norm=1.0,
                                                   epochs=1), eval_examples=[])
    assert res.steps == 2 and seen == [2, 2]
    assert targets_for(examples, adapter.answers()).sum(1).tolist() == [1.0] * 4


def test_demo_trainers_are_thin_calls_to_finetune(tmp_path):
    """--limit smoke runs of demo/train_lxmert.py and demo/train_kdvlp.py: checkpoints the adapters load."""
    from adapters.kdvlp import KdvlpAdapter
    from adapters.lxmert import LxmertAdapter
    from demo.train_kdvlp import train as train_kdvlp
    from demo.train_lxmert import train as train_lxmert

    res = train_lxmert(tmp_path / "lx", epochs=1, images_per_batch=2, hidden=16, heads=2, limit=30, max_steps=2)
    assert res["steps"] == 2 and res["test_questions"] == 30 and 0.0 <= res["test_accuracy"] <= 1.0
    lx = LxmertAdapter.load(str(tmp_path / "lx"))
    assert lx.probability_rule == "softmax" and lx.extractor is not None and len(lx.answers()) == 13
    res = train_kdvlp(tmp_path / "kd", epochs=1, batch_size=8, hidden=16, layers=1, heads=2, channels=(4, 8, 8, 8),
                      limit=30, max_steps=2)
    assert res["steps"] == 2 and res["test_questions"] == 30 and set(res["history"][-1]["by_kind"]) <= {
        "yes/no", "shape", "color"}
    kd = KdvlpAdapter.load(str(tmp_path / "kd"))
    assert len(kd.answers()) == 13 and "demo.train_kdvlp" in kd.config.extra["trained_with"]
    for d in ("lx", "kd"):
        assert (tmp_path / d / "training_result.json").is_file()
