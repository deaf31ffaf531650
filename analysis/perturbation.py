"""The perturbation protocol of Chefer, Gur & Wolf (2021): remove image regions or words in the order a
map ranks them, and track accuracy and the target's probability.

- positive perturbation: the most relevant first (a faithful map makes the curves fall fast: low area);
- negative perturbation: the least relevant first (a faithful map keeps them up: high area);
- the same with a random order, the level to beat.

Removed units are replaced by their baseline through ``adapter.occlude`` (image regions: the adapter's
baseline image; words: padding tokens; special tokens are never removed). Fractions 0, 0.1, ..., 0.9 of the
units; 0 is the unperturbed input. The area under a curve (``curve_area``) is the trapezoid area over the
fractions divided by their span, i.e. the curve's mean level (0..1): the tables print it x 100.
Probabilities use the adapter's own rule (``adapter.answer_probabilities``); accuracy is the perturbed top
answer against the example's label. For a generated answer (``GenerationTarget``) the probability is the
explained answer's (product of its tokens'), and the "top answer" is 1 while greedy decoding still writes it,
0 once it does not: with label 1 for a correct answer, accuracy is the share still answering it correctly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from analysis.attribution import AttributionResult, Target, concat_inputs

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))  # 0, 0.1, ..., 0.9
MODALITIES = ("image", "text")
ORDERS = ("positive", "negative")
CURVES = tuple(f"{m}_{o}" for m in MODALITIES for o in ORDERS)  # image_positive, ..., text_negative


@dataclass(frozen=True, kw_only=True)
class ExampleCurves:
    """One example, one map: for each curve (``CURVES``) accuracy (K,) and probability (K,) over FRACTIONS."""

    accuracy: dict  # curve -> (K,) 0/1, NaN when the example has no label in the vocabulary
    probability: dict  # curve -> (K,)


def curve_area(fractions, values) -> float:
    """Trapezoid area under values over fractions, divided by the fractions' span (the mean level)."""
    f = np.asarray(fractions, np.float64)
    v = np.asarray(values, np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (v[1:] + v[:-1]) / 2.0) / (f[-1] - f[0]))


def removal_order(scores: np.ndarray, order: str) -> np.ndarray:
    """Unit indices in removal order: most relevant first ("positive") or least relevant first ("negative");
    ties keep index order."""
    s = np.asarray(scores, np.float64)
    return np.argsort(-s if order == "positive" else s, kind="stable")


def removed_inputs(adapter, spec, modality: str, ranked: np.ndarray, fractions) -> list[dict]:
    """For each fraction f, the input with the first round(f * n) units of ``ranked`` removed (regions, or
    non-special words; ``ranked`` indexes those units)."""
    n_all = len(spec.region_boxes) if modality == "image" else len(spec.word_is_special)
    units = np.arange(n_all) if modality == "image" else np.nonzero(~np.asarray(spec.word_is_special, bool))[0]
    key = "region_mask" if modality == "image" else "word_mask"
    out = []
    for f in fractions:
        mask = np.zeros(n_all, bool)
        mask[units[np.asarray(ranked[:int(round(f * len(units)))], int)]] = True
        out.append(adapter.occlude(spec.inputs, spec, **{key: mask}) if mask.any() else spec.inputs)
    return out


def unit_scores(result: AttributionResult, spec) -> dict:
    """{modality: scores of the removable units}: every region; the non-special words."""
    return {"image": result.region_scores,
            "text": result.token_scores[~np.asarray(spec.word_is_special, bool)]}


def perturbation_curves(adapter, spec, target: Target, scores: dict, label: int | None, *,
                        fractions=FRACTIONS, batch_size: int = 32) -> ExampleCurves:
    """The four curves of one map. ``scores``: {"image": (R,), "text": (non-special words,)} (``unit_scores``)."""
    variants = [v for m in MODALITIES for o in ORDERS
                for v in removed_inputs(adapter, spec, m, removal_order(scores[m], o), fractions)]
    probs, top = [], []
    with torch.no_grad():
        for i in range(0, len(variants), batch_size):
            logits = adapter.forward_logits(**concat_inputs(variants[i:i + batch_size]))
            probs.append(target.probability(adapter, logits).float().cpu().numpy())
            top.append(target.predicted(logits).cpu().numpy())
    p, t = np.concatenate(probs), np.concatenate(top)
    correct = (t == label).astype(np.float64) if label is not None else np.full(len(t), np.nan)
    k = len(fractions)
    acc = {name: correct[i * k:(i + 1) * k] for i, name in enumerate(CURVES)}
    prob = {name: p[i * k:(i + 1) * k] for i, name in enumerate(CURVES)}
    return ExampleCurves(accuracy=acc, probability=prob)


def random_scores(spec, rng: np.random.Generator) -> dict:
    """Scores that rank the units in a random order (positive and negative are two random orders)."""
    n_words = int((~np.asarray(spec.word_is_special, bool)).sum())
    return {"image": rng.random(len(spec.region_boxes)), "text": rng.random(n_words)}


def summarize(curves: dict[str, list[ExampleCurves]], fractions=FRACTIONS) -> dict:
    """{method: [ExampleCurves per example]} -> {method: {curve: {"accuracy": mean curve, "probability": ...,
    "accuracy_auc", "probability_auc"}}} (JSON-ready lists and floats; NaN where no example had a label)."""
    out = {}
    for method, examples in curves.items():
        out[method] = {}
        for name in CURVES:
            acc = np.nanmean([e.accuracy[name] for e in examples], axis=0) if _has_labels(examples) \
                else np.full(len(fractions), np.nan)
            prob = np.mean([e.probability[name] for e in examples], axis=0)
            out[method][name] = {"accuracy": acc.tolist(), "probability": prob.tolist(),
                                 "accuracy_auc": curve_area(fractions, acc),
                                 "probability_auc": curve_area(fractions, prob)}
    return out


def _has_labels(examples: list[ExampleCurves]) -> bool:
    return any(np.isfinite(e.accuracy[CURVES[0]]).any() for e in examples)


def table_rows(summary: dict, localization: dict) -> list[dict]:
    """One row per method: the eight areas (x 100) and the localization score, for CSV and the view."""
    rows = []
    for method, curves in summary.items():
        row = {"method": method}
        for name in CURVES:
            row[f"{name}_accuracy_auc"] = 100.0 * curves[name]["accuracy_auc"]
            row[f"{name}_probability_auc"] = 100.0 * curves[name]["probability_auc"]
        loc = localization.get(method, {})
        row.update(mask_share=loc.get("mask_share", float("nan")), mask_chance=loc.get("chance", float("nan")),
                   mask_ratio=loc.get("ratio", float("nan")))
        rows.append(row)
    return rows


def localization_summary(shares: dict[str, list[float]], areas: list[float]) -> dict:
    """{method: per-example mask shares} and the masks' area shares -> {method: mean share, chance (mean
    area), ratio share / chance, n (examples with positive image attribution)}."""
    chance = float(np.mean(areas)) if areas else float("nan")
    out = {}
    for method, values in shares.items():
        v = np.asarray(values, np.float64)
        share = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        out[method] = {"mask_share": share, "chance": chance, "ratio": share / chance if chance > 0 else float("nan"),
                       "n": int(np.isfinite(v).sum())}
    return out
