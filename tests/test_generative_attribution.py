"""Attribution of generated answers (issue 21): targets, the five methods over a teacher-forced decoder,
hand-computed causal rollout / relevance, IG completeness, and every method on every generative adapter.

The target definitions are checked against transformers' own forward of prompt + answer (not the adapter's
split-sequence forward that computes them), so a wrong position, sequence or unit fails.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.base import AttributionSpec
from adapters.registry import ADAPTERS, adapter_class
from analysis.attribution import METHODS, attribute
from analysis.attribution.targets import GenerationTarget, generation_target, resolve_target, target_spec
from core.errors import InputError

QUESTION = "what color is the shape?"
GENERATIVE = sorted(n for n in ADAPTERS if adapter_class(n).architecture == "generative")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from testkit.tiny_llava import make_tiny_adapter

    adapter, _ = make_tiny_adapter(tmp_path_factory.mktemp("genattr_llava"))
    return adapter


@pytest.fixture(scope="module")
def square():
    """A square image: no pad-to-square, so every vision patch is a region (IG completeness sums them all)."""
    return Image.fromarray((np.random.RandomState(3).rand(64, 64, 3) * 255).astype(np.uint8))


def _hf_logits(adapter, spec, answer_ids) -> torch.Tensor:
    """transformers' own forward of prompt + ``answer_ids``: (T, vocabulary) logits."""
    P = spec.extra["prompt_length"]
    ids = torch.cat([spec.inputs["input_ids"][:, :P], torch.tensor([answer_ids])], 1)
    with torch.no_grad():
        return adapter.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                             pixel_values=spec.inputs["pixel_values"], use_cache=False).logits[0].float()


# ---- targets ---------------------------------------------------------------------------------------
def test_token_whole_and_contrast_targets_are_teacher_forced_log_probabilities(llava, square):
    spec, first = target_spec(llava, square, QUESTION)
    P, ids = spec.extra["prompt_length"], list(spec.extra["answer_ids"][0])
    logits = _hf_logits(llava, spec, ids)
    logp = torch.log_softmax(logits, -1)
    with torch.no_grad():
        scores = llava.forward_logits(**spec.inputs)
    assert scores.shape == (1, len(ids), 3)
    # token t given everything before it: the row of position P + t - 1
    per_token = [float(logp[P + t - 1, ids[t]]) for t in range(len(ids))]
    assert first.kind == "token" and first.token == 0
    assert float(first.score(scores)[0]) == pytest.approx(per_token[0], abs=1e-4)
    for t in range(len(ids)):
        tok = resolve_target(llava, spec, t)
        assert float(tok.score(scores)[0]) == pytest.approx(per_token[t], abs=1e-4)
        logit = generation_target(spec, t, unit="logit")
        assert float(logit.score(scores)[0]) == pytest.approx(float(logits[P + t - 1, ids[t]]), abs=1e-4)
        # the first generated token is the greedy one: it is the top token at its position
        assert float(scores[0, t, 2]) == float(int(logits[P + t - 1].argmax()) == ids[t])
    whole = resolve_target(llava, spec, "whole")
    assert float(whole.score(scores)[0]) == pytest.approx(sum(per_token), abs=1e-4)
    assert float(whole.probability(llava, scores)[0]) == pytest.approx(np.exp(sum(per_token)), rel=1e-3)
    # the generated answer's token probabilities are the greedy decoding's
    np.testing.assert_allclose(np.exp(per_token), spec.extra["generated_token_probabilities"], rtol=1e-3)

    cspec, contrast = target_spec(llava, square, QUESTION, "red rather than blue")
    with torch.no_grad():
        cscores = llava.forward_logits(**cspec.inputs)
    sums = []
    for word in ("red", "blue"):
        aid = llava.tokenizer(word, add_special_tokens=False)["input_ids"] + [llava.eos_ids[0]]
        lp = torch.log_softmax(_hf_logits(llava, cspec, aid), -1)
        sums.append(sum(float(lp[P + t - 1, aid[t]]) for t in range(len(aid))))
    assert contrast.kind == "contrast" and cspec.extra["answers"] == ("red", "blue")
    assert float(contrast.score(cscores)[0]) == pytest.approx(sums[0] - sums[1], abs=1e-4)
    _, red = target_spec(llava, square, QUESTION, "red")
    assert red.kind == "whole" and red.text == "red"


