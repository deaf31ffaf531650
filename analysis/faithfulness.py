"""Do the maps agree, and are they faithful? Rank agreement, deletion curves, mask share, sanity check.

- ``rank_agreement``: Spearman rank correlation between methods' region scores.
- ``deletion_curve`` (Petsiuk et al. 2018): remove the top-k% regions by a method's ranking (replace
  them with the baseline through ``adapter.occlude``), track the target probability; a smaller area
  under the curve is more faithful. ``random_deletion_curve`` is the same with random orders.
- ``mask_share``: share of the positive region attribution that lies inside a pixel mask (easy-VQA's
  shape mask gives a ground truth), next to the mask's share of the image area.
- ``sanity_correlation`` (Adebayo et al. 2018): rank correlation between two maps of the same input,
  e.g. from a trained model and the same model with randomized weights; a method whose maps do not
  change is not explaining the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.attribution import AttributionResult, Target, target_probabilities
from analysis.perturbation import removed_inputs


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x, np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation; NaN when either side is constant (no ranking to compare)."""
    ra, rb = rankdata(a), rankdata(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: {len(ra)} vs {len(rb)} values")
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True, kw_only=True)
class Agreement:
    methods: tuple[str, ...]
    matrix: np.ndarray  # (M, M) Spearman correlation of region scores


def rank_agreement(results: dict[str, AttributionResult]) -> Agreement:
    names = tuple(results)
    m = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            m[i, j] = m[j, i] = spearman(results[a].region_scores, results[names[j]].region_scores)
    m.setflags(write=False)
    return Agreement(methods=names, matrix=m)


@dataclass(frozen=True, kw_only=True)
class DeletionCurve:
    """Target probability after removing the first ``fractions`` of regions in a given order."""

    label: str
    fractions: np.ndarray  # (K,) 0..1
    probabilities: np.ndarray  # (K,)
    area: float  # trapezoid area under the curve over fractions 0..1 (smaller = more faithful)


def _area(fractions: np.ndarray, values: np.ndarray) -> float:
    f = np.asarray(fractions, np.float64)
    v = np.asarray(values, np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (v[1:] + v[:-1]) / 2.0))


def deletion_probabilities(adapter, spec, target: Target, order: np.ndarray, fractions, batch_size: int = 16):
    """Probabilities after replacing the first round(f * R) regions of ``order`` by the baseline."""
    variants = removed_inputs(adapter, spec, "image", order, fractions)
    return target_probabilities(adapter, target, variants, batch_size=batch_size)


def ranking(region_scores: np.ndarray) -> np.ndarray:
    """Region indices, most important first (stable on ties)."""
    return np.argsort(-np.asarray(region_scores, np.float64), kind="stable")


def deletion_curve(adapter, spec, target: Target, region_scores, *, label: str = "", steps: int = 10,
                   batch_size: int = 16) -> DeletionCurve:
    fractions = np.linspace(0.0, 1.0, steps + 1)
    probs = deletion_probabilities(adapter, spec, target, ranking(region_scores), fractions, batch_size)
    return DeletionCurve(label=label, fractions=fractions, probabilities=probs, area=_area(fractions, probs))


def random_deletion_curve(adapter, spec, target: Target, *, repeats: int = 3, steps: int = 10, seed: int = 0,
                          batch_size: int = 16) -> DeletionCurve:
    """Mean curve over ``repeats`` random orders (seeded): the chance level a method should beat."""
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    n = len(spec.region_boxes)
    curves = [deletion_probabilities(adapter, spec, target, rng.permutation(n), fractions, batch_size)
              for _ in range(repeats)]
    probs = np.mean(curves, axis=0)
    return DeletionCurve(label="random", fractions=fractions, probabilities=probs, area=_area(fractions, probs))


def box_mask_fractions(region_boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For each box (fractions of the image), the share of its pixels inside the boolean (H, W) mask."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    out = np.zeros(len(region_boxes))
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(region_boxes, np.float64)):
        c0, c1 = int(np.floor(x0 * w + 1e-9)), int(np.ceil(x1 * w - 1e-9))
        r0, r1 = int(np.floor(y0 * h + 1e-9)), int(np.ceil(y1 * h - 1e-9))
        cell = mask[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)]
        out[i] = cell.mean() if cell.size else 0.0
    return out


def mask_share(region_boxes: np.ndarray, region_scores: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive region attribution inside the mask (each region split by its pixels)."""
    pos = np.clip(np.asarray(region_scores, np.float64), 0, None)
    total = pos.sum()
    if total <= 0:
        return float("nan")
    return float((pos * box_mask_fractions(region_boxes, mask)).sum() / total)


def sanity_correlation(a: AttributionResult, b: AttributionResult) -> float:
    """Rank correlation of the region scores of two maps of the same input (Adebayo et al. 2018)."""
    return spearman(a.region_scores, b.region_scores)
