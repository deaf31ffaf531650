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
