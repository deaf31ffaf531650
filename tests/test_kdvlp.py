"""KD-VLP-specific checks: the checkpoint format, captured attention, grid geometry, attribution hooks."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import AdapterError

Q = "what color is the shape?"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from testkit.tiny_kdvlp import make_tiny_kdvlp

    return make_tiny_kdvlp(tmp_path_factory.mktemp("kdvlp") / "ckpt")


@pytest.fixture(scope="module")
def adapter(ckpt):
    from adapters.kdvlp import KdvlpAdapter

    return KdvlpAdapter.load(str(ckpt))


@pytest.fixture
def image():
    return Image.fromarray((np.random.RandomState(3).rand(24, 40, 3) * 255).astype(np.uint8))


def test_checkpoint_is_config_json_plus_safetensors(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["model_type"] == "kdvlp" and cfg["grid"] == 32 // 8 and len(cfg["answers"]) == 6


def test_layout_and_grid_boxes(adapter, image):
    rec = adapter.run(image, Q)
    g = adapter.grid
    n_text = len(rec.tokens) - 1 - g * g
    assert rec.tokens[0] == "[CLS]" and rec.tokens[n_text - 1] == "[SEP]" and rec.tokens[n_text] == "[IMG]"
    assert rec.modality[n_text] == "special" and rec.modality[0] == "special"
    cells = rec.indices("image")
    assert len(cells) == g * g and cells[0] == n_text + 1
    rows, cols = rec.token_grid[cells].T
    np.testing.assert_array_equal(rows * g + cols, np.arange(g * g))  # row-major
    np.testing.assert_allclose(rec.token_boxes[cells], np.stack([cols / g, rows / g, (cols + 1) / g,
                                                                (rows + 1) / g], 1), atol=1e-6)
    assert rec.hidden["joint"].values.shape == (adapter.config.num_layers + 1, len(rec.tokens),
                                                adapter.config.hidden_size)
    assert math.isclose(sum(adapter.predict(image, Q, top_k=6).probabilities), 1.0, rel_tol=1e-5)  # softmax


def test_captured_attention_is_the_layers_softmax(adapter, image):
    """Recompute layer 0's attention by hand from the embeddings: softmax(QK^T / sqrt(d))."""
    _, _, inputs, _, _ = adapter._encode(image, Q)
    m = adapter.model
    with torch.no_grad():
        out = m(inputs["input_ids"], inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
        x = out.hidden_states[0]
        att = m.layers[0].attention
        b, n, d = x.shape
        q = att.query(x).view(b, n, att.heads, -1).transpose(1, 2)
        k = att.key(x).view(b, n, att.heads, -1).transpose(1, 2)
        by_hand = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // att.heads), -1)
    torch.testing.assert_close(out.attentions[0], by_hand)


def test_batch_padding_is_masked_and_changes_nothing(adapter, image):
    short, long = "what color?", "does the image contain a blue triangle?"
    batch = adapter.encode_batch([image, image], [short, long])
    with torch.no_grad():
        out = adapter.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], output_attentions=True)
        single = adapter.forward_logits(**adapter.encode_batch([image], [short]))
    pad = batch["attention_mask"][0] == 0
    assert pad.any()
    t = batch["input_ids"].shape[1]
    for a in out.attentions:  # no query puts mass on a padding key; rows still sum to 1
        assert float(a[0][..., :t][..., pad].abs().max()) == 0.0
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    torch.testing.assert_close(out.logits[0], single[0], atol=1e-5, rtol=1e-4)


def test_save_load_round_trip_is_exact(adapter, ckpt, tmp_path, image):
    from adapters.kdvlp import KdvlpAdapter
    from adapters.kdvlp_model import save_checkpoint

    again = KdvlpAdapter.load(str(save_checkpoint(adapter.model, adapter.tokenizer, tmp_path / "copy")))
    a, b = adapter.run(image, Q), again.run(image, Q)
    np.testing.assert_array_equal(a.attention["self"].values, b.attention["self"].values)
    assert a.prediction == b.prediction


def test_bad_checkpoints_are_clear_errors(ckpt, tmp_path):
    import shutil

    from adapters.kdvlp import KdvlpAdapter

    with pytest.raises(AdapterError, match="local directory"):
        KdvlpAdapter.load("someone/kdvlp-base")
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(AdapterError, match="no model.safetensors"):
        KdvlpAdapter.load(str(bad))
    shutil.rmtree(bad)
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 128}))
    with pytest.raises(AdapterError, match="does not match config.json|has shape"):
        KdvlpAdapter.load(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "layers": 3}))
    with pytest.raises(AdapterError, match="unknown fields"):
        KdvlpAdapter.load(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "grid": 5}))
    with pytest.raises(AdapterError, match="grid 5"):
        KdvlpAdapter.load(str(bad))


def test_attribution_hooks_shapes_and_occlusion(adapter, image):
    spec = adapter.attribution_spec(image, Q)
    g = adapter.grid
    layers = adapter.attribution_layers()
    captured = {}
    hooks = [mod.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o)) for k, mod in layers.items()]
    try:
        logits = adapter.forward_logits(**spec.inputs)
    finally:
        for h in hooks:
            h.remove()
    assert logits.shape == (1, len(adapter.answers()))
    assert captured["image"].shape[-2:] == (g, g)
    assert adapter.layer_scores("image", captured["image"], spec).shape == (len(spec.region_token_index),)
    assert adapter.layer_scores("text", captured["text"], spec).shape == (len(spec.word_token_index),)
    assert [spec.record_modality[i] for i in spec.region_token_index] == ["image"] * g * g
    # occluding every region gives the baseline image; occluding every word keeps [CLS] / [SEP]
    all_regions = adapter.occlude(spec.inputs, spec, region_mask=np.ones(g * g, bool))
    torch.testing.assert_close(all_regions["pixel_values"], spec.baselines["pixel_values"])
    no_words = adapter.occlude(spec.inputs, spec, word_mask=np.ones(len(spec.word_token_index), bool))
    torch.testing.assert_close(no_words["input_ids"], spec.baselines["input_ids"])
    # occluding one cell changes only that cell's pixels
    one = np.zeros(g * g, bool)
    one[g + 2] = True  # row 1, col 2
    pv = adapter.occlude(spec.inputs, spec, region_mask=one)["pixel_values"]
    diff = (pv != spec.inputs["pixel_values"]).any(1)[0]
    p = spec.extra["cell_pixels"]
    rows, cols = torch.nonzero(diff, as_tuple=True)
    assert rows.min() >= p and rows.max() < 2 * p and cols.min() >= 2 * p and cols.max() < 3 * p
    # gradient-weighted relevance needs attention maps inside the graph
    logits, maps, index = adapter.attention_probs(spec.inputs)
    maps["self"][-1].retain_grad()
    logits[0, 0].backward()
    assert maps["self"][-1].grad is not None and len(index["self"][0]) == len(spec.record_tokens)


def test_registered_and_named(ckpt):
    from adapters.registry import MODELS, adapter_class

    assert adapter_class("kdvlp").architecture == "single-stream"
    assert MODELS["kdvlp-easyvqa"][0] == "kdvlp"
