"""Occlusion with sliding windows (as Captum's ``Occlusion``): replace a window of neighbouring regions (or
consecutive words) by the baseline through ``adapter.occlude``, and score each region / word by the mean drop
of the target score over the windows that contain it.

Windows are built from the region boxes alone, so every adapter gets them: a window is a square of
``window`` x ``window`` region cells (cell = the median box size) moved by ``stride`` cells, the last one
flush with the image's far edge; a region belongs to a window when its box centre lies inside. On a patch
grid (ViLT, KD-VLP, LXMERT's grid extractor) that is exactly a window x window block of patches. Words:
windows of ``word_window`` consecutive non-special words, stride 1 (1 = one word at a time).

Why windows: one 8-pixel patch of an easy-VQA shape cannot move the demo models' answers (single-patch
occlusion put 0.10 of its positive mass inside the shape mask, the mask's own area share), so the drop is
noise. The defaults (window 3, stride 1) were chosen by measuring the mask share on the demo ViLT
(docs/attribution.md).
"""
from __future__ import annotations

import time

import numpy as np

from analysis.attribution.base import Method
from analysis.attribution.results import AttributionResult
from analysis.attribution.scoring import make_result, target_scores
from core.errors import InputError


def _starts(side: float, step: float) -> np.ndarray:
    """Window origins along one axis of 0..1: 0, step, 2 step, ... and one flush with the far edge."""
    if side >= 1.0 - 1e-9:
        return np.zeros(1)
    starts = np.arange(0.0, 1.0 - side + 1e-9, step)
    if starts[-1] + side < 1.0 - 1e-9:
        starts = np.append(starts, 1.0 - side)
    return starts


def region_windows(region_boxes: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(n_windows, R) bool: which regions each window covers (windows covering no region dropped)."""
    boxes = np.asarray(region_boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 0), bool)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    cell_w = float(np.median(boxes[:, 2] - boxes[:, 0]))
    cell_h = float(np.median(boxes[:, 3] - boxes[:, 1]))
    out = []
    for y0 in _starts(window * cell_h, stride * cell_h):
        for x0 in _starts(window * cell_w, stride * cell_w):
            inside = ((cx >= x0) & (cx <= x0 + window * cell_w) & (cy >= y0) & (cy <= y0 + window * cell_h))
            if inside.any():
                out.append(inside)
    return np.unique(np.array(out), axis=0) if out else np.zeros((0, len(boxes)), bool)


def word_windows(word_is_special: np.ndarray, window: int) -> np.ndarray:
    """(n_windows, W) bool: ``window`` consecutive non-special words, stride 1."""
    special = np.asarray(word_is_special, bool)
    pos = np.nonzero(~special)[0]
    width = min(window, len(pos))
    out = np.zeros((max(len(pos) - width + 1, 0) if width else 0, len(special)), bool)
    for i in range(len(out)):
        out[i, pos[i:i + width]] = True
    return out


def mean_drop(windows: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """(n_windows, N) membership, (n_windows,) drops -> (N,) mean drop of the windows holding each unit
    (0 for a unit in no window)."""
    counts = windows.sum(0)
    total = (windows * np.asarray(drops, np.float64)[:, None]).sum(0)
    return np.divide(total, counts, out=np.zeros(windows.shape[1]), where=counts > 0)


class Occlusion(Method):
    name = "occlusion"
    defaults = {"window": 3, "stride": 1, "word_window": 1, "batch_size": 16}

    def _windows(self, spec, p) -> tuple[np.ndarray, np.ndarray]:
        for key in ("window", "stride", "word_window"):
            if int(p[key]) < 1:
                raise InputError(f"occlusion: {key} must be at least 1")
        return (region_windows(spec.region_boxes, int(p["window"]), int(p["stride"])),
                word_windows(spec.word_is_special, int(p["word_window"])))

    def forward_equivalents(self, spec, **params) -> float:
        regions, words = self._windows(spec, self.params(**params))
        return 1.0 + len(regions) + len(words)

    def attribute(self, adapter, spec, target, **params) -> AttributionResult:
        t0 = time.perf_counter()
        p = self.params(**params)
        regions, words = self._windows(spec, p)
        variants = ([spec.inputs] + [adapter.occlude(spec.inputs, spec, region_mask=m) for m in regions]
                    + [adapter.occlude(spec.inputs, spec, word_mask=m) for m in words])
        s = target_scores(adapter, target, variants, batch_size=max(1, int(p["batch_size"])))
        drops = s[0] - s[1:]
        reg = mean_drop(regions, drops[:len(regions)])
        tok = mean_drop(words, drops[len(regions):])
        note = (f"score = mean drop of the target score over the windows holding that region / word, replaced by "
                f"the baseline: {len(regions)} windows of {p['window']}x{p['window']} regions (stride "
                f"{p['stride']}) and {len(words)} of {p['word_window']} word(s); {len(variants)} forwards")
        return make_result(adapter, spec, target, self.name, reg, tok, params=p, t0=t0, notes=[note])
