"""A generated answer token by token, read from a Record of a generative model: each generated
token as a person reads it, with the probability it had when greedy decoding chose it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.words import token_text
from store.schema import Record


@dataclass(frozen=True, kw_only=True)
class AnswerTokens:
    """The answer ``text`` and, per generated token (A,): display text, probability, special flag
    (an end-of-sequence or template token)."""

    text: str
    tokens: tuple[str, ...]  # (A,)
    probabilities: tuple[float, ...]  # (A,)
    special: tuple[bool, ...]  # (A,)

    def __post_init__(self):
        if not (len(self.tokens) == len(self.probabilities) == len(self.special)):
            raise ValueError(f"{len(self.tokens)} tokens, {len(self.probabilities)} probabilities and "
                             f"{len(self.special)} special flags")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def probability(self) -> float:
        """The whole answer's probability: the product of its tokens' (greedy decoding's chain rule)."""
        return float(np.prod(self.probabilities)) if self.probabilities else 1.0


def answer_tokens(record: Record) -> AnswerTokens:
    """The generated tokens of ``record`` in generation order (empty for a classifier's record)."""
    idx = record.answer_indices()
    probs = record.prediction.token_probabilities or (float("nan"),) * len(idx)
    return AnswerTokens(text=record.prediction.top, tokens=tuple(token_text(record.tokens[i]) for i in idx),
                        probabilities=tuple(float(p) for p in probs),
                        special=tuple(record.modality[i] == "special" for i in idx))
