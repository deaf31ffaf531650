"""An attribution result drawn as the Ask page draws it: region scores over the image, one bar per word."""
from __future__ import annotations

from typing import TYPE_CHECKING

import altair as alt
import numpy as np

from analysis.words import group_word_pieces
from charts.bars import word_bars
from charts.overlay import overlay

if TYPE_CHECKING:  # the result only; importing analysis.attribution would load torch into every chart user
    from analysis.attribution import AttributionResult


def attribution_overlay(image: np.ndarray, result: AttributionResult, *, opacity: float = 0.7,
                        width: int = 320) -> alt.LayerChart:
    """``result``'s region scores (R,) over its region boxes (R, 4) on ``image`` (y, x, 3) uint8;
    diverging colours when some score is negative."""
    labels = [f"region {i}" for i in range(len(result.region_boxes))]
    return overlay(image, result.region_boxes, result.region_scores, labels=labels, value_title="attribution",
                   opacity=opacity, signed=bool((result.region_scores < 0).any()), width=width)


def attribution_word_bars(result: AttributionResult, question: str | None = None) -> alt.Chart:
    """One bar per word of ``result``'s tokens (T,): word pieces joined, their scores summed; an unknown
    token shown as the question's word it stands for."""
    words = group_word_pieces(result.tokens, result.token_scores, result.token_is_special, question=question)
    return word_bars(words.words, words.scores, special=words.special)
