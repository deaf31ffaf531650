"""Stage 1 of the demo LLaVA (demo/pretrain_vision.py): each image's labels are what its questions'
answers name, and pretraining trains the vision tower alone, seeded, towards those labels."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from demo.pretrain_vision import IGNORE, image_labels, pretrain_vision_tower
from sources.base import Example

KIND = {"circle": "shape", "rectangle": "shape", "red": "color", "blue": "color", "yes": "yes/no", "no": "yes/no"}


def _kind(ex: Example) -> str:
    return KIND[ex.label]


def _png(shape: str, colour: str) -> bytes:
    im = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(im)
    (draw.ellipse if shape == "circle" else draw.rectangle)((12, 12, 52, 52), fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _ex(image: str, question: str, label: str, png: bytes = b"") -> Example:
    return Example(source_key=f"{image}/{question}", question=question, load_image_bytes=lambda: png, label=label,
                   answers={label: 1.0}, meta={"image_path": image})


def test_labels_are_what_each_images_questions_name():
    exs = [_ex("a", "what shape?", "circle"), _ex("a", "what color?", "red"), _ex("a", "is it red?", "yes"),
           _ex("b", "what color?", "blue"), _ex("b", "is there a circle?", "no"),
           _ex("c", "what shape?", "rectangle"), _ex("c", "is it blue?", "no")]
    images, classes, labels = image_labels(exs, _kind)
    assert [ex.meta["image_path"] for ex in images] == ["a", "b", "c"]  # one example per image, in order
    assert classes == {"shape": ["circle", "rectangle"], "color": ["blue", "red"]}
    # (shape, colour) per image; b has no shape question, c no colour question: no label of that kind
    assert labels.tolist() == [[0, 1], [IGNORE, 0], [1, IGNORE]]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from adapters.llava import LlavaAdapter
    from testkit.tiny_llava import make_tiny_llava

    return LlavaAdapter.load(str(make_tiny_llava(tmp_path_factory.mktemp("llava"))))


def _examples() -> list[Example]:
    exs = []
    for i, (shape, colour) in enumerate([("circle", "red"), ("rectangle", "blue"), ("circle", "blue"),
                                         ("rectangle", "red")]):
        png = _png(shape, colour)
        exs += [_ex(f"im{i}", "what shape?", shape, png), _ex(f"im{i}", "what color?", colour, png)]
    return exs


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_pretraining_trains_the_vision_tower_alone_seeded_towards_the_labels(adapter):
    before = _state(adapter.model)
    tower_names = {f"model.vision_tower.{k}" for k in adapter.model.model.vision_tower.state_dict()}
    summary = pretrain_vision_tower(adapter, _examples(), _kind, steps=80, batch_size=8, lr=3e-3, seed=1, log_every=0)
    after = _state(adapter.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= tower_names  # the projector and the language model are untouched
    assert summary["images"] == 4 and summary["final_loss"] < summary["first_loss"] / 5
    assert not adapter.model.model.vision_tower.training  # left in eval mode

    # the same seed from the same start gives the same weights
    adapter.model.load_state_dict(before)
    pretrain_vision_tower(adapter, _examples(), _kind, steps=80, batch_size=8, lr=3e-3, seed=1, log_every=0)
    for k, v in _state(adapter.model).items():
        np.testing.assert_array_equal(v.numpy(), after[k].numpy(), err_msg=k)
    with pytest.raises(ValueError, match="name both a shape and a colour"):
        pretrain_vision_tower(adapter, [ex for ex in _examples() if ex.label in ("red", "blue")], _kind, steps=1)
