"""Agreement, deletion curves, mask share and the model-randomization sanity check."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.base import AttributionSpec
from analysis.attribution import Target, attribute, resolve_target
from analysis.faithfulness import (box_mask_fractions, deletion_curve, mask_share, random_deletion_curve,
                                   rank_agreement, rankdata, sanity_correlation, spearman)
from tests.attribution_models import make_signal_vilt, shape_image

ROOT = Path(__file__).resolve().parent.parent
DEMO_VILT = Path(os.environ.get("VL_LENS_DEMO_VILT", ROOT / "demo" / "models" / "vilt-easyvqa"))
needs_demo = pytest.mark.skipif(not (DEMO_VILT / "config.json").exists(),
                                reason="demo weights demo/models/vilt-easyvqa are not present yet")
QUESTION = "what color is the shape?"


def test_rankdata_and_spearman():
    np.testing.assert_allclose(rankdata([10, 30, 20, 20]), [1, 4, 2.5, 2.5])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1,2,3,4] vs [2,1,4,3]: d² = 1+1+1+1, rho = 1 - 6*4/(4*15) = 0.6
    assert spearman([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


class AdditiveAdapter:
    """Logit of answer 0 = sum of the kept regions' weights; occlusion zeroes a region's keep flag."""

    def __init__(self, weights):
        self.w = torch.tensor(weights, dtype=torch.float32)
        r = len(weights)
        self.spec = AttributionSpec(
            record_tokens=("[CLS]",) + tuple(f"r{i}" for i in range(r)), record_modality=("special",) + ("image",) * r,
            inputs={"keep": torch.ones(1, r)}, baselines={"keep": torch.zeros(1, r)},
            word_token_index=np.array([0]), word_is_special=np.array([True]),
            region_boxes=np.tile([0.0, 0.0, 1.0, 1.0], (r, 1)), region_token_index=np.arange(1, r + 1),
            cls_token_index=0)

    def answers(self):
        return ["a", "b"]

    def answer_probabilities(self, logits):
        return torch.sigmoid(logits)

    def forward_logits(self, keep):
        s = (keep * self.w).sum(1) - 2.0
        return torch.stack([s, torch.zeros_like(s)], 1)

    def occlude(self, inputs, spec, *, region_mask=None, word_mask=None):
        keep = inputs["keep"].clone()
        if region_mask is not None:
            keep[:, torch.from_numpy(np.asarray(region_mask, bool))] = 0
        return {"keep": keep}


def test_deletion_curve_on_additive_model():
    w = [3.0, 0.0, 1.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    fake = AdditiveAdapter(w)
    t = Target(answer=0, answer_name="a")
    best = deletion_curve(fake, fake.spec, t, np.array(w), steps=10)
    worst = deletion_curve(fake, fake.spec, t, -np.array(w), steps=10)
    rand = random_deletion_curve(fake, fake.spec, t, repeats=5, steps=10)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    # removing 10% = the top region (3.0), 20% = also 2.0, ...
    np.testing.assert_allclose(best.probabilities[:3], sig(np.array([6.5, 3.5, 1.5]) - 2.0), rtol=1e-5)
    assert best.probabilities[0] == pytest.approx(worst.probabilities[0])
    assert best.probabilities[-1] == pytest.approx(sig(-2.0)) == pytest.approx(worst.probabilities[-1])
    expected_area = float(np.sum(np.diff(best.fractions) * (best.probabilities[1:] + best.probabilities[:-1]) / 2))
    assert best.area == pytest.approx(expected_area)
    assert best.area < rand.area < worst.area


def test_box_mask_fractions_and_mask_share():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True  # top-left quarter
    mask[2, 2] = True
    boxes = np.array([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]])
    np.testing.assert_allclose(box_mask_fractions(boxes, mask), [1.0, 0.0, 0.0, 0.25])
    assert mask_share(boxes, np.array([2.0, 1.0, -5.0, 4.0]), mask) == pytest.approx((2 + 4 * 0.25) / 7)
    assert np.isnan(mask_share(boxes, -np.ones(4), mask))


@pytest.fixture(scope="module")
def two_random_models(tmp_path_factory):
    from adapters.vilt import ViltAdapter

    a = ViltAdapter.load(str(make_signal_vilt(tmp_path_factory.mktemp("m0"), seed=0)))
    b = ViltAdapter.load(str(make_signal_vilt(tmp_path_factory.mktemp("m1"), seed=1)))
    return a, b


def test_agreement_matrix(two_random_models):
    model, _ = two_random_models
    spec = model.attribution_spec(shape_image(), QUESTION)
    t = resolve_target(model, spec, None)
    res = {m: attribute(model, spec, t, m) for m in ("ig", "occlusion", "rollout")}
    ag = rank_agreement(res)
    assert ag.methods == ("ig", "occlusion", "rollout")
    np.testing.assert_allclose(np.diag(ag.matrix), 1.0)
    np.testing.assert_allclose(ag.matrix, ag.matrix.T)
    assert ag.matrix[0, 1] == pytest.approx(spearman(res["ig"].region_scores, res["occlusion"].region_scores))


def test_sanity_mechanism_on_tiny_models(two_random_models):
    """Maps of the same model agree perfectly; maps of a model with other random weights do not."""
    a, b = two_random_models
    rhos = {}
    for m in ("ig", "relevance", "occlusion"):
        per_image = []
        for color in ((220, 30, 30), (30, 30, 220)):
            img = shape_image(color=color)
            sa, sb = a.attribution_spec(img, QUESTION), b.attribution_spec(img, QUESTION)
            ra = attribute(a, sa, "yes", m)
            assert sanity_correlation(ra, attribute(a, sa, "yes", m)) == pytest.approx(1.0)
            per_image.append(sanity_correlation(ra, attribute(b, sb, "yes", m)))
        rhos[m] = float(np.mean(per_image))
    assert all(abs(r) < 0.5 for r in rhos.values()), rhos


def _randomized_copy(path: Path, out: Path) -> Path:
    """The demo model's architecture, tokenizer and processor with freshly initialised weights."""
    import shutil

    from transformers import ViltConfig, ViltForQuestionAnswering

    shutil.copytree(path, out)
    torch.manual_seed(123)
    model = ViltForQuestionAnswering(ViltConfig.from_pretrained(path)).eval()
    model.save_pretrained(out)
    return out


