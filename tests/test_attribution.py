"""Attribution methods: closed-form toy cases, IG completeness, targets, occlusion, and invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import AdapterError, InputError
from adapters.base import AttributionSpec
from analysis.attribution import (METHODS, AttentionStep, Target, attention_steps, attribute, choose_internal_batch,
                                  estimate_seconds, relevance_matrix, resolve_target, rollout_matrix)
from analysis.attribution.occlusion import mean_drop, median_fill, region_windows, word_windows
from tests.attribution_models import make_signal_vilt, shape_image

QUESTION = "what color is the shape?"


# ---- a fake adapter whose attention maps and their gradients are chosen by hand -------------------
class FakeAttentionAdapter:
    """attention_probs returns the given maps; logit 0 = sum over maps of sum(G ⊙ A), so ∂y/∂A = G
    (a map whose G is None is left out of the logit, so its .grad stays None after backward)."""

    def __init__(self, maps: dict, grads: dict, index: dict, n_tokens: int, words, regions, cls: int = 0):
        self.maps, self.grads, self.index = maps, grads, index
        self.n = n_tokens
        self.spec = AttributionSpec(
            record_tokens=tuple(f"t{i}" for i in range(n_tokens)), record_modality=("text",) * n_tokens,
            inputs={"x": torch.zeros(1, 1)}, baselines={"x": torch.zeros(1, 1)},
            word_token_index=np.asarray(words), word_is_special=np.zeros(len(words), bool),
            region_boxes=np.tile([0.0, 0.0, 1.0, 1.0], (len(regions), 1)), region_token_index=np.asarray(regions),
            cls_token_index=cls)

    def answers(self):
        return ["a", "b"]

    def forward_logits(self, **inputs):
        return torch.tensor([[1.0, 0.0]])

    def answer_probabilities(self, logits):
        return torch.softmax(logits.float(), -1)

    def attention_probs(self, inputs):
        out, y = {}, torch.zeros((), dtype=torch.float64, requires_grad=True) * 1.0
        for kind, layers in self.maps.items():
            out[kind] = []
            for a, g in zip(layers, self.grads[kind]):
                leaf = torch.tensor(a, dtype=torch.float64, requires_grad=True)
                t = leaf * 1.0  # a non-leaf in the graph, like a real attention map
                out[kind].append(t)
                if g is not None:  # a None gradient: the logit does not read this map (LXMERT's last v2l)
                    y = y + (t * torch.tensor(g, dtype=torch.float64)).sum()
        logits = torch.stack([y, torch.zeros(())])[None]
        return logits, out, self.index


def one_head(m):
    return np.asarray(m, np.float64)[None, None]  # (batch, head, q, k)


A1 = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
A2 = [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
G1 = [[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
ZERO = np.zeros((3, 3))


@pytest.fixture
def single_stream():
    """2 layers, 3 tokens ([CLS]=0, word=1, region=2); layer 2 has two heads whose G ⊙ A cancel on average."""
    layer1 = one_head(A1)
    layer2 = np.stack([A2, A2])[None]
    g2 = np.stack([np.array([[0, 1, -2], [0, 0, 0], [0, 0, 0]], float),
                   np.array([[0, -1, 2], [0, 0, 0], [0, 0, 0]], float)])[None]
    idx = (np.arange(3), np.arange(3))
    return FakeAttentionAdapter({"self": [layer1, layer2]}, {"self": [one_head(G1), g2]}, {"self": idx}, 3,
                                words=[0, 1], regions=[2])


def test_rollout_matches_hand_computation(single_stream):
    # Â1 = 0.5 A1 + 0.5 I: row 0 = [0.75, 0.25, 0]; Â2 row 0 = [0.5, 0.25, 0.25]; rows 1, 2 are identity.
    # R = Â2 Â1, row 0 = 0.5 [0.75, 0.25, 0] + 0.25 [0, 1, 0] + 0.25 [0, 0, 1] = [0.375, 0.375, 0.25].
    r = attribute(single_stream, single_stream.spec, 0, "rollout")
    np.testing.assert_allclose(r.region_scores, [0.25])
    np.testing.assert_allclose(r.token_scores, [0.0, 0.375])  # the [CLS] self entry is left out
    assert "0.38 of itself" in r.notes[0]


def test_relevance_matches_hand_computation(single_stream):
    # Layer 1: Ā1 = (G1 ⊙ A1)+ = row 0 [0.5, 1, 0]; R1 = I + Ā1 = row 0 [1.5, 1, 0].
    # Layer 2, per head G ⊙ A on row 0: [0, 0.5, -1] and [0, -0.5, 1]; clamp then mean: [0, 0.25, 0.5]
    # (mean then clamp would give 0). R2 row 0 = [1.5, 1, 0] + 0.25 R1[1] + 0.5 R1[2] = [1.5, 1.25, 0.5].
    r = attribute(single_stream, single_stream.spec, 0, "relevance")
    np.testing.assert_allclose(r.region_scores, [0.5])
    np.testing.assert_allclose(r.token_scores, [0.0, 1.25])


def test_raw_attention_is_last_layer_head_mean(single_stream):
    r = attribute(single_stream, single_stream.spec, 0, "attention")
    np.testing.assert_allclose(r.region_scores, [0.5])
    np.testing.assert_allclose(r.token_scores, [0.0, 0.5])


BIMODAL_T, BIMODAL_V = np.array([0, 1]), np.array([2])
BIMODAL_MAPS = {"lang_self": [one_head([[0.5, 0.5], [0.0, 1.0]])],
                "cross_l2v": [one_head([[1.0], [1.0]])],
                "cross_v2l": [one_head([[0.5, 0.5]])],
                "cross_lang_self": [one_head([[0.0, 1.0], [0.0, 1.0]])]}
BIMODAL_GRADS = {"lang_self": [one_head([[1.0, 1.0], [0.0, 0.0]])],
                 "cross_l2v": [one_head([[2.0], [0.0]])],
                 "cross_v2l": [one_head([[1.0, 1.0]])],
                 "cross_lang_self": [one_head([[1.0, 1.0], [0.0, 0.0]])]}
BIMODAL_INDEX = {"lang_self": (BIMODAL_T, BIMODAL_T), "cross_l2v": (BIMODAL_T, BIMODAL_V),
                 "cross_v2l": (BIMODAL_V, BIMODAL_T), "cross_lang_self": (BIMODAL_T, BIMODAL_T)}


def test_bimodal_relevance_matches_hand_computation():
    """Chefer, Gur & Wolf (ICCV 2021) eqs. 6-11 by hand. Text t0 ([CLS]), t1; image i0 (token 2).

    Start: R^tt = I (2x2), R^ii = [[1]], R^ti = [[0], [0]], R^it = [[0, 0]].
    lang_self, Ā = (G ⊙ A)+ = [[.5, .5], [0, 0]] (eqs. 6-7, self rule R^ss += Ā R^ss, R^sq += Ā R^sq):
        R^tt = I + Ā I = [[1.5, .5], [0, 1]];  R^ti = [[0], [0]] + Ā 0 = 0.
    Cross layer 0, both co-attentions computed from R BEFORE the cross step (R^tt, R^ti, R^it, R^ii above):
      residual normalization (eqs. 8-9): R̄^tt = ((R^tt - I) rows / row sums) + I = [[.5, .5], [0, 0]] + I
        = [[1.5, .5], [0, 1]] (row 1 of R^tt - I is zero and stays zero); R̄^ii = [[0]] + I = [[1]].
      cross_l2v (queries t, keys i), Ā^ti = [[2], [0]]:
        eq. 10: ΔR^ti = R̄^ttᵀ Ā^ti R̄^ii = [[1.5, 0], [.5, 1]] [[2], [0]] [[1]] = [[3], [1]]
        eq. 11: ΔR^tt = Ā^ti R^it = [[2], [0]] [[0, 0]] = 0
      cross_v2l (queries i, keys t), Ā^it = [[.5, .5]]:
        eq. 10: ΔR^it = R̄^iiᵀ Ā^it R̄^tt = [[1]] [[.5, .5]] [[1.5, .5], [0, 1]] = [[.75, .75]]
        eq. 11: ΔR^ii = Ā^it R^ti = [[.5, .5]] [[0], [0]] = 0   (R^ti before the step, not the updated [[3], [1]])
      then all four added: R^ti = [[3], [1]], R^it = [[.75, .75]], R^ii = [[1]], R^tt unchanged.
      (Applying the vision side after the language side would read R^ti = [[3], [1]]: ΔR^ii = .5*3 + .5*1 = 2,
       R^ii = 3, which is what the paper's rule does not do.)
    cross_lang_self, Ā = [[0, 1], [0, 0]]: row t0 of [R^tt R^ti] += row t1 = [0, 1, 1]:
        [1.5, .5, 3] -> [1.5, 1.5, 4].
    Scores: words = row t0 of R^tt without the [CLS] self entry = [0, 1.5]; region = R^ti[t0] = 4.
    """
    t, v = BIMODAL_T, BIMODAL_V
    fake = FakeAttentionAdapter(BIMODAL_MAPS, BIMODAL_GRADS, BIMODAL_INDEX, 3, words=[0, 1], regions=[2])
    r = attribute(fake, fake.spec, 0, "relevance")
    np.testing.assert_allclose(r.token_scores, [0.0, 1.5])
    np.testing.assert_allclose(r.region_scores, [4.0])
    lang = [AttentionStep("lang_self", 0, t, t, np.array([[0.5, 0.5], [0, 0]]))]
    cross = [AttentionStep("cross_l2v", 0, t, v, np.array([[2.0], [0.0]])),
             AttentionStep("cross_v2l", 0, v, t, np.array([[0.5, 0.5]]))]
    R = relevance_matrix([lang, cross], 3)
    np.testing.assert_allclose(R, [[1.5, 0.5, 3.0], [0.0, 1.0, 1.0], [0.75, 0.75, 1.0]])
    # the same two steps applied one after the other (not the paper's rule) give R^ii = 3
    sequential = relevance_matrix([lang, cross[:1], cross[1:]], 3)
    assert sequential[2, 2] == pytest.approx(3.0)


def test_a_map_without_gradient_contributes_nothing():
    """cross_v2l gets no gradient (the logit does not read it): relevance is as if its Ā were 0, and a note
    says so (LXMERT's last vision-side maps)."""
    grads = dict(BIMODAL_GRADS, cross_v2l=[None])
    fake = FakeAttentionAdapter(BIMODAL_MAPS, grads, BIMODAL_INDEX, 3, words=[0, 1], regions=[2])
    r = attribute(fake, fake.spec, 0, "relevance")
    zero = dict(BIMODAL_GRADS, cross_v2l=[one_head([[0.0, 0.0]])])
    ref = FakeAttentionAdapter(BIMODAL_MAPS, zero, BIMODAL_INDEX, 3, words=[0, 1], regions=[2])
    expected = attribute(ref, ref.spec, 0, "relevance")
    np.testing.assert_allclose(r.region_scores, expected.region_scores)
    np.testing.assert_allclose(r.token_scores, expected.token_scores)
    np.testing.assert_allclose(r.region_scores, [4.0])
    assert any("no gradient reached cross_v2l layer 0" in n for n in r.notes)
    # in the matrix: the image row keeps its start value (R^it = 0, R^ii = 1) instead of [.75, .75, 1]
    maps = {k: [torch.tensor(a) for a in v] for k, v in BIMODAL_MAPS.items()}
    grads_t = {k: [None if g is None else torch.tensor(g) for g in v] for k, v in grads.items()}
    groups = attention_steps(maps, BIMODAL_INDEX, grads_t)
    v2l = [st for g in groups for st in g if st.kind == "cross_v2l"][0]
    np.testing.assert_array_equal(v2l.matrix, [[0.0, 0.0]])
    np.testing.assert_allclose(relevance_matrix(groups, 3)[2], [0.0, 0.0, 1.0])


def test_dual_stream_rollout_uses_joint_matrix_per_sublayer():
    t, v = np.array([0, 1]), np.array([2])
    groups = [[AttentionStep("cross_l2v", 0, t, v, np.array([[1.0], [1.0]])),
               AttentionStep("cross_v2l", 0, v, t, np.array([[1.0, 0.0]]))]]
    R = rollout_matrix(groups, 3)
    # rows: t0 -> 0.5 t0 + 0.5 i0; t1 -> 0.5 t1 + 0.5 i0; i0 -> 0.5 i0 + 0.5 t0 (both at once)
    np.testing.assert_allclose(R, [[0.5, 0, 0.5], [0, 0.5, 0.5], [0.5, 0, 0.5]])


def test_unknown_attention_layout_is_a_clear_error():
    fake = FakeAttentionAdapter({"weird": [one_head(A1)]}, {"weird": [one_head(G1)]},
                                {"weird": (np.arange(3), np.arange(3))}, 3, words=[0, 1], regions=[2])
    with pytest.raises(AdapterError, match="not a known layout"):
        attribute(fake, fake.spec, 0, "rollout")


# ---- targets ------------------------------------------------------------------------------------
def test_target_parsing(tiny_vilt, rgb_image):
    spec = tiny_vilt.attribution_spec(rgb_image, QUESTION)
    ans = tiny_vilt.answers()
    t = resolve_target(tiny_vilt, spec, "red rather than blue")
    assert (t.answer, t.contrast) == (ans.index("red"), ans.index("blue")) and t.label == "red rather than blue"
    assert resolve_target(tiny_vilt, spec, "RED").answer == ans.index("red")
    with torch.no_grad():
        top = int(tiny_vilt.forward_logits(**spec.inputs)[0].argmax())
    assert resolve_target(tiny_vilt, spec, None).answer == top
    with pytest.raises(InputError, match="unknown answer"):
        resolve_target(tiny_vilt, spec, "purple")
    with pytest.raises(InputError, match="different"):
        resolve_target(tiny_vilt, spec, "red vs red")
    logits = torch.tensor([[0.0, 2.0, 0.0, 0.0, 5.0, 0.0]])
    assert float(t.score(logits)[0]) == pytest.approx(2.0 - 5.0)


def test_unknown_method_and_parameter(tiny_vilt, rgb_image):
    spec = tiny_vilt.attribution_spec(rgb_image, QUESTION)
    with pytest.raises(InputError, match="unknown attribution method"):
        attribute(tiny_vilt, spec, None, "gradcam")
    with pytest.raises(InputError, match="unknown parameter"):
        attribute(tiny_vilt, spec, None, "rollout", n_steps=3)


# ---- on a real (tiny, random) ViLT -------------------------------------------------------------
@pytest.fixture(scope="module")
def signal_vilt(tmp_path_factory):
    from adapters.vilt import ViltAdapter

    return ViltAdapter.load(str(make_signal_vilt(tmp_path_factory.mktemp("signal_vilt"))))


@pytest.fixture(scope="module")
def signal_spec(signal_vilt):
    return signal_vilt.attribution_spec(shape_image(), QUESTION)


def _f(adapter, inputs, target):
    with torch.no_grad():
        return float(target.score(adapter.forward_logits(**inputs))[0])


@pytest.mark.parametrize("target", [None, "red rather than blue"])
def test_ig_completeness(signal_vilt, signal_spec, target):
    """Sum of all word and region attributions = f(x) - f(baseline), within the reported delta."""
    t = resolve_target(signal_vilt, signal_spec, target)
    diff = _f(signal_vilt, signal_spec.inputs, t) - _f(signal_vilt, signal_spec.baselines, t)
    assert abs(diff) > 1e-2, "the test model must respond to its input"
    r = attribute(signal_vilt, signal_spec, t, "ig", n_steps=20)
    total = float(r.region_scores.astype(np.float64).sum() + r.token_scores.astype(np.float64).sum())
    assert r.score_difference == pytest.approx(diff, abs=1e-5)
    assert abs(total - diff) <= abs(r.delta) + 1e-4 * abs(diff) + 1e-6
    assert r.relative_delta < 0.05 and not r.delta_is_large
    # specials keep their embedding in the baseline, so they get exactly nothing
    assert np.all(r.token_scores[r.token_is_special] == 0)
    # a coarse integral reports a larger delta, and the page warns about it
    coarse = attribute(signal_vilt, signal_spec, t, "ig", n_steps=2, integration="riemann_right")
    total_c = float(coarse.region_scores.sum() + coarse.token_scores.sum())
    assert abs(total_c - coarse.score_difference - coarse.delta) < 1e-4 * max(1.0, abs(diff))
    assert abs(coarse.delta) > abs(r.delta)


def test_ig_internal_batching_changes_nothing_but_memory(signal_vilt, signal_spec):
    t = resolve_target(signal_vilt, signal_spec, None)
    full = attribute(signal_vilt, signal_spec, t, "ig", n_steps=12, internal_batch_size=None)
    chunked = attribute(signal_vilt, signal_spec, t, "ig", n_steps=12, internal_batch_size=4)
    auto = attribute(signal_vilt, signal_spec, t, "ig", n_steps=12, memory_budget_mb=1e-3)
    np.testing.assert_allclose(chunked.region_scores, full.region_scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunked.token_scores, full.token_scores, rtol=1e-4, atol=1e-6)
    assert auto.params["internal_batch_size"] == 1 and auto.params["measured_mb_per_step"] > 0


def test_choose_internal_batch():
    assert choose_internal_batch(30, 100 * 2**20, 1024) == 10  # 10 fit, 3 equal chunks
    assert choose_internal_batch(30, 150 * 2**20, 1024) == 6  # 6 fit -> 5 chunks of 6
    assert choose_internal_batch(30, 180 * 2**20, 1024) == 5  # 5 fit -> 6 chunks of 5
    assert choose_internal_batch(30, 1, 1024) == 30
    assert choose_internal_batch(30, 10 * 2**30, 1024) == 1


def _grid_boxes(rows: int, cols: int) -> np.ndarray:
    return np.array([[c / cols, r / rows, (c + 1) / cols, (r + 1) / rows] for r in range(rows) for c in range(cols)])


def test_region_windows_on_a_grid():
    boxes = _grid_boxes(4, 4)
    w2 = region_windows(boxes, 2, 2)  # four 2x2 blocks, each region in exactly one
    assert w2.shape == (4, 16) and (w2.sum(1) == 4).all() and (w2.sum(0) == 1).all()
    assert {tuple(np.nonzero(w)[0]) for w in w2} == {(0, 1, 4, 5), (2, 3, 6, 7), (8, 9, 12, 13), (10, 11, 14, 15)}
    w3 = region_windows(boxes, 3, 1)  # origins 0 and 1 per axis: 4 windows of 9
    assert w3.shape == (4, 16) and (w3.sum(1) == 9).all()
    # the corner patch is in one window, the four central ones in all four
    assert w3[:, 0].sum() == 1 and all(w3[:, i].sum() == 4 for i in (5, 6, 9, 10))
    w32 = region_windows(boxes, 3, 2)  # origin 0, then one flush with the far edge (1): the same 4 windows
    assert {tuple(np.nonzero(w)[0]) for w in w32} == {tuple(np.nonzero(w)[0]) for w in w3}
    w1 = region_windows(boxes, 1, 1)  # one region at a time
    assert w1.shape == (16, 16) and (w1.sum(1) == 1).all() and (w1.sum(0) == 1).all()
    big = region_windows(boxes, 9, 1)  # larger than the image: one window, everything
    assert big.shape == (1, 16) and big.all()


def test_word_windows_and_mean_drop():
    special = np.array([True, False, False, False, True])
    np.testing.assert_array_equal(word_windows(special, 1), [[0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0]])
    np.testing.assert_array_equal(word_windows(special, 2), [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]])
    # word 2 is in both windows: (1 + 3) / 2; words 1 and 3 in one each; specials in none: 0
    np.testing.assert_allclose(mean_drop(word_windows(special, 2), np.array([1.0, 3.0])), [0, 1, 2, 3, 0])


def test_median_fill_is_the_background_of_a_shape_image(signal_vilt, signal_spec):
    """shape_image: a 12x12 square on a 32x32 plain background; each channel's median is the background."""
    filled = median_fill(signal_spec)
    pv = signal_spec.inputs["pixel_values"]
    background = pv[..., 0, 0]  # top-left pixel, (B, C)
    np.testing.assert_allclose(filled.baselines["pixel_values"], background[..., None, None].expand_as(pv))
    assert torch.equal(filled.baselines["input_ids"], signal_spec.baselines["input_ids"])  # words: padding


@pytest.mark.parametrize("fill", ["median", "baseline"])
def test_occlusion_equals_manual_drop_and_batching_is_invisible(signal_vilt, signal_spec, fill):
    t = resolve_target(signal_vilt, signal_spec, None)
    r = attribute(signal_vilt, signal_spec, t, "occlusion", window=1, fill=fill, batch_size=7)
    r1 = attribute(signal_vilt, signal_spec, t, "occlusion", window=1, fill=fill, batch_size=1)
    np.testing.assert_allclose(r.region_scores, r1.region_scores, atol=1e-5)
    f0 = _f(signal_vilt, signal_spec.inputs, t)
    n = len(signal_spec.region_boxes)
    by = median_fill(signal_spec) if fill == "median" else signal_spec
    for region in (0, 5):
        mask = np.zeros(n, bool)
        mask[region] = True
        manual = f0 - _f(signal_vilt, signal_vilt.occlude(signal_spec.inputs, by, region_mask=mask), t)
        assert r.region_scores[region] == pytest.approx(manual, abs=1e-5)
    word = 2
    wmask = np.zeros(len(signal_spec.words), bool)
    wmask[word] = True
    manual = f0 - _f(signal_vilt, signal_vilt.occlude(signal_spec.inputs, signal_spec, word_mask=wmask), t)
    assert r.token_scores[word] == pytest.approx(manual, abs=1e-5)
    assert np.all(r.token_scores[r.token_is_special] == 0)
    # 2x2 windows, stride 2 on the 4x4 patch grid: each patch scores the drop of the one block holding it
    w = attribute(signal_vilt, signal_spec, t, "occlusion", window=2, stride=2, fill=fill)
    pi = signal_spec.extra["patch_index"]
    block = (pi[:, 0] // 2 == pi[0, 0] // 2) & (pi[:, 1] // 2 == pi[0, 1] // 2)
    manual = f0 - _f(signal_vilt, signal_vilt.occlude(signal_spec.inputs, by, region_mask=block), t)
    np.testing.assert_allclose(w.region_scores[block], manual, atol=1e-5)
    forwards = 1 + 4 + int((~signal_spec.word_is_special).sum())
    assert f"{forwards} forwards" in w.notes[-1]
    assert estimate_seconds(signal_spec, "occlusion", 1.0, window=2, stride=2) == forwards
    with pytest.raises(InputError, match="window must be at least 1"):
        attribute(signal_vilt, signal_spec, t, "occlusion", window=0)
    with pytest.raises(InputError, match="fill must be one of"):
        attribute(signal_vilt, signal_spec, t, "occlusion", fill="noise")


def test_every_method_returns_a_complete_result(signal_vilt, signal_spec):
    t = resolve_target(signal_vilt, signal_spec, None)
    n_regions = len(signal_spec.region_boxes)
    for m in METHODS:
        r = attribute(signal_vilt, signal_spec, t, m)
        assert r.method == m and r.target == t.label
        assert r.region_scores.shape == (n_regions,) and r.region_boxes.shape == (n_regions, 4)
        assert r.tokens == tuple(signal_spec.words) and len(r.token_scores) == len(r.tokens)
        assert 0 < r.probability < 1 and r.seconds > 0
        assert np.ptp(r.region_scores) > 0, f"{m}: flat map"
        assert 0.0 <= r.image_share <= 1.0
        arrays = r.as_arrays()
        assert {"region_boxes", "region_scores", "tokens", "token_scores", "target", "probability"} <= set(arrays)
        assert ("delta" in arrays) == (m == "ig")
        assert all(a.dtype != object for a in arrays.values())
        assert estimate_seconds(signal_spec, m, 0.01) > 0
    assert estimate_seconds(signal_spec, "ig", 0.01, n_steps=60) > estimate_seconds(signal_spec, "ig", 0.01)


def test_relevance_gradient_weighting_depends_on_target(signal_vilt, signal_spec):
    """Relevance and IG explain a target; rollout and raw attention do not depend on it."""
    ans = signal_vilt.answers()
    a = {m: attribute(signal_vilt, signal_spec, ans[0], m) for m in ("relevance", "rollout")}
    b = {m: attribute(signal_vilt, signal_spec, ans[1], m) for m in ("relevance", "rollout")}
    assert not np.allclose(a["relevance"].region_scores, b["relevance"].region_scores)
    np.testing.assert_allclose(a["rollout"].region_scores, b["rollout"].region_scores)


def test_ig_region_score_follows_the_changed_patch(signal_vilt):
    """Only one patch differs from the all-black baseline: IG puts every image attribution on it."""
    from PIL import Image

    arr = np.zeros((32, 32, 3), np.uint8)
    arr[8:16, 16:24] = 255  # row 1, col 2 of the 8-pixel grid
    spec = signal_vilt.attribution_spec(Image.fromarray(arr), QUESTION)
    base = dict(spec.baselines)
    # the adapter's baseline is a zero tensor after normalization; make the black pixels the baseline
    base["pixel_values"] = signal_vilt.attribution_spec(Image.fromarray(np.zeros_like(arr)), QUESTION
                                                        ).inputs["pixel_values"]
    spec = type(spec)(**{**spec.__dict__, "baselines": base})
    r = attribute(signal_vilt, spec, None, "ig", n_steps=8)
    nonzero = np.nonzero(np.abs(r.region_scores) > 1e-7)[0]
    assert len(nonzero) == 1
    box = r.region_boxes[nonzero[0]]
    np.testing.assert_allclose(box, [0.5, 0.25, 0.75, 0.5], atol=1e-6)


# ---- the real adapters: relevance on LXMERT, one probability rule everywhere --------------------
@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory):
    from testkit import tiny_kdvlp, tiny_lxmert

    return {"lxmert": tiny_lxmert.make_tiny_adapter(tmp_path_factory.mktemp("lx"))[0],
            "kdvlp": tiny_kdvlp.make_tiny_adapter(tmp_path_factory.mktemp("kd"))[0]}


def test_relevance_runs_on_the_tiny_lxmert(tiny_adapters):
    """The answer head reads only the language [CLS]: the last cross layer's vision-side maps get no
    gradient. They contribute nothing, the map is finite and not constant, and a note names them."""
    lx = tiny_adapters["lxmert"]
    spec = lx.attribution_spec(shape_image(size=48), QUESTION)
    r = attribute(lx, spec, None, "relevance")
    assert np.isfinite(r.region_scores).all() and np.ptp(r.region_scores) > 0
    assert np.ptp(r.token_scores[~r.token_is_special]) > 0
    n_cross = lx.model.config.x_layers
    assert any(f"cross_v2l layer {n_cross - 1}" in n and "contribute nothing" in n for n in r.notes)


@pytest.mark.parametrize("name", ["vilt", "lxmert", "kdvlp"])
def test_prediction_and_attribution_probabilities_agree(name, tiny_adapters, signal_vilt):
    """One probability rule (the adapter's answer_probabilities) in the prediction, the result's probability
    and the deletion curves' target probabilities."""
    from analysis.attribution import target_probabilities

    adapter = signal_vilt if name == "vilt" else tiny_adapters[name]
    image = shape_image(size=48)
    pred = adapter.predict(image, QUESTION, top_k=1)
    spec = adapter.attribution_spec(image, QUESTION)
    t = resolve_target(adapter, spec, None)
    assert adapter.answers()[t.answer] == pred.answers[0]
    r = attribute(adapter, spec, t, "attention")
    assert r.probability == pytest.approx(float(pred.probabilities[0]), abs=1e-5)
    assert float(target_probabilities(adapter, t, [spec.inputs])[0]) == pytest.approx(r.probability, abs=1e-5)
