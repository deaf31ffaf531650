"""LXMERT adapter: every attention kind captured by hooks, hooks removed, detector regions from .npz."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import AdapterError, InputError
from adapters.lxmert import KINDS, LxmertAdapter
from adapters.regions import RegionFeatures, load_regions_npz
from testkit.tiny_lxmert import TINY_FEAT_DIM, TINY_GRID, make_tiny_lxmert

QUESTION = "what color is the shape?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> LxmertAdapter:
    return LxmertAdapter.load(str(make_tiny_lxmert(tmp_path_factory.mktemp("lx"))))


@pytest.fixture(scope="module")
def tiny_no_extractor(tmp_path_factory) -> LxmertAdapter:
    return LxmertAdapter.load(str(make_tiny_lxmert(tmp_path_factory.mktemp("lxd"), extractor=False, seed=1)))


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.RandomState(3).rand(40, 56, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def record(tiny, image):
    return tiny.run(image, QUESTION)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _detector_regions(n: int = 5, dim: int = TINY_FEAT_DIM, w: int = 56, h: int = 40, seed: int = 0):
    rng = np.random.RandomState(seed)
    x0 = rng.uniform(0, w / 2, n)
    y0 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(4, w / 2, n), y0 + rng.uniform(4, h / 2, n)], 1).astype(np.float32)
    return rng.randn(n, dim).astype(np.float32), boxes


# ---- attention kinds ---------------------------------------------------------------------------
def test_every_kind_is_recorded_with_its_token_sets(tiny, record):
    c = tiny.model.config
    assert set(record.attention) == set(KINDS)
    text = np.flatnonzero(np.asarray(record.modality) != "image")  # [CLS] words [SEP] first
    regions = record.indices("image")
    assert len(regions) == TINY_GRID ** 2 and regions.min() == len(text)
    streams = {"lang": text, "vision": regions}
    expect = {"lang_self": ("lang", "lang", c.l_layers), "vision_self": ("vision", "vision", c.r_layers),
              "cross_l2v": ("lang", "vision", c.x_layers), "cross_v2l": ("vision", "lang", c.x_layers),
              "cross_lang_self": ("lang", "lang", c.x_layers), "cross_vision_self": ("vision", "vision", c.x_layers)}
    for kind, (q, k, layers) in expect.items():
        block = record.attention[kind]
        np.testing.assert_array_equal(block.query_index, streams[q], err_msg=kind)
        np.testing.assert_array_equal(block.key_index, streams[k], err_msg=kind)
        assert block.values.shape == (layers, c.num_attention_heads, len(streams[q]), len(streams[k])), kind
        np.testing.assert_allclose(block.values.astype(np.float32).sum(-1), 1.0, atol=1e-2, err_msg=kind)


def test_hooked_kinds_match_what_output_attentions_returns(tiny, image):
    """lang self, vision self and l2v cross also come from output_attentions: the hooks agree with it."""
    _, _, inputs, _, _, _ = tiny._encode(image, QUESTION, None)
    with torch.no_grad(), tiny._capture() as cap:
        out = tiny.model(**tiny._model_kwargs(inputs), output_attentions=True)
    for kind, theirs in (("lang_self", out.language_attentions), ("vision_self", out.vision_attentions),
                         ("cross_l2v", out.cross_encoder_attentions)):
        assert len(cap["attention"][kind]) == len(theirs)
        for ours, ref in zip(cap["attention"][kind], theirs):
            torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_v2l_is_captured_and_is_not_a_transpose_of_l2v(tiny, image, record):
    l2v = record.attention["cross_l2v"].values.astype(np.float32)  # (L, H, T, R)
    v2l = record.attention["cross_v2l"].values.astype(np.float32)  # (L, H, R, T)
    assert l2v.shape[2:] == v2l.shape[2:][::-1] and l2v.shape[2] != l2v.shape[3]
    assert np.abs(v2l - l2v.transpose(0, 1, 3, 2)).max() > 0.05  # not a transposed copy
    # v2l rows are softmax rows over words: each region's row sums to 1; transposed l2v rows do not
    np.testing.assert_allclose(v2l.sum(-1), 1.0, atol=1e-2)
    assert np.abs(l2v.transpose(0, 1, 3, 2).sum(-1) - 1.0).max() > 0.05

    # Closed form: recompute vision->language attention of cross layer 0 from its inputs and weights.
    x0 = tiny.model.lxmert.encoder.x_layers[0]
    seen = {}
    handle = x0.register_forward_pre_hook(lambda m, args: seen.update(lang=args[0], vision=args[2]))
    try:
        _, _, inputs, _, _, _ = tiny._encode(image, QUESTION, None)
        with torch.no_grad():
            tiny.forward_logits(**inputs)
    finally:
        handle.remove()
    att = x0.visual_attention.att
    h, d = att.num_attention_heads, att.attention_head_size
    with torch.no_grad():
        q = att.query(seen["vision"]).view(1, -1, h, d).transpose(1, 2)
        k = att.key(seen["lang"]).view(1, -1, h, d).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)[0].numpy()
    np.testing.assert_allclose(v2l[0], expected, atol=2e-3)


def test_hidden_states_of_both_streams_include_the_embeddings(tiny, image, record):
    c = tiny.model.config
    lang, vision = record.hidden["lang"], record.hidden["vision"]
    assert lang.values.shape[0] == 1 + c.l_layers + c.x_layers
    assert vision.values.shape[0] == 1 + c.r_layers + c.x_layers
    np.testing.assert_array_equal(vision.token_index, record.indices("image"))
    _, _, inputs, _, _, _ = tiny._encode(image, QUESTION, None)
    with torch.no_grad():
        emb = tiny.model.lxmert.embeddings(inputs["input_ids"], inputs["token_type_ids"])[0].numpy()
        vis = tiny.model.lxmert.encoder.visn_fc(tiny.extractor(inputs["pixel_values"]), inputs["visual_pos"])[0]
    np.testing.assert_allclose(lang.values[0].astype(np.float32), emb, atol=1e-2)
    np.testing.assert_allclose(vision.values[0].astype(np.float32), vis.numpy(), atol=1e-2)
    assert len(record.meta["hidden_layers"]["lang"]) == lang.values.shape[0]


def test_grid_regions_have_cell_boxes_and_grid_coordinates(record):
    img = record.indices("image")
    g = TINY_GRID
    rc = record.token_grid[img]
    np.testing.assert_array_equal(rc, np.stack(np.divmod(np.arange(g * g), g), 1))
    np.testing.assert_allclose(record.token_boxes[img][:, :2], rc[:, ::-1] / g, atol=1e-6)
    np.testing.assert_allclose(record.token_boxes[img][:, 2:], (rc[:, ::-1] + 1) / g, atol=1e-6)
    assert record.tokens[0] == "[CLS]" and record.modality[0] == "special"
    assert record.tokens[img[0]] == "cell 0,0"


# ---- hooks -------------------------------------------------------------------------------------
def test_hooks_are_removed_after_each_run(tiny, image, record):
    before = _hook_count(tiny.model)
    again = tiny.run(image, QUESTION)
    assert _hook_count(tiny.model) == before
    for kind in record.attention:
        np.testing.assert_array_equal(again.attention[kind].values, record.attention[kind].values)
    # a plain forward after run() returns only what it asked for (no attention leaks into outputs)
    _, _, inputs, _, _, _ = tiny._encode(image, QUESTION, None)
    with torch.no_grad():
        out = tiny.model(**tiny._model_kwargs(inputs))
    assert out.cross_encoder_attentions is None and out.language_attentions is None


def test_hooks_are_removed_when_the_forward_fails(tiny, image):
    before = _hook_count(tiny.model)

    def boom(module, args):
        raise RuntimeError("boom")

    handle = tiny.model.lxmert.encoder.x_layers[-1].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tiny.run(image, QUESTION)
    finally:
        handle.remove()
    assert _hook_count(tiny.model) == before


# ---- detector regions --------------------------------------------------------------------------
def test_npz_regions_run_and_boxes_are_normalized(tiny_no_extractor, image):
    feats, boxes = _detector_regions()
    buf = io.BytesIO()
    np.savez(buf, features=feats, boxes=boxes)
    rec = tiny_no_extractor.run_npz(image, QUESTION, buf.getvalue())
    img = rec.indices("image")
    assert len(img) == 5 and rec.tokens[img[0]] == "region 0"
    np.testing.assert_allclose(rec.token_boxes[img], boxes / np.array([56, 40, 56, 40]), atol=1e-6)
    assert (rec.token_grid[img] == -1).all()
    assert rec.meta["regions"] == "detector"
    assert rec.attention["cross_v2l"].values.shape[2:] == (5, len(rec.indices("text")) + 2)
    same = tiny_no_extractor.run_regions(image, QUESTION, feats, boxes)
    np.testing.assert_array_equal(same.attention["cross_v2l"].values, rec.attention["cross_v2l"].values)
    # different features give a different answer distribution: the features are really read
    other = tiny_no_extractor.run_regions(image, QUESTION, feats * -3, boxes)
    assert other.prediction.probabilities != rec.prediction.probabilities


def test_npz_image_size_key_rescales_boxes(image):
    feats, boxes = _detector_regions()
    buf = io.BytesIO()
    np.savez(buf, features=feats, boxes=boxes * 2, image_size=np.array([112, 80]))
    regions = load_regions_npz(buf.getvalue(), image.size)
    np.testing.assert_allclose(regions.boxes, boxes / np.array([56, 40, 56, 40]), atol=1e-6)


@pytest.mark.parametrize("arrays, message", [
    ({"features": np.zeros((3, TINY_FEAT_DIM))}, "lacks boxes"),
    ({"features": np.zeros((3, TINY_FEAT_DIM)), "boxes": np.zeros((2, 4))}, r"boxes must be \(3, 4\)"),
    ({"features": np.zeros((1, TINY_FEAT_DIM)), "boxes": np.array([[0, 0, 500, 10]])}, "outside the image"),
    ({"features": np.zeros((1, TINY_FEAT_DIM)), "boxes": np.array([[10, 10, 5, 20]])}, "x1 > x0"),
    ({"features": np.full((1, TINY_FEAT_DIM), np.nan), "boxes": np.array([[0, 0, 5, 5]])}, "finite"),
])
def test_bad_npz_is_a_clear_input_error(arrays, message, image):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(InputError, match=message):
        load_regions_npz(buf.getvalue(), image.size)


def test_npz_with_pickled_objects_is_refused_without_unpickling(image):
    buf = io.BytesIO()
    np.savez(buf, features=np.array([{"a": 1}], dtype=object), boxes=np.zeros((1, 4)))
    with pytest.raises(InputError, match="cannot read"):
        load_regions_npz(buf.getvalue(), image.size)
    with pytest.raises(InputError, match="cannot read"):
        load_regions_npz(b"not an npz", image.size)


def test_wrong_feature_dimension_is_a_clear_input_error(tiny_no_extractor, image):
    feats, boxes = _detector_regions(dim=7)
    with pytest.raises(InputError, match="7 dims but this model reads 24"):
        tiny_no_extractor.run_regions(image, QUESTION, feats, boxes)


def test_plain_image_without_extractor_is_a_clear_input_error(tiny_no_extractor, image):
    with pytest.raises(InputError, match="needs detector region features: pass an .npz"):
        tiny_no_extractor.run(image, QUESTION)
    with pytest.raises(InputError, match="needs detector region features"):
        tiny_no_extractor.predict(image, QUESTION)


# ---- attribution contract ----------------------------------------------------------------------
def test_attention_probs_are_in_the_graph_for_every_kind(tiny, image, record):
    spec = tiny.attribution_spec(image, QUESTION)
    logits, maps, index = tiny.attention_probs(spec.inputs)
    assert set(maps) == set(KINDS)
    for kind, layers in maps.items():
        for t in layers:
            t.retain_grad()
        qi, ki = index[kind]
        np.testing.assert_array_equal(qi, record.attention[kind].query_index)
        np.testing.assert_array_equal(ki, record.attention[kind].key_index)
        np.testing.assert_allclose(torch.stack([t[0] for t in layers]).detach().numpy(),
                                   record.attention[kind].values.astype(np.float32), atol=2e-3)
    logits[0, logits[0].argmax()].backward()
    for kind, layers in maps.items():
        # The answer head reads only the language [CLS]: the vision side of the last cross layer
        # cannot reach the logits, so those maps get no gradient (documented in attention_probs).
        dead = kind in ("cross_v2l", "cross_vision_self")
        assert all(t.grad is not None for t in (layers[:-1] if dead else layers)), kind
        assert (layers[-1].grad is None) == dead, kind
    # the last language self map before the pooled [CLS] must carry gradient
    assert maps["cross_lang_self"][-1].grad.abs().sum() > 0
    assert maps["cross_v2l"][0].grad.abs().sum() > 0
    assert _hook_count(tiny.model) == 0


def test_attribution_spec_layers_scores_and_occlusion(tiny, image):
    spec = tiny.attribution_spec(image, QUESTION)
    n_regions = TINY_GRID ** 2
    assert len(spec.region_token_index) == n_regions and spec.region_boxes.shape == (n_regions, 4)
    assert spec.record_modality[spec.region_token_index[0]] == "image"
    with torch.no_grad():
        logits = tiny.forward_logits(**spec.inputs)
    assert logits.shape == (1, len(tiny.answers()))
    pred = tiny.predict(image, QUESTION, top_k=1)
    assert tiny.answers()[int(logits[0].argmax())] == pred.top

    seen = {}
    layers = tiny.attribution_layers()
    hs = [layers[n].register_forward_hook(lambda m, a, o, n=n: seen.update({n: o})) for n in ("text", "image")]
    try:
        with torch.no_grad():
            tiny.forward_logits(**spec.inputs)
    finally:
        for h in hs:
            h.remove()
    assert tiny.layer_scores("text", seen["text"], spec).shape == (len(spec.word_token_index),)
    assert tiny.layer_scores("image", seen["image"], spec).shape == (n_regions,)

    word_mask = ~spec.word_is_special
    region_mask = np.zeros(n_regions, bool)
    region_mask[0] = True  # cell (0, 0): the top-left block of the extractor's input
    occ = tiny.occlude(spec.inputs, spec, region_mask=region_mask, word_mask=word_mask)
    ids = occ["input_ids"][0]
    assert (ids[torch.from_numpy(word_mask)] == tiny.tokenizer.pad_token_id).all()
    assert (ids[torch.from_numpy(spec.word_is_special)] == spec.inputs["input_ids"][0][
        torch.from_numpy(spec.word_is_special)]).all()
    s = tiny.extractor.image_size
    cell = s // TINY_GRID
    changed = (occ["pixel_values"] != spec.inputs["pixel_values"])[0].any(0)
    assert changed[:cell, :cell].all() and not changed[cell + 1:, :].any() and not changed[:, cell + 1:].any()


def test_captum_layer_integrated_gradients_completeness(tmp_path, image):
    from captum.attr import LayerIntegratedGradients

    tiny = LxmertAdapter.load(str(make_tiny_lxmert(tmp_path / "ig")))  # fresh: no state from other tests

    spec = tiny.attribution_spec(image, QUESTION)
    names = list(spec.inputs)
    target = int(tiny.forward_logits(**spec.inputs)[0].argmax())

    def f(*args):
        return tiny.forward_logits(**dict(zip(names, args)))

    layers = tiny.attribution_layers()
    lig = LayerIntegratedGradients(f, [layers["text"], layers["image"]])
    attrs, delta = lig.attribute(tuple(spec.inputs[n] for n in names), tuple(spec.baselines[n] for n in names),
                                 target=target, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        gap = float(f(*(spec.inputs[n] for n in names))[0, target] - f(*(spec.baselines[n] for n in names))[0, target])
    total = float(sum(a.sum() for a in attrs))
    assert abs(total - gap) < 0.05 * max(1.0, abs(gap)) and abs(float(delta)) < 0.05 * max(1.0, abs(gap))


def test_encode_batch_pads_and_matches_single_runs(tiny, image, tiny_no_extractor):
    other = Image.fromarray((np.random.RandomState(9).rand(30, 30, 3) * 255).astype(np.uint8))
    qs = [QUESTION, "is there a red circle in the image?"]
    inputs = tiny.encode_batch([image, other], qs)
    assert inputs["input_ids"].shape[0] == 2 and inputs["pixel_values"].shape[0] == 2
    with torch.no_grad():
        batch = tiny.forward_logits(**inputs)
        for i, (im, q) in enumerate(zip([image, other], qs)):
            single = tiny.forward_logits(**tiny.attribution_spec(im, q).inputs)
            torch.testing.assert_close(batch[i], single[0], atol=1e-4, rtol=1e-4)
    # detector regions of different counts are padded with a visual attention mask
    r1 = RegionFeatures.from_pixel_boxes(*_detector_regions(5), (56, 40))
    r2 = RegionFeatures.from_pixel_boxes(*_detector_regions(3, seed=1), (56, 40))
    inp = tiny_no_extractor.encode_batch([image, image], qs, regions=[r1, r2])
    assert inp["visual_feats"].shape == (2, 5, TINY_FEAT_DIM)
    np.testing.assert_array_equal(inp["visual_attention_mask"].numpy(), [[1] * 5, [1, 1, 1, 0, 0]])
    with torch.no_grad():
        padded = tiny_no_extractor.forward_logits(**inp)[1]
        alone = tiny_no_extractor.forward_logits(**tiny_no_extractor.encode_batch([image], qs[1:], regions=[r2]))[0]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="needs detector region features"):
        tiny_no_extractor.encode_batch([image], qs[:1])


# ---- loading -----------------------------------------------------------------------------------
def test_load_errors_are_clear(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        LxmertAdapter.load(str(tmp_path / "nope" / "model"))
    with pytest.raises(AdapterError, match="offline|cannot load"):
        LxmertAdapter.load("unc-nlp/not-a-real-lxmert")


def test_save_and_reload_round_trip(tiny, image, record, tmp_path):
    tiny.save_pretrained(tmp_path / "copy")
    again = LxmertAdapter.load(str(tmp_path / "copy"))
    rec = again.run(image, QUESTION)
    for kind in record.attention:
        np.testing.assert_array_equal(rec.attention[kind].values, record.attention[kind].values)


def _with_probability_rule(path, rule: str):
    import json

    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(cfg, answer_probability=rule)))
    return path


def test_probability_rule_comes_from_the_checkpoint(tmp_path, image):
    """A checkpoint trained with cross-entropy says answer_probability: softmax; the default is sigmoid."""
    soft = LxmertAdapter.load(str(_with_probability_rule(make_tiny_lxmert(tmp_path / "soft"), "softmax")))
    assert soft.probability_rule == "softmax" and type(soft).probability_rule == "sigmoid"
    pred = soft.predict(image, QUESTION, top_k=len(soft.answers()))
    assert math.isclose(sum(pred.probabilities), 1.0, rel_tol=1e-5)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    np.testing.assert_allclose(soft.answer_probabilities(logits).numpy(), [[0.25, 0.75]], rtol=1e-6)
    sig = LxmertAdapter.load(str(make_tiny_lxmert(tmp_path / "sig")))
    np.testing.assert_allclose(sig.answer_probabilities(logits).numpy(), [[0.5, 0.75]], rtol=1e-6)
    with pytest.raises(AdapterError, match="answer_probability"):
        LxmertAdapter.load(str(_with_probability_rule(make_tiny_lxmert(tmp_path / "bad"), "tanh")))


def test_run_batch_with_detector_regions_of_different_counts(tiny_no_extractor, image):
    """Detector regions padded to the most regions with a mask: each Record keeps its own regions and
    equals its batch-of-one Record up to float16 rounding."""
    sets = [RegionFeatures.from_pixel_boxes(*_detector_regions(n=n, seed=n), image.size) for n in (5, 3)]
    questions = [QUESTION, "is there a red circle or a blue triangle in it?"]
    batch = tiny_no_extractor.run_batch([image, image], questions, regions=sets)
    for rec, q, regions in zip(batch, questions, sets):
        one = tiny_no_extractor.run(image, q, regions=regions)
        assert rec.tokens == one.tokens and len(rec.indices("image")) == regions.n_regions
        np.testing.assert_array_equal(rec.token_boxes, one.token_boxes)
        for kind, block in one.attention.items():
            assert rec.attention[kind].values.shape == block.values.shape, kind
            np.testing.assert_allclose(rec.attention[kind].values.astype(np.float32),
                                       block.values.astype(np.float32), atol=2e-3, err_msg=kind)
        for stream, block in one.hidden.items():
            np.testing.assert_allclose(rec.hidden[stream].values.astype(np.float32),
                                       block.values.astype(np.float32), rtol=5e-3, atol=5e-3, err_msg=stream)
        np.testing.assert_allclose(rec.prediction.probabilities, one.prediction.probabilities, atol=1e-4)
    with pytest.raises(InputError, match="one region set per image"):
        tiny_no_extractor.run_batch([image, image], questions, regions=sets[:1])