def test_generation_target_on_known_scores():
    """(1, S=3, 3) scores written out: [log-probability, logit, is top] of answer A (2 tokens) and B (1)."""
    scores = torch.tensor([[[-0.5, 2.0, 1.0], [-1.0, 1.0, 0.0], [-2.0, 0.5, 1.0]]])
    spec = AttributionSpec(record_tokens=("q", "a0", "a1"), record_modality=("text",) * 3, inputs={}, baselines={},
                           word_token_index=np.array([0]), word_is_special=np.array([False]),
                           region_boxes=np.zeros((0, 4)), region_token_index=np.zeros(0, np.int64), cls_token_index=0,
                           extra={"answers": ("yes", "no"), "answer_tokens": (("a0", "a1"), ("b0",)),
                                  "answer_lengths": (2, 1), "prompt_length": 1})
    t1 = generation_target(spec, 1)
    assert float(t1.score(scores)[0]) == -1.0 and t1.rows(spec) == ((0, 1, 1.0),)
    assert float(generation_target(spec, 0, unit="logit").score(scores)[0]) == 2.0
    assert float(t1.probability(None, scores)[0]) == pytest.approx(np.exp(-1.0))
    assert int(t1.predicted(scores)[0]) == 0 and int(generation_target(spec, 0).predicted(scores)[0]) == 1
    whole = generation_target(spec, "whole")
    assert float(whole.score(scores)[0]) == -1.5 and whole.rows(spec) == ((0, 0, 1.0), (0, 1, 1.0))
    c = generation_target(spec, "yes rather than no")
    assert float(c.score(scores)[0]) == pytest.approx(-1.5 - -2.0)
    assert float(c.probability_margin(None, scores)[0]) == pytest.approx(np.exp(-1.5) - np.exp(-2.0))
    assert c.rows(spec) == ((0, 0, 1.0), (0, 1, 1.0), (1, 0, -1.0))
    with pytest.raises(InputError, match="out of range"):
        generation_target(spec, 2)
    with pytest.raises(InputError, match="build the spec"):
        generation_target(spec, "maybe rather than no")
    with pytest.raises(InputError, match="logit"):
        generation_target(spec, "whole", unit="logit")


# ---- hand-computed causal rollout / relevance ---------------------------------------------------------
class FakeCausalAdapter:
    """A decoder of 5 positions: word w (0), region i (1), the prompt's last token s (2, special), answer
    tokens a0 (3), a1 (4); P = 3. ``attention_probs`` returns the given causal maps; the score of answer
    slot ``slot`` is sum over maps of sum(G ⊙ A), so ∂score/∂A = G."""

    architecture = "generative"

    def __init__(self, maps: list, grads: list, slot: int = 1):
        self.maps, self.grads, self.slot = maps, grads, slot
        n_seq = maps[0].shape[0]
        self.spec = AttributionSpec(
            record_tokens=("w", "i", "s", "a0", "a1"), record_modality=("text", "image", "special", "text", "text"),
            inputs={"x": torch.zeros(1, 1)}, baselines={"x": torch.zeros(1, 1)},
            word_token_index=np.array([0, 2]), word_is_special=np.array([False, True]),
            region_boxes=np.array([[0.0, 0.0, 1.0, 1.0]]), region_token_index=np.array([1]), cls_token_index=2,
            extra={"answers": ("yes", "no")[:n_seq], "answer_tokens": (("a0", "a1"), ("b0", "b1"))[:n_seq],
                   "answer_lengths": (2, 2)[:n_seq], "prompt_length": 3})

    def forward_logits(self, **inputs):
        return torch.zeros(1, 2 * self.maps[0].shape[0], 3)

    def attention_probs(self, inputs):
        y, out = torch.zeros((), dtype=torch.float64), []
        for a, g in zip(self.maps, self.grads):
            t = torch.tensor(a, dtype=torch.float64, requires_grad=True) * 1.0
            out.append(t)
            y = y + (t * torch.tensor(g, dtype=torch.float64)).sum()
        scores = torch.zeros(1, 2 * self.maps[0].shape[0], 3, dtype=torch.float64)
        scores[0, self.slot, 0] = y
        idx = np.arange(5)
        return scores, {"self": out}, {"self": (idx, idx)}


