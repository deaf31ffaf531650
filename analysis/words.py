"""Word pieces joined back into words, for display: WordPiece splits "wearing" into "w", "##e", ...,
and a person reads words, so bars and notices show one row per word with its pieces' scores summed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONTINUATION = "##"  # WordPiece marks a piece that continues the previous word
UNKNOWN = "[UNK]"
_BASIC_WORDS = re.compile(r"\w+|[^\w\s]")  # BERT's basic split: runs of word characters, single punctuation


@dataclass(frozen=True, kw_only=True)
class Words:
    """Tokens grouped into words. All arrays have one entry per word (W,)."""

    words: tuple[str, ...]  # display text: pieces joined without "##"; an unknown token shows the question's word
    scores: np.ndarray  # (W,) float64, sum of the pieces' scores
    special: np.ndarray  # (W,) bool: a special token ([CLS], [SEP]) kept as its own entry
    unknown: np.ndarray  # (W,) bool: the tokenizer read it as [UNK]
    pieces: tuple[tuple[int, ...], ...]  # (W,) token positions of each word's pieces

    @property
    def split(self) -> list[str]:
        """Words the model read as several pieces (not in its vocabulary as whole words)."""
        return [w for w, p, s in zip(self.words, self.pieces, self.special) if len(p) > 1 and not s]


def group_word_pieces(tokens: Sequence[str], scores: np.ndarray | None = None, special: Sequence[bool] | None = None,
                      *, question: str | None = None) -> Words:
    """Join WordPiece continuations ("##x") onto the word before them; special tokens stay alone.

    tokens: (T,) token strings; scores: (T,) floats (zeros if None); special: (T,) bools.
    question: when given and its basic words line up one to one with the grouped words, an unknown
    token is shown as the question's word it stands for ("zebra" rather than "[UNK]").
    """
    toks = [str(t) for t in tokens]
    sc = np.zeros(len(toks)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    sp = np.zeros(len(toks), bool) if special is None else np.asarray(special, bool).reshape(-1)
    if not (len(sc) == len(sp) == len(toks)):
        raise ValueError(f"{len(toks)} tokens, {len(sc)} scores and {len(sp)} special flags")
    groups: list[list[int]] = []
    for i, t in enumerate(toks):
        joins = t.startswith(CONTINUATION) and not sp[i] and groups and not sp[groups[-1][0]]
        if joins:
            groups[-1].append(i)
        else:
            groups.append([i])
    words = ["".join(toks[j].removeprefix(CONTINUATION) if k else toks[j] for k, j in enumerate(g)) for g in groups]
    gspecial = np.array([bool(sp[g[0]]) for g in groups], bool)
    unknown = np.array([any(toks[j] == UNKNOWN for j in g) for g in groups], bool)
    if question is not None:
        words = _name_unknowns(words, gspecial, unknown, question)
    return Words(words=tuple(words), scores=np.array([sc[g].sum() for g in groups], np.float64), special=gspecial,
                 unknown=unknown, pieces=tuple(tuple(g) for g in groups))


def _name_unknowns(words: list[str], special: np.ndarray, unknown: np.ndarray, question: str) -> list[str]:
    basic = _BASIC_WORDS.findall(question)
    slots = [i for i, s in enumerate(special) if not s]
    if len(basic) != len(slots):  # no one-to-one alignment (a truncated question): keep "[UNK]"
        return words
    out = list(words)
    for i, word in zip(slots, basic):
        if unknown[i]:
            out[i] = word
    return out


def vocabulary_notice(words: Words) -> str | None:
    """One line naming the words the model does not know, or None when it knows them all."""
    unknown = [w for w, u in zip(words.words, words.unknown) if u]
    split = [w for w in words.split if w not in unknown]
    parts = []
    if unknown:
        parts.append(f"unknown to this model (read as {UNKNOWN}): {', '.join(unknown)}")
    if split:
        parts.append(f"not in its vocabulary, read as pieces: {', '.join(split)}")
    return ("Words " + "; words ".join(parts) + ". The answer may not rest on what they mean.") if parts else None


# Tokenizers' word-boundary marks: SentencePiece's "▁" and byte-level BPE's "Ġ" (a space), "Ċ" (a newline).
_BOUNDARY_MARKS = {"\u2581": " ", "\u0120": " ", "\u010a": "\n"}


def token_text(token: str) -> str:
    """A generated token as a person reads it: boundary marks as spaces, trimmed; a token of only
    white space shows as "␣" (or "⏎" for a newline), so no chip on the page is blank."""
    text = "".join(_BOUNDARY_MARKS.get(ch, ch) for ch in str(token))
    if text.strip():
        return text.strip()
    return "⏎" if "\n" in text else "␣"
