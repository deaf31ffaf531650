"""What an attribution explains.

Classifiers (``Target``): an answer's logit, or "A rather than B" (the difference of two logits).

Generative models (``GenerationTarget``): the answers are teacher-forced after the prompt (the spec's inputs,
adapters/generative_attribution.py), and the adapter's ``forward_logits`` gives per answer token
(batch, S, 3) scores over the S teacher-forced tokens: [log-probability, logit, 1 if greedy would pick it],
each given the prompt and the answer's tokens before it. A target picks tokens of those answers:

- ``token``: token k of the first answer (default k = 0, the first answer token), its log-probability or
  its logit (``unit``);
- ``whole``: the whole first answer, the sum of its tokens' log-probabilities;
- ``contrast``: "A rather than B", answer A's whole score minus answer B's.

Token t of an answer is produced by the position before it (the prompt's last token for t = 0): the row
attention methods read (``rows``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from adapters.base import AttributionSpec
from core.errors import InputError

# The scores a generative adapter's forward returns, last axis (see the module docstring).
LOGPROB, LOGIT, IS_TOP = 0, 1, 2
UNITS = ("logprob", "logit")
GENERATION_KINDS = ("token", "whole", "contrast")
WHOLE = "whole"  # the target name of the whole generated answer


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

    def probability(self, adapter, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) probability of the answer, by the adapter's rule."""
        return adapter.answer_probabilities(logits)[:, self.answer]

    def probability_margin(self, adapter, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) probability of the answer minus the contrast's (for "A rather than B")."""
        p = adapter.answer_probabilities(logits)
        v = p[:, self.answer]
        return v - p[:, self.contrast] if self.contrast is not None else v

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,) index of the top answer (accuracy under perturbation compares it with the label)."""
        return logits.argmax(-1)

    def rows(self, spec: AttributionSpec) -> tuple[tuple[int, int, float], ...]:
        """(sequence, record token, weight) rows attention methods read: the classifier token's."""
        return ((0, int(spec.cls_token_index), 1.0),)


@dataclass(frozen=True, kw_only=True)
class GenerationTarget:
    """What is explained in a generated (teacher-forced) answer; see the module docstring.

    ``slots`` / ``contrast_slots`` index the S axis of the adapter's scores (weight +1 / -1);
    ``row_list`` holds (sequence, position, weight) of the positions that produce those tokens.
    """

    kind: str  # one of GENERATION_KINDS
    unit: str  # "logprob" or "logit" (logit: token targets only)
    text: str  # the explained token (token) or answer (whole, contrast)
    slots: tuple[int, ...]
    row_list: tuple[tuple[int, int, float], ...]
    token: int | None = None  # token index in the first answer (kind "token")
    contrast_text: str | None = None
    contrast_slots: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in GENERATION_KINDS:
            raise InputError(f"target kind must be one of {', '.join(GENERATION_KINDS)}, not {self.kind!r}")
        if self.unit not in UNITS:
            raise InputError(f"target score must be one of {', '.join(UNITS)}, not {self.unit!r}")
        if self.unit == "logit" and self.kind != "token":
            raise InputError("a logit target is one token's: the whole answer and 'A rather than B' sum "
                             "log-probabilities")
        if not self.slots:
            raise InputError("the target has no answer token to explain")

    @property
    def label(self) -> str:
        if self.kind == "token":
            return f"token {self.token} {self.text!r}" + (" (logit)" if self.unit == "logit" else "")
        if self.kind == "whole":
            return f"whole answer {self.text!r}"
        return f"{self.text!r} rather than {self.contrast_text!r}"

    def _sum(self, scores: torch.Tensor, slots, channel: int) -> torch.Tensor:
        return scores[:, list(slots), channel].sum(-1)

    def score(self, scores: torch.Tensor) -> torch.Tensor:
        """(batch, S, 3) answer-token scores -> (batch,) target score."""
        channel = LOGIT if self.unit == "logit" else LOGPROB
        s = self._sum(scores, self.slots, channel)
        if self.contrast_slots:
            s = s - self._sum(scores, self.contrast_slots, LOGPROB)
        return s

    def probability(self, adapter, scores: torch.Tensor) -> torch.Tensor:
        """(batch,) probability of the explained token, or of the whole answer (product of its tokens')."""
        return self._sum(scores, self.slots, LOGPROB).exp()

    def probability_margin(self, adapter, scores: torch.Tensor) -> torch.Tensor:
        v = self.probability(adapter, scores)
        return v - self._sum(scores, self.contrast_slots, LOGPROB).exp() if self.contrast_slots else v

    def predicted(self, scores: torch.Tensor) -> torch.Tensor:
        """(batch,) 1 when greedy decoding would write the explained tokens (each the top token), else 0."""
        return scores[:, list(self.slots), IS_TOP].amin(-1).round().long()

    def rows(self, spec: AttributionSpec) -> tuple[tuple[int, int, float], ...]:
        return self.row_list


_CONTRAST = re.compile(r"\s+(?:rather than|instead of|vs\.?|versus)\s+", re.IGNORECASE)


def split_contrast(target: str) -> list[str]:
    """"A rather than B" (or "instead of", "vs", "versus") -> [A, B]; anything else -> [it]."""
    return _CONTRAST.split(target.strip())


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


def is_generative(adapter) -> bool:
    return getattr(adapter, "architecture", "") == "generative"