E = np.eye(5)
C1 = np.array([[1, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.5, 0, 0.5, 0, 0], [0, 0.5, 0, 0.5, 0], [0, 0, 0, 0, 1]])
C2 = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0.25, 0.25, 0.5, 0, 0], [0, 0, 0, 0, 1]])
G1 = np.zeros((5, 5))
G1[3] = [0, 2, 0, 1, 0]
G2 = np.zeros((5, 5))
G2[3] = [1, 0, 2, 0, 0]


def _one(*seqs):
    return np.stack([np.asarray(s, np.float64)[None] for s in seqs])  # (sequence, head=1, q, k)


def test_causal_rollout_reads_the_row_that_produced_the_token():
    # Â = 0.5 A + 0.5 I. Â1 rows: 2 = [.25, 0, .75, 0, 0], 3 = [0, .25, 0, .75, 0]; Â2 row 3 = [.125, .125, .25, .5, 0].
    # Token a1 is produced by position 3: R = Â2 Â1, row 3 = .125 Â1[0] + .125 Â1[1] + .25 Â1[2] + .5 Â1[3]
    #   = [.125 + .03125 + .0625, .09375 + .125, .1875, .375, 0] = [.21875, .21875, .1875, .375, 0].
    fake = FakeCausalAdapter([_one(C1), _one(C2)], [_one(G1), _one(G2)])
    r = attribute(fake, fake.spec, generation_target(fake.spec, 1), "rollout")
    np.testing.assert_allclose(r.region_scores, [0.21875])
    np.testing.assert_allclose(r.token_scores, [0.21875, 0.1875])
    # token a0 is produced by position 2, the prompt's last token: R row 2 = Â1[2] = [.25, 0, .75, 0, 0]
    r0 = attribute(fake, fake.spec, generation_target(fake.spec, 0), "rollout")
    np.testing.assert_allclose(r0.region_scores, [0.0])
    np.testing.assert_allclose(r0.token_scores, [0.25, 0.0])  # its self entry (.75) is left out
    # the whole answer sums both rows; row 2's token is an explained row, so its self entry is left out
    rw = attribute(fake, fake.spec, generation_target(fake.spec, "whole"), "rollout")
    np.testing.assert_allclose(rw.token_scores, [0.46875, 0.0])
    np.testing.assert_allclose(rw.region_scores, [0.21875])


def test_causal_relevance_matches_hand_computation():
    # Ā = (G ⊙ A)+: Ā1 row 3 = [0, 1, 0, .5, 0], Ā2 row 3 = [.25, 0, 1, 0, 0], other rows 0.
    # R1 = I + Ā1: row 3 = [0, 1, 0, 1.5, 0]. R2 = R1 + Ā2 R1: row 3 = R1[3] + .25 R1[0] + R1[2] = [.25, 1, 1, 1.5, 0].
    fake = FakeCausalAdapter([_one(C1), _one(C2)], [_one(G1), _one(G2)])
    r = attribute(fake, fake.spec, generation_target(fake.spec, 1), "relevance")
    np.testing.assert_allclose(r.region_scores, [1.0])
    np.testing.assert_allclose(r.token_scores, [0.25, 1.0])
    assert "1.5" in r.notes[0]  # the explained row's self relevance


def test_contrast_subtracts_the_other_answers_rows():
    # Sequence B: layer 1 as A's, layer 2 the identity, so R_B = Â1: rows 2 + 3 = [.25, .25, .75, .75, 0].
    # R_A rows 2 + 3 = [.25, 0, .75, 0, 0] + [.21875, .21875, .1875, .375, 0]. A - B = [.21875, -.03125, .1875, ...];
    # word s (2) is an explained row: left out.
    fake = FakeCausalAdapter([_one(C1, C1), _one(C2, E)], [_one(G1, G1), _one(G2, G2)])
    t = generation_target(fake.spec, "yes rather than no")
    r = attribute(fake, fake.spec, t, "rollout")
    np.testing.assert_allclose(r.region_scores, [-0.03125])
    np.testing.assert_allclose(r.token_scores, [0.21875, 0.0])
    raw = attribute(fake, fake.spec, t, "attention")  # last layer rows 2 + 3: A [.25, .25, 1.5, 0, 0], B [0, 0, 1, 1, 0]
    np.testing.assert_allclose(raw.region_scores, [0.25])
    np.testing.assert_allclose(raw.token_scores, [0.25, 0.0])


