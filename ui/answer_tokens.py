"""The Ask page's generated answer, token by token (Streamlit glue).

One chip per generated token with its probability when it was chosen; clicking a chip picks that
token (the first is picked to start, and clicking the picked chip again keeps it: a token is always
picked). Then what to explain: that token (its log-probability or logit), the whole answer (the sum
of its tokens' log-probabilities), or the answer rather than another one the person types.

The callers key these widgets by model and example id, so another model or input starts from its
own answer's first token, never a position or a choice made for the previous answer.
"""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from analysis.attribution.targets import UNITS, WHOLE, split_contrast
from analysis.generated import AnswerTokens

TARGET_KINDS = {"token": "This token", "answer": "The whole answer", "contrast": "The answer rather than another"}
UNIT_TITLES = {"logprob": "log-probability", "logit": "logit"}


@dataclass(frozen=True, kw_only=True)
class AnswerTarget:
    """What is explained about a generated answer: ``kind`` "token" (generated token ``token``, its
    ``unit`` score, log-probability or logit, given everything before it), "answer" (the sum of its
    tokens' log-probabilities) or "contrast" (the answer's score minus that of the answer ``contrast``)."""

    kind: str
    token: int = 0
    contrast: str | None = None
    unit: str = "logprob"

    def __post_init__(self):
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"kind: one of {', '.join(TARGET_KINDS)}, not {self.kind!r}")
        if (self.kind == "contrast") != (self.contrast is not None):
            raise ValueError("contrast: the other answer, given exactly when kind is 'contrast'")
        if self.unit not in UNITS or (self.unit == "logit" and self.kind != "token"):
            raise ValueError(f"unit: {' or '.join(UNITS)}, and a logit only for one token, not {self.unit!r}")

    def argument(self, answer: AnswerTokens) -> tuple:
        """(target, unit) as analysis.attribution.resolve_target reads them (token index, "whole", or
        "A rather than B"): hashable, the page's cache key."""
        if self.kind == "token":
            return self.token, self.unit
        return (WHOLE if self.kind == "answer" else f"{answer.text} rather than {self.contrast}"), self.unit

    def label(self, answer: AnswerTokens) -> str:
        """How the page names it: "'blue' (token 2 of 3 of 'a blue one')", "'a blue one'", "'red' rather than 'blue'"."""
        if self.kind == "token":
            score = ", its logit" if self.unit == "logit" else ""
            return f"'{answer.tokens[self.token]}' (token {self.token + 1} of {len(answer)} of '{answer.text}'{score})"
        if self.kind == "answer":
            return f"'{answer.text}'"
        return f"'{answer.text}' rather than '{self.contrast}'"


def token_chips(answer: AnswerTokens) -> list[str]:
    """One label per generated token, "text · probability", all different: the widget tells chips apart
    by their labels, so a label seen before gets the token's position ("blue · 0.05 · #3")."""
    labels: list[str] = []
    for i, (tok, p) in enumerate(zip(answer.tokens, answer.probabilities)):
        label = f"{tok} · {p:.2f}"
        labels.append(label if label not in labels else f"{label} · #{i + 1}")
    return labels


def pick_token(answer: AnswerTokens, *, key: str) -> int:
    """Chips of the generated tokens (text · probability); the picked token's position (0 to start)."""
    last = f"{key}__last"
    st.session_state.setdefault(key, 0)
    st.session_state.setdefault(last, 0)

    def keep_one_picked() -> None:  # a second click on the picked chip would leave none picked
        if st.session_state.get(key) is None:
            st.session_state[key] = st.session_state[last]
        st.session_state[last] = st.session_state[key]

    chips = token_chips(answer)
    picked = st.pills("Generated tokens (click one to explain it)", list(range(len(answer))), key=key,
                      format_func=chips.__getitem__, selection_mode="single", on_change=keep_one_picked,
                      help="Each token with the probability it had when the model chose it (greedy decoding).")
    return int(picked if picked is not None else st.session_state[last])


def pick_target(answer: AnswerTokens, token: int, *, key: str) -> AnswerTarget | None:
    """The target choice; None while "rather than" waits for the other answer to be typed."""
    c_kind, c_other = st.columns([2, 1])
    kind = c_kind.radio("Explain", list(TARGET_KINDS), format_func=TARGET_KINDS.get, horizontal=True,
                        key=f"{key}_kind")
    if kind == "token":
        unit = c_other.radio("Score", UNITS, format_func=UNIT_TITLES.get, horizontal=True, key=f"{key}_unit",
                             help="The token's log-probability, or its logit (before the softmax over the vocabulary).")
        return AnswerTarget(kind="token", token=token, unit=unit)
    if kind == "answer":
        return AnswerTarget(kind="answer")
    other = c_other.text_input("Other answer", key=f"{key}_other", max_chars=100,
                               placeholder="an answer the model did not give").strip()
    if not other:
        st.info("Type the other answer to explain why the model gave its answer rather than that one.")
        return None
    if other == answer.text:
        st.warning(f"'{other}' is the model's own answer: type a different one.")
        return None
    target = AnswerTarget(kind="contrast", contrast=other)
    if len(split_contrast(target.argument(answer)[0])) != 2:  # "rather than" inside one of the answers
        st.warning("An answer with 'rather than', 'instead of', 'vs' or 'versus' in it cannot be contrasted.")
        return None
    return target