@needs_demo
@pytest.mark.slow
def test_sanity_demo_model_vs_randomized(tmp_path):
    from adapters.vilt import ViltAdapter
    from sources.easyvqa import EasyVQA

    trained = ViltAdapter.load(str(DEMO_VILT))
    rand = ViltAdapter.load(str(_randomized_copy(DEMO_VILT, tmp_path / "random")))
    src = EasyVQA("test")
    rhos = {m: [] for m in ("ig", "relevance", "occlusion")}
    for i in range(0, 40, 5):
        ex = src[i]
        img = ex.image()
        st, sr = trained.attribution_spec(img, ex.question), rand.attribution_spec(img, ex.question)
        t = resolve_target(trained, st, None)
        for m in rhos:
            rhos[m].append(sanity_correlation(attribute(trained, st, t, m), attribute(rand, sr, t, m)))
    means = {m: float(np.nanmean(v)) for m, v in rhos.items()}
    assert all(abs(r) < 0.5 for r in means.values()), means


@needs_demo
@pytest.mark.slow
def test_ig_mass_lies_on_the_shape_on_easyvqa():
    """On easy-VQA the shape's pixels are known: IG must put clearly more positive mass there than chance."""
    from adapters.vilt import ViltAdapter
    from bench.attribution import mask_share_table

    adapter = ViltAdapter.load(str(DEMO_VILT))
    table = mask_share_table(adapter, n_examples=30, methods=("ig",), n_steps=20)
    ig, area = table["ig"], table["mask_area"]
    assert ig > area + 0.15 and ig > 1.5 * area, table


@needs_demo
@pytest.mark.slow
def test_occlusion_finds_the_shape_on_easyvqa():
    """Issue 19 item 7: with the median fill occlusion's positive mass lies on the shape, at least 2x chance
    (measured 0.59 against 0.097 on 100 questions); with the old mid-gray fill it sat at chance."""
    from adapters.vilt import ViltAdapter
    from bench.attribution import mask_share_table

    adapter = ViltAdapter.load(str(DEMO_VILT))
    table = mask_share_table(adapter, n_examples=30, methods=("occlusion",))
    assert table["occlusion"] > 2 * table["mask_area"], table


# ---- the perturbation protocol (Chefer et al. 2021) on an additive model with words ------------------
class AdditiveWordsAdapter(AdditiveAdapter):
    """Logit of "a" = sum of kept region weights + sum of kept word weights - 2; logit of "b" = 0; sigmoid."""

    def __init__(self, weights, word_weights, word_is_special):
        super().__init__(weights)
        self.v = torch.tensor(word_weights, dtype=torch.float32)
        n_w = len(word_weights)
        self.spec = AttributionSpec(
            record_tokens=tuple(f"w{i}" for i in range(n_w)) + tuple(f"r{i}" for i in range(len(weights))),
            record_modality=("text",) * n_w + ("image",) * len(weights),
            inputs={"keep": torch.ones(1, len(weights)), "words": torch.ones(1, n_w)},
            baselines={"keep": torch.zeros(1, len(weights)), "words": torch.zeros(1, n_w)},
            word_token_index=np.arange(n_w), word_is_special=np.asarray(word_is_special),
            region_boxes=np.tile([0.0, 0.0, 1.0, 1.0], (len(weights), 1)),
            region_token_index=np.arange(n_w, n_w + len(weights)), cls_token_index=0)

    def forward_logits(self, keep, words):
        s = (keep * self.w).sum(1) + (words * self.v).sum(1) - 2.0
        return torch.stack([s, torch.zeros_like(s)], 1)

    def occlude(self, inputs, spec, *, region_mask=None, word_mask=None):
        new = dict(inputs)
        if region_mask is not None:
            new["keep"] = inputs["keep"].clone()
            new["keep"][:, torch.from_numpy(np.asarray(region_mask, bool))] = 0
        if word_mask is not None:
            new["words"] = inputs["words"].clone()
            new["words"][:, torch.from_numpy(np.asarray(word_mask, bool) & ~spec.word_is_special)] = 0
        return new