def test_raw_attention_is_the_producing_rows_last_layer():
    fake = FakeCausalAdapter([_one(C1), _one(C2)], [_one(G1), _one(G2)])
    r = attribute(fake, fake.spec, generation_target(fake.spec, 1), "attention")
    np.testing.assert_allclose(r.region_scores, [0.25])
    np.testing.assert_allclose(r.token_scores, [0.25, 0.5])


# ---- IG on the tiny LLaVA -----------------------------------------------------------------------------
@pytest.mark.parametrize("target", [None, "whole", "red rather than blue"])
def test_ig_completeness_on_the_tiny_llava(llava, square, target):
    """Sum of every attribution (patches + words) = f(input) - f(baseline), up to the convergence delta."""
    spec, t = target_spec(llava, square, QUESTION, target)
    assert (spec.extra["patch_region"] >= 0).all()  # a square image: every patch shows the source image
    r = attribute(llava, spec, t, "ig", n_steps=64)
    with torch.no_grad():
        fx = float(t.score(llava.forward_logits(**spec.inputs))[0])
        fb = float(t.score(llava.forward_logits(**spec.baselines))[0])
    total = float(r.region_scores.sum() + r.token_scores.sum())
    assert r.score_difference == pytest.approx(fx - fb, abs=1e-5)
    assert abs(fx - fb) > 1e-3  # the test can fail: the target moves between baseline and input
    assert total == pytest.approx(fx - fb, abs=0.02 * abs(fx - fb) + 1e-6)
    assert abs(r.delta) <= 0.02 * abs(fx - fb) + 1e-6
    assert np.count_nonzero(r.region_scores) == len(spec.region_boxes) and r.region_scores.std() > 0
    assert np.all(r.token_scores[spec.word_is_special] == 0)  # template tokens are the baseline's too
    assert r.params["internal_batch_size"] >= 1 and r.params["measured_mb_per_step"] > 0