def resolve_target(adapter, spec: AttributionSpec, target=None, *, unit: str = "logprob"):
    """Classifiers: None -> the top answer; an int -> that logit; "A" or "A rather than B" -> names in the
    vocabulary. Generative adapters: see ``generation_target`` (the spec fixes the teacher-forced answers)."""
    if isinstance(target, (Target, GenerationTarget)):
        return target
    if is_generative(adapter):
        return generation_target(spec, target, unit=unit)
    answers = adapter.answers()
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
        parts = split_contrast(target)
        if len(parts) == 1:
            a = _answer_index(answers, parts[0])
            return Target(answer=a, answer_name=answers[a])
        if len(parts) == 2:
            return _pair(answers, *parts)
    raise InputError(f"cannot read the target {target!r}: give an answer, or 'A rather than B'")


def _answer_slots(spec: AttributionSpec, j: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Answer ``j`` of a generative spec: its slots on the scores' S axis and (sequence, producing position)."""
    lengths = spec.extra["answer_lengths"]
    start, p = sum(lengths[:j]), spec.extra["prompt_length"]
    return list(range(start, start + lengths[j])), [(j, p + t - 1) for t in range(lengths[j])]


def generation_target(spec: AttributionSpec, target=None, *, unit: str = "logprob") -> GenerationTarget:
    """The target in a generative spec's teacher-forced answers (``spec.extra["answers"]``, texts):

    None or an int k -> token k of the first answer (default the first token); "whole" -> the whole first
    answer; "A rather than B" -> needs the spec built with answers [A, B] (``target_spec`` does that);
    any other text must be the spec's first answer (its whole score).
    """
    answers = list(spec.extra["answers"])
    tokens = spec.extra["answer_tokens"][0]
    if target is None or isinstance(target, (int, np.integer)) or (isinstance(target, str) and not target.strip()):
        k = 0 if target is None or isinstance(target, str) else int(target)
        if not 0 <= k < len(tokens):
            raise InputError(f"answer token {k} out of range: the answer has {len(tokens)} token(s) (0..{len(tokens) - 1})")
        slots, rows = _answer_slots(spec, 0)
        return GenerationTarget(kind="token", unit=unit, text=tokens[k], token=k, slots=(slots[k],),
                                row_list=((*rows[k], 1.0),))
    if not isinstance(target, str):
        raise InputError(f"cannot read the target {target!r}: give a token index, 'whole', or 'A rather than B'")
    parts = split_contrast(target)
    if len(parts) == 2:
        if len(answers) != 2 or [a.strip().lower() for a in answers] != [p.strip().lower() for p in parts]:
            raise InputError(f"'{target}': build the spec with answers {parts} (target_spec does)")
        (sa, ra), (sb, rb) = _answer_slots(spec, 0), _answer_slots(spec, 1)
        return GenerationTarget(kind="contrast", unit=unit, text=answers[0], contrast_text=answers[1], slots=tuple(sa),
                                contrast_slots=tuple(sb),
                                row_list=tuple((*r, 1.0) for r in ra) + tuple((*r, -1.0) for r in rb))
    if target.strip().lower() != WHOLE and target.strip().lower() != answers[0].strip().lower():
        raise InputError(f"'{target}' is not the explained answer {answers[0]!r}: build the spec with it "
                         "(target_spec does)")
    slots, rows = _answer_slots(spec, 0)
    return GenerationTarget(kind="whole", unit=unit, text=answers[0], slots=tuple(slots),
                            row_list=tuple((*r, 1.0) for r in rows))


def spec_answers(target) -> list[str] | None:
    """The answers a generative spec must teacher-force for ``target``: None (the generated answer) for a
    token index, "whole" or nothing; [A] for an answer text A; [A, B] for "A rather than B"."""
    if not isinstance(target, str) or not target.strip() or target.strip().lower() == WHOLE:
        return None
    return split_contrast(target)


def target_spec(adapter, image, question: str, target=None, *, unit: str = "logprob"):
    """(spec, target) for any adapter: the one entry point that builds what a target needs.

    Classifiers: ``attribution_spec`` then ``resolve_target``. Generative adapters: the spec teacher-forces
    the generated answer, or the answers the target names (``spec_answers``), then ``generation_target``.
    """
    if not is_generative(adapter):
        spec = adapter.attribution_spec(image, question)
        return spec, resolve_target(adapter, spec, target)
    answers = spec_answers(target)
    spec = adapter.attribution_spec(image, question, answers=answers)
    if answers is not None and len(answers) == 1:
        target = WHOLE  # an answer text: its whole score
    return spec, generation_target(spec, target, unit=unit)


def target_fields(target) -> dict:
    """What a target explains, as plain fields for files (.npz) and tables: kind ("answer" / "contrast" for
    classifiers; "token" / "whole" / "contrast" for generated answers), text, contrast text ("" if none),
    token index (-1 unless kind "token") and unit ("logit" / "logprob")."""
    if isinstance(target, GenerationTarget):
        return {"target_kind": target.kind, "target_text": target.text, "target_contrast": target.contrast_text or "",
                "target_token": -1 if target.token is None else target.token, "target_unit": target.unit}
    return {"target_kind": "answer" if target.contrast is None else "contrast", "target_text": target.answer_name,
            "target_contrast": target.contrast_name or "", "target_token": -1, "target_unit": "logit"}