W_IMG = [3.0, 0.0, 1.0, 0.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
W_TXT = [0.0, 1.0, 0.0, 0.5, 0.0, 0.0]  # positions 0 and 5 are special: never removed
SPECIAL = [True, False, False, False, False, True]


def test_curve_area_is_the_mean_level():
    from analysis.perturbation import curve_area

    assert curve_area([0, 0.5, 1], [1, 1, 0]) == pytest.approx(0.75)  # (0.5 * 1 + 0.5 * 0.5) / 1
    assert curve_area([0, 0.1, 0.2, 0.3], [1, 1, 1, 1]) == pytest.approx(1.0)


def test_perturbation_curves_by_hand():
    """Fractions 0, .1, ..., .9 of 10 regions = 0..9 regions removed; of 4 words = round(f * 4) words.

    Image, positive (largest weight first: 3, 2, 1, .5, 0...): region sum 6.5, 3.5, 1.5, .5, 0, ...; with the
    words' 1.5 the logit s = 6, 3, 1, 0, -.5, ...; top answer "a" (the label) while s >= 0 (a tie picks the
    first): accuracy 1, 1, 1, 1, 0, ..., 0; area = (0.3 + 0.05) / 0.9.
    Image, negative (the six zeros first, then .5, 1, 2): at 9 removed the region sum is still 3: always right.
    Words, positive (1.0 then .5): removed 0, 0, 1, 1, 2, 2, 2, 3, 3, 4 -> word sum 1.5, 1.5, .5, .5, 0, ...;
    the regions' 6.5 keep "a" on top, but its probability sig(6.5 + words - 2) falls.
    """
    from analysis.perturbation import curve_area, perturbation_curves

    fake = AdditiveWordsAdapter(W_IMG, W_TXT, SPECIAL)
    t = Target(answer=0, answer_name="a")
    scores = {"image": np.array(W_IMG), "text": np.array(W_TXT)[~np.array(SPECIAL)]}
    c = perturbation_curves(fake, fake.spec, t, scores, label=0, batch_size=7)
    np.testing.assert_array_equal(c.accuracy["image_positive"], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert curve_area(np.arange(10) / 10, c.accuracy["image_positive"]) == pytest.approx(0.35 / 0.9)
    np.testing.assert_array_equal(c.accuracy["image_negative"], np.ones(10))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(c.probability["image_positive"],
                               sig(np.array([6.5, 3.5, 1.5, .5, 0, 0, 0, 0, 0, 0]) + 1.5 - 2), rtol=1e-5)
    words = np.array([1.5, 1.5, .5, .5, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(c.probability["text_positive"], sig(6.5 + words - 2), rtol=1e-5)
    np.testing.assert_array_equal(c.accuracy["text_positive"], np.ones(10))
    # negative on words: the two zero-weight words first (removed 0, 0, 1, 1, 2, 2, 2, 3, 3, 4)
    np.testing.assert_allclose(c.probability["text_negative"],
                               sig(6.5 + np.array([1.5] * 7 + [1.0, 1.0, 0.0]) - 2), rtol=1e-5)
    # no label: accuracy unknown, probabilities still there
    assert np.isnan(perturbation_curves(fake, fake.spec, t, scores, label=None).accuracy["image_positive"]).all()


def test_summarize_and_table_rows():
    from analysis.perturbation import (CURVES, ExampleCurves, localization_summary, summarize, table_rows)

    ones, zeros = np.ones(10), np.zeros(10)
    a = ExampleCurves(accuracy={c: ones for c in CURVES}, probability={c: ones for c in CURVES})
    b = ExampleCurves(accuracy={c: zeros for c in CURVES}, probability={c: ones * 0.5 for c in CURVES})
    s = summarize({"m": [a, b]})
    assert s["m"]["image_positive"]["accuracy"] == pytest.approx([0.5] * 10)
    assert s["m"]["text_negative"]["probability_auc"] == pytest.approx(0.75)
    loc = localization_summary({"m": [0.4, float("nan"), 0.2]}, [0.1, 0.1, 0.1])
    assert loc["m"] == {"mask_share": pytest.approx(0.3), "chance": pytest.approx(0.1), "ratio": pytest.approx(3.0),
                        "n": 2}
    row = table_rows(s, loc)[0]
    assert row["method"] == "m" and row["image_positive_accuracy_auc"] == pytest.approx(50.0)
    assert row["mask_ratio"] == pytest.approx(3.0)


def test_random_orders_are_seeded_and_cover_every_unit():
    from analysis.perturbation import random_scores, removal_order

    fake = AdditiveWordsAdapter(W_IMG, W_TXT, SPECIAL)
    a = random_scores(fake.spec, np.random.default_rng(0))
    b = random_scores(fake.spec, np.random.default_rng(0))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert len(a["image"]) == 10 and len(a["text"]) == 4
    pos, neg = removal_order(a["image"], "positive"), removal_order(a["image"], "negative")
    assert sorted(pos) == list(range(10)) and list(pos) == list(neg[::-1])