def test_ig_internal_batching_changes_nothing_but_memory(llava, square):
    spec, t = target_spec(llava, square, QUESTION, "whole")
    whole = attribute(llava, spec, t, "ig", n_steps=8, internal_batch_size=None)
    chunked = attribute(llava, spec, t, "ig", n_steps=8, internal_batch_size=3)
    np.testing.assert_allclose(chunked.region_scores, whole.region_scores, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(chunked.token_scores, whole.token_scores, rtol=1e-4, atol=1e-7)


def test_full_strategy_patches_skip_the_cls_feature(tmp_path, square):
    """LLaVA "full": image token 0 is the vision tower's CLS feature (special, no region); patch k -> token k + 1."""
    from adapters.llava import LlavaAdapter
    from testkit.tiny_llava import make_tiny_llava

    adapter = LlavaAdapter.load(str(make_tiny_llava(tmp_path / "full", select_strategy="full")))
    adapter.max_new_tokens = 2
    spec, t = target_spec(adapter, square, QUESTION)
    ids = spec.inputs["input_ids"][0, :spec.extra["prompt_length"]].tolist()
    image_pos = [i for i, x in enumerate(ids) if x == adapter.image_token_id]
    assert spec.record_tokens[image_pos[0]] == "[IMG CLS]" and image_pos[0] not in spec.region_token_index
    np.testing.assert_array_equal(spec.region_token_index, image_pos[1:])
    np.testing.assert_array_equal(spec.extra["patch_region"], np.arange(len(image_pos) - 1))
    r = attribute(adapter, spec, t, "ig", n_steps=8)
    assert np.ptp(r.region_scores) > 0


def test_occlusion_of_a_region_is_its_patch_pixels(llava, square):
    spec, t = target_spec(llava, square, QUESTION)
    mask = np.zeros(len(spec.region_boxes), bool)
    mask[5] = True
    new = llava.occlude(spec.inputs, spec, region_mask=mask)
    diff = (new["pixel_values"] - spec.inputs["pixel_values"]).abs().sum(1)[0]  # (y, x)
    p = llava.patch_size
    gw = diff.shape[1] // p
    changed = {(int(y) // p, int(x) // p) for y, x in diff.nonzero().tolist()}
    assert changed == {divmod(5, gw)}
    words = np.zeros(len(spec.word_token_index), bool)
    words[:] = True
    ids = llava.occlude(spec.inputs, spec, word_mask=words)["input_ids"]
    text = spec.word_token_index[~spec.word_is_special]
    assert (ids[0, text] == llava.word_baseline_id()).all()
    assert torch.equal(ids[0, spec.extra["prompt_length"]:], spec.inputs["input_ids"][0, spec.extra["prompt_length"]:])


def test_word_baseline_is_not_a_zero_embedding(llava):
    """Llama-style embeddings keep the padding row at zero; RMSNorm makes IG's path from it a step, so the
    baseline word is then the unknown token; a non-zero padding row is used as is."""
    weight = llava.input_embeddings().weight
    assert float(weight[llava.pad_id].detach().abs().max()) == 0.0  # the tiny LLaVA's padding_idx row
    assert llava.word_baseline_id() == llava.tokenizer.unk_token_id
    assert float(weight[llava.word_baseline_id()].detach().abs().max()) > 0
    with torch.no_grad():
        saved = weight[llava.pad_id].clone()
        weight[llava.pad_id] = 0.5
        try:
            assert llava.word_baseline_id() == llava.pad_id
        finally:
            weight[llava.pad_id] = saved


# ---- every method on every generative adapter (the attribution part of the contract) ----------------
@pytest.fixture(scope="module", params=GENERATIVE)
def generative_adapter(request, tmp_path_factory):
    mod = importlib.import_module(f"testkit.tiny_{request.param}")
    return mod.make_tiny_adapter(tmp_path_factory.mktemp(f"genattr_{request.param}"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_explains_a_generated_token(generative_adapter, method):
    adapter, image = generative_adapter
    spec, t = target_spec(adapter, image, QUESTION)
    assert isinstance(t, GenerationTarget) and t.label.startswith("token 0")
    r = attribute(adapter, spec, t, method, **({"n_steps": 8} if method == "ig" else {}))
    assert r.region_scores.shape == (len(spec.region_boxes),) and len(r.region_boxes) > 0
    assert np.isfinite(r.region_scores).all() and np.isfinite(r.token_scores).all()
    assert np.ptp(r.region_scores) > 0, "image scores are constant"
    assert np.ptp(r.token_scores[~r.token_is_special]) > 0, "word scores are constant"
    assert 0 < r.probability <= 1
    assert r.probability == pytest.approx(spec.extra["generated_token_probabilities"][0], rel=1e-3)
    if method == "ig" and (spec.extra["patch_region"] >= 0).all():  # every patch a region: completeness
        total = float(r.region_scores.astype(np.float64).sum() + r.token_scores.astype(np.float64).sum())
        assert total == pytest.approx(r.score_difference + r.delta, abs=1e-4)


# ---- cli.py attribute on a generative model ------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from testkit.tiny_llava import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("genattr_cli") / "llava")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, square):
    p = tmp_path_factory.mktemp("genattr_img") / "square.png"
    square.save(p)
    return p


@pytest.mark.parametrize("flags, kind, token, text", [
    ([], "token", 0, None),
    (["--target-token", "1", "--score", "logit"], "token", 1, None),
    (["--target", "whole"], "whole", -1, None),
    (["--target", "red rather than blue"], "contrast", -1, "red"),
])
def test_cli_attribute_says_which_target_it_explained(llava_dir, image_file, tmp_path, flags, kind, token, text):
    from cli import main

    out = tmp_path / "a.npz"
    rc = main(["attribute", "--model", f"llava:{llava_dir}", "--image", str(image_file), "--question", QUESTION,
               "--method", "ig", "--steps", "8", *flags, "--out", str(out)])
    assert rc == 0
    with np.load(out, allow_pickle=False) as z:
        assert str(z["target_kind"]) == kind and int(z["target_token"]) == token
        assert str(z["target_unit"]) == ("logit" if "logit" in flags else "logprob")
        expected = {"whole": str(z["answer"]), "contrast": text}.get(kind)
        assert str(z["target_text"]) == expected if expected is not None else str(z["target_text"])  # a token's text
        if kind == "contrast":
            assert str(z["target_contrast"]) == "blue" and str(z["target"]) == "'red' rather than 'blue'"
        assert len(z["region_scores"]) == 64 and "color" in list(z["tokens"])
        total = z["region_scores"].astype(np.float64).sum() + z["token_scores"].astype(np.float64).sum()
        assert total - float(z["score_difference"]) == pytest.approx(float(z["delta"]), abs=1e-5)


def test_cli_generative_flags_errors(llava_dir, image_file, tmp_path, capsys):
    from cli import main

    base = ["attribute", "--image", str(image_file), "--question", QUESTION, "--method", "attention",
            "--out", str(tmp_path / "a.npz")]
    assert main([*base, "--model", f"llava:{llava_dir}", "--target-token", "1", "--target", "whole"]) != 0
    assert "exclude each other" in capsys.readouterr().err
    assert main([*base, "--model", f"llava:{llava_dir}", "--target-token", "99"]) != 0
    assert "out of range" in capsys.readouterr().err
    assert main([*base, "--model", f"llava:{llava_dir}", "--target", "whole", "--score", "logit"]) != 0
    assert "logit" in capsys.readouterr().err


def test_notebook_api_explains_a_generated_answer(llava, square):
    import vllens

    r = vllens.attribute(llava, square, QUESTION, "red rather than blue", method="attention")
    assert r.target == "'red' rather than 'blue'" and np.isfinite(r.region_scores).all()
    first = vllens.attribute(llava, square, QUESTION, method="rollout")
    assert first.target.startswith("token 0")


def test_an_answer_holding_the_image_token_is_a_word_after_the_prompt(generative_adapter):
    """Image features go at the prompt's image tokens only: an answer that writes the image token (only a
    degenerate model would) is scored with that token as a word, as generate would feed it back."""
    adapter, image = generative_adapter
    image_text = adapter.tokenizer.convert_ids_to_tokens(adapter.image_token_id)
    spec, target = target_spec(adapter, image, QUESTION, f"{image_text} red")
    P, ids = spec.extra["prompt_length"], list(spec.extra["answer_ids"][0])
    assert ids[0] == adapter.image_token_id and len(ids) >= 3
    with torch.no_grad():
        scores = adapter.forward_logits(**spec.inputs)
        first = torch.log_softmax(adapter.next_token_logits(**adapter.encode_batch([image], [QUESTION])).float(), -1)
    assert scores.shape == (1, len(ids), 3) and torch.isfinite(scores).all()
    # the first answer token depends on the prompt alone: the prompt's own next-token distribution
    assert float(scores[0, 0, 0]) == pytest.approx(float(first[0, adapter.image_token_id]), abs=1e-4)
    if adapter.name == "llava":  # the whole sequence by hand: image features in the prompt, the answer as words
        seq = torch.cat([spec.inputs["input_ids"][:, :P], torch.tensor([ids])], 1)
        in_prompt = (seq == adapter.image_token_id) & (torch.arange(seq.shape[1]) < P)
        with torch.no_grad():
            embeds = adapter._embed_with_images(seq, in_prompt, {"pixel_values": spec.inputs["pixel_values"]}, None)
            logits = adapter.model(inputs_embeds=embeds, attention_mask=torch.ones_like(seq), use_cache=False).logits
        logp = torch.log_softmax(logits[0].float(), -1)
        expected = [float(logp[P + t - 1, ids[t]]) for t in range(len(ids))]
        np.testing.assert_allclose(scores[0, :, 0].numpy(), expected, atol=1e-4)


def test_patches_of_padding_only_are_named_in_a_notice(llava, square):
    """LLaVA pads a non-square image to a square: patches of padding only are in no region, and the
    spec (so every result) says how many, since their attribution is in no map or total."""
    wide = Image.fromarray((np.random.RandomState(4).rand(32, 64, 3) * 255).astype(np.uint8))
    spec, target = target_spec(llava, wide, QUESTION)
    region = spec.extra["patch_region"]
    assert len(region) == 64 and int((region < 0).sum()) == 32  # 8 x 8 patches; 2 rows above, 2 below
    note = "32 of 64 vision patches cover only the padding"
    assert any(n.startswith(note) for n in spec.notices)
    r = attribute(llava, spec, target, "occlusion")
    assert any(n.startswith(note) for n in r.notes)
    sq, _ = target_spec(llava, square, QUESTION)
    assert (sq.extra["patch_region"] >= 0).all() and not any("cover only the padding" in n for n in sq.notices)
