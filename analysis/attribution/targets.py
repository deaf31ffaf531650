"""What an attribution explains: an answer's logit, or "A rather than B" (the difference of two logits)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from adapters.base import AttributionSpec
from core.errors import InputError


@dataclass(frozen=True, kw_only=True)
class Target:
    """What is explained: answer ``answer`` (logit index), optionally "rather than" ``contrast``."""

    answer: int
    answer_name: str
    contrast: int | None = None
    contrast_name: str | None = None

    def __post_init__(self):
        if self.contrast is not None and self.contrast == self.answer:
            raise InputError(f"'{self.answer_name} rather than {self.contrast_name}': pick two different answers")

    @property
    def label(self) -> str:
        if self.contrast is None:
            return self.answer_name
        return f"{self.answer_name} rather than {self.contrast_name}"

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, answers) logits -> (batch,) target score."""
        s = logits[:, self.answer]
        if self.contrast is not None:
            s = s - logits[:, self.contrast]
        return s


_CONTRAST = re.compile(r"\s+(?:rather than|instead of|vs\.?|versus)\s+", re.IGNORECASE)


def _answer_index(answers: list[str], name: str) -> int:
    key = name.strip()
    if key in answers:
        return answers.index(key)
    lowered = [a.lower() for a in answers]
    if key.lower() in lowered:
        return lowered.index(key.lower())
    shown = ", ".join(answers[:20]) + (" ..." if len(answers) > 20 else "")
    raise InputError(f"unknown answer {name!r}; this model's answers: {shown}")


def _pair(answers: list[str], a_name: str, b_name: str) -> Target:
    a, b = (_answer_index(answers, str(n)) for n in (a_name, b_name))
    return Target(answer=a, answer_name=answers[a], contrast=b, contrast_name=answers[b])


def resolve_target(adapter, spec: AttributionSpec, target=None) -> Target:
    """None -> the top answer; an int -> that logit; "A" or "A rather than B" -> names in the vocabulary."""
    answers = adapter.answers()
    if isinstance(target, Target):
        return target
    if target is None or (isinstance(target, str) and not target.strip()):
        with torch.no_grad():
            logits = adapter.forward_logits(**spec.inputs)
        i = int(logits[0].argmax())
        return Target(answer=i, answer_name=answers[i])
    if isinstance(target, (int, np.integer)):
        if not 0 <= int(target) < len(answers):
            raise InputError(f"answer index {target} out of range (0..{len(answers) - 1})")
        return Target(answer=int(target), answer_name=answers[int(target)])
    if isinstance(target, (tuple, list)) and len(target) == 2:
        return _pair(answers, *target)
    if isinstance(target, str):
        parts = _CONTRAST.split(target.strip())
        if len(parts) == 1:
            a = _answer_index(answers, parts[0])
            return Target(answer=a, answer_name=answers[a])
        if len(parts) == 2:
            return _pair(answers, *parts)
    raise InputError(f"cannot read the target {target!r}: give an answer, or 'A rather than B'")
