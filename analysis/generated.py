"""A generated answer token by token: each generated token as a person reads it, with the probability
it had when greedy decoding chose it. Read from a generative adapter's attribution spec (the one built
for the answer the model generates: adapters/generative_attribution.py): the Ask page shows these
tokens and explains them from that same spec, so it never explains a token the model did not write;
or from a Record (role "answer"), for a model whose attribution spec cannot be built."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from adapters.base import AttributionSpec
from analysis.words import token_text
from store.schema import Record


@dataclass(frozen=True, kw_only=True)
class AnswerTokens:
    """The answer ``text`` and, per generated token (A,): display text, probability, special flag
    (an end-of-sequence or template token); ``stopped``: it ended on an end-of-sequence token."""

    text: str
    tokens: tuple[str, ...]  # (A,)
    probabilities: tuple[float, ...]  # (A,)
    special: tuple[bool, ...]  # (A,)
    stopped: bool = True

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


def answer_tokens(spec: AttributionSpec, *, end_ids: Sequence[int] = ()) -> AnswerTokens:
    """The generated answer of ``spec`` (a spec of the generated answer, not of given answer texts);
    ``end_ids``: the adapter's end-of-sequence token ids."""
    extra = spec.extra
    if "generated_token_probabilities" not in extra or extra.get("answers", (None,))[0] != extra.get("generated"):
        raise ValueError("not the spec of a generated answer (built for given answer texts, or by a classifier)")
    raw, ids = extra["answer_tokens"][0], extra["answer_ids"][0]
    modality = spec.record_modality[len(spec.record_modality) - len(raw):]
    return AnswerTokens(text=extra["generated"], tokens=tuple(token_text(t) for t in raw),
                        probabilities=tuple(float(p) for p in extra["generated_token_probabilities"]),
                        special=tuple(m == "special" for m in modality),
                        stopped=bool(ids) and int(ids[-1]) in {int(i) for i in end_ids})


def record_answer_tokens(record: Record) -> AnswerTokens:
    """The generated tokens of ``record`` in generation order (empty for a classifier's record); whether
    it stopped is not recorded: an answer cut at the token limit says so in the record's notices."""
    idx = record.answer_indices()
    return AnswerTokens(text=record.prediction.top, tokens=tuple(token_text(record.tokens[i]) for i in idx),
                        probabilities=tuple(float(p) for p in record.prediction.token_probabilities),
                        special=tuple(record.modality[i] == "special" for i in idx))
