"""The contract every adapter in the registry passes (tiny random models, no hub).

Each adapter NAME provides ``testkit/tiny_NAME.py`` with ``make_tiny_adapter(tmp_path)`` returning
(adapter, image); this suite is parametrized over the registry, so a new adapter is tested as
soon as it registers.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from adapters.registry import ADAPTERS
from store.schema import Record

QUESTION = "what color is the shape?"


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def adapter_and_image(request, tmp_path_factory):
    mod = importlib.import_module(f"testkit.tiny_{request.param}")
    return mod.make_tiny_adapter(tmp_path_factory.mktemp(f"tiny_{request.param}"))


@pytest.fixture(scope="module")
def record(adapter_and_image) -> Record:
    adapter, image = adapter_and_image
    return adapter.run(image, QUESTION, label="red")


def test_record_shapes_and_coordinates(adapter_and_image, record):
    adapter, _ = adapter_and_image
    n = record.n_tokens
    assert len(record.modality) == n and record.token_boxes.shape == (n, 4)
    assert set(record.modality) <= {"text", "image", "special"}
    assert (np.asarray(record.modality) == "text").any() and (np.asarray(record.modality) == "image").any()
    for kind, block in record.attention.items():
        L, H, Q, K = block.values.shape
        assert L >= 1 and H >= 1 and Q == len(block.query_index) and K == len(block.key_index)
        assert block.values.dtype == np.float16
    for stream, block in record.hidden.items():
        assert block.values.shape[1] == len(block.token_index)
    assert record.meta["adapter"] == adapter.name


def test_every_attention_row_sums_to_one(record):
    for kind, block in record.attention.items():
        sums = block.values.astype(np.float32).sum(-1)
        np.testing.assert_allclose(sums, 1.0, atol=1e-2, err_msg=f"kind {kind}")


def test_image_token_geometry_inside_image(record):
    img = record.indices("image")
    boxes = record.token_boxes[img]
    assert not np.isnan(boxes).any()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # the question's text tokens carry character spans inside it (generated answer tokens are not in it)
    for i in record.indices("text"):
        s, e = record.token_spans[i]
        if record.role[i] == "prompt":
            assert 0 <= s < e <= len(record.question)
        else:
            assert (s, e) == (-1, -1)


def test_same_input_twice_gives_identical_record(adapter_and_image, record):
    adapter, image = adapter_and_image
    again = adapter.run(image, QUESTION, label="red")
    assert again.example_id == record.example_id
    assert again.tokens == record.tokens
    for kind in record.attention:
        np.testing.assert_array_equal(again.attention[kind].values, record.attention[kind].values)
    for stream in record.hidden:
        np.testing.assert_array_equal(again.hidden[stream].values, record.hidden[stream].values)


def test_prediction_top_k_sorted(adapter_and_image, record):
    adapter, image = adapter_and_image
    pred = adapter.predict(image, QUESTION, top_k=3)
    if adapter.architecture == "generative":  # one answer: the generated text, the same as run's
        assert pred.answers == record.prediction.answers and len(pred.token_probabilities) >= 1
        assert pred.probabilities[0] == pytest.approx(float(np.prod(pred.token_probabilities)), rel=1e-6)
        return
    assert len(pred.answers) == 3 and set(pred.answers) <= set(adapter.answers())
    assert list(pred.probabilities) == sorted(pred.probabilities, reverse=True)


def test_generated_answer_tokens_follow_the_prompt(adapter_and_image, record):
    adapter, _ = adapter_and_image
    answer = record.answer_indices()
    if adapter.architecture != "generative":
        assert len(answer) == 0 and not record.generative and not record.prediction.token_probabilities
        return
    n = record.n_tokens
    assert len(answer) >= 1 and list(answer) == list(range(n - len(answer), n))  # the sequence's tail
    assert len(record.prediction.token_probabilities) == len(answer)
    assert all(record.modality[i] in ("text", "special") for i in answer)
    # every text and answer token's attention row is recorded, over every key
    block = record.attention["self"]
    assert set(answer) | set(record.indices("text")) <= set(block.query_index.tolist())
    assert len(block.key_index) == n


def test_causal_rows_see_only_earlier_keys(adapter_and_image, record):
    adapter, _ = adapter_and_image
    if adapter.architecture != "generative":
        pytest.skip("bidirectional attention")
    block = record.attention["self"]
    v = block.values.astype(np.float32)
    later = block.key_index[None, :] > block.query_index[:, None]  # (query, key)
    assert later.any() and np.abs(v[:, :, later]).max() == 0.0
    np.testing.assert_allclose(v.sum(-1), 1.0, atol=1e-2)


def test_overlong_question_is_truncated_with_notice(adapter_and_image):
    adapter, image = adapter_and_image
    rec = adapter.run(image, " ".join(["what color is the shape"] * 40))
    assert any("truncated" in n for n in rec.notices)
    assert len(rec.indices("text")) <= adapter.max_text_tokens


def test_empty_question_is_a_clear_input_error(adapter_and_image):
    from core.errors import InputError

    adapter, image = adapter_and_image
    with pytest.raises(InputError, match="empty"):
        adapter.run(image, "   ")


def test_prediction_probabilities_follow_the_adapters_rule(adapter_and_image):
    """predict() and run() report answer_probabilities(forward_logits(...)): the rule the model was
    trained with, the same one attribution uses."""
    import torch

    from adapters.base import PROBABILITY_RULES

    adapter, image = adapter_and_image
    assert adapter.probability_rule in PROBABILITY_RULES
    assert adapter.provenance()["probability_rule"] == adapter.probability_rule
    if adapter.architecture == "generative":  # the first answer token, from the prompt's next-token logits
        with torch.no_grad():
            logits = adapter.forward_logits(**adapter.encode_batch([image], [QUESTION]))
            probs = adapter.answer_probabilities(logits)
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
        for pred in (adapter.predict(image, QUESTION), adapter.run(image, QUESTION).prediction):
            assert pred.token_probabilities[0] == pytest.approx(float(probs[0].max()), abs=1e-5)
        return
    spec = adapter.attribution_spec(image, QUESTION)
    with torch.no_grad():
        logits = adapter.forward_logits(**spec.inputs)
        probs = adapter.answer_probabilities(logits)
    assert probs.shape == logits.shape
    answers = adapter.answers()
    for pred in (adapter.predict(image, QUESTION, top_k=3), adapter.run(image, QUESTION, top_k=3).prediction):
        top = answers.index(pred.answers[0])
        assert top == int(probs[0].argmax())
        assert pred.probabilities[0] == pytest.approx(float(probs[0, top]), abs=1e-6)
    if adapter.probability_rule == "softmax":
        assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
        expected = torch.softmax(logits.double(), -1)
    else:
        expected = torch.sigmoid(logits.double())
    np.testing.assert_allclose(probs.double().numpy(), expected.numpy(), atol=1e-6)


def test_answer_probabilities_are_differentiable(adapter_and_image):
    import torch

    adapter, _ = adapter_and_image
    logits = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    adapter.answer_probabilities(logits)[0, 2].backward()
    assert logits.grad is not None and float(logits.grad[0, 2]) > 0


def _other_images():
    from PIL import Image

    rng = np.random.RandomState(7)
    # other sizes and aspect ratios than the fixture's 56 x 40: ViLT pads these to one pixel grid
    return [Image.fromarray((rng.rand(h, w, 3) * 255).astype(np.uint8)) for h, w in ((56, 40), (30, 30))]


def test_run_batch_is_each_examples_run(adapter_and_image):
    """One padded forward for three examples of different question lengths (and image sizes): each
    Record is cut back to its own tokens and equals the batch-of-one Record up to float16 rounding."""
    adapter, image = adapter_and_image
    images = [image, *_other_images()]
    questions = [QUESTION, "is there a red circle in the image or a blue triangle?", "what?"]
    labels, keys = ["red", None, "no"], ["a", "b", "c"]
    batch = adapter.run_batch(images, questions, top_k=3, labels=labels, source_keys=keys)
    assert len(batch) == 3
    assert len({r.n_tokens for r in batch}) > 1  # ragged: padding had to be cut away
    for rec, im, q, label, key in zip(batch, images, questions, labels, keys):
        one = adapter.run(im, q, top_k=3, label=label, source_key=key)
        assert (rec.example_id, rec.tokens, rec.modality, rec.label, rec.source_key, rec.notices) == \
            (one.example_id, one.tokens, one.modality, one.label, one.source_key, one.notices)
        for name in ("token_boxes", "token_grid", "token_spans", "image"):
            np.testing.assert_array_equal(getattr(rec, name), getattr(one, name), err_msg=name)
        assert dict(rec.meta) == dict(one.meta)
        assert set(rec.attention) == set(one.attention) and set(rec.hidden) == set(one.hidden)
        for kind, block in one.attention.items():
            np.testing.assert_array_equal(rec.attention[kind].query_index, block.query_index)
            np.testing.assert_array_equal(rec.attention[kind].key_index, block.key_index)
            np.testing.assert_allclose(rec.attention[kind].values.astype(np.float32),
                                       block.values.astype(np.float32), atol=2e-3, err_msg=kind)
        for stream, block in one.hidden.items():
            np.testing.assert_array_equal(rec.hidden[stream].token_index, block.token_index)
            np.testing.assert_allclose(rec.hidden[stream].values.astype(np.float32),
                                       block.values.astype(np.float32), rtol=5e-3, atol=5e-3, err_msg=stream)
        assert rec.prediction.answers == one.prediction.answers
        np.testing.assert_allclose(rec.prediction.probabilities, one.prediction.probabilities, atol=1e-4)


def test_run_batch_rejects_a_ragged_batch(adapter_and_image):
    from core.errors import InputError

    adapter, image = adapter_and_image
    with pytest.raises(InputError, match="as many questions"):
        adapter.run_batch([image, image], [QUESTION])


def test_provenance_names_the_checkpoint_directory(adapter_and_image):
    adapter, _ = adapter_and_image
    info = adapter.provenance()["checkpoint"]
    assert info["kind"] == "local" and Path(info["path"]).is_dir() and Path(info["path"]).is_absolute()
