"""The VQA evaluation's answer normalization: the one rule for "is this answer the label".

Used by the VQA source (to match annotators' answers to a model's label set) and by the Record (a
generated answer is correct when it normalizes to the label's normal form). It lives at the bottom
layer because the Record, which sits there, needs it.
"""
from __future__ import annotations

import re
from functools import lru_cache

# Simplified from the VQA evaluation script; the same effect on common answers.
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "hasnt": "hasn't",
                 "havent": "haven't", "shouldnt": "shouldn't", "couldnt": "couldn't", "wouldnt": "wouldn't",
                 "im": "i'm", "ive": "i've", "thats": "that's", "whats": "what's", "youre": "you're"}


@lru_cache(maxsize=65536)  # answers repeat a lot: 'yes', 'no', '2' are most of VQAv2
def normalize_answer(answer: str) -> str:
    """VQA-evaluation style normalization: 'Two dogs.' -> '2 dogs', 'the red one' -> 'red 1'."""
    t = " ".join(str(answer).replace("\n", " ").replace("\t", " ").lower().split())
    for p in _PUNCT:
        if (p + " " in t or " " + p in t) or _COMMA_IN_NUMBER.search(t):
            t = t.replace(p, "")
        else:
            t = t.replace(p, " ")
    t = _PERIOD.sub("", t)
    words = []
    for w in t.split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)
