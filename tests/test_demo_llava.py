"""The demo LLaVA trainer (demo/train_llava.py): going on from a checkpoint it wrote after its first
cycles runs the same steps as one call, and its per-kind evaluation answers each question once."""
from __future__ import annotations

import json

import numpy as np
import pytest

from demo.train_llava import evaluate_by_kind, train


def _weights(path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_going_on_from_a_checkpoint_is_one_call(tmp_path):
    kw = dict(epochs=1, limit=24, batch_size=8, images_per_batch=2, vision_steps=3)
    train(tmp_path / "first", polish=((1, 3e-4),), **kw)
    train(tmp_path / "went_on", polish=((1, 3e-4), (1, 1e-4)), start_from=tmp_path / "first", cycles_done=2, **kw)
    train(tmp_path / "one_call", polish=((1, 3e-4), (1, 1e-4)), **kw)
    went_on, one_call = _weights(tmp_path / "went_on"), _weights(tmp_path / "one_call")
    assert set(went_on) == set(one_call)
    for name in one_call:
        np.testing.assert_array_equal(went_on[name], one_call[name], err_msg=name)
    first = _weights(tmp_path / "first")
    assert any(not np.array_equal(first[name], one_call[name]) for name in one_call)  # the last cycle trained
    a = json.loads((tmp_path / "went_on" / "training_result.json").read_text())
    b = json.loads((tmp_path / "one_call" / "training_result.json").read_text())
    assert [h["epoch"] for h in a["history"]] == [h["epoch"] for h in b["history"]] == [1, 2, 3]
    assert a["history"] == b["history"] and a["test_accuracy"] == b["test_accuracy"]


def test_evaluate_by_kind_weights_the_kinds_by_their_questions():
    """Overall accuracy = the kinds' accuracies weighted by their question counts (hand-computed)."""

    class Fixed:
        """Answers "yes" to everything: right on the yes questions only."""

        architecture = "generative"

        def set_training(self, _):
            pass

        def generate_batch(self, images, questions):
            return ["yes"] * len(questions)

    from sources.base import Example

    def ex(i, label):
        return Example(source_key=f"k{i}", question="q", load_image_bytes=lambda: _PNG, label=label,
                       answers={label: 1.0})

    examples = [ex(0, "yes"), ex(1, "no"), ex(2, "yes"), ex(3, "circle"), ex(4, "red"), ex(5, "yes")]
    kind = {"yes": "yes/no", "no": "yes/no", "circle": "shape", "red": "color"}
    full, by_kind = evaluate_by_kind(Fixed(), examples, lambda e: kind[e.label])
    assert by_kind == {"color": 0.0, "shape": 0.0, "yes/no": 0.75}
    assert full["examples"] == 6 and full["accuracy"] == pytest.approx(3 / 6)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


_PNG = _png()
