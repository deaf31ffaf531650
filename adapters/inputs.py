"""Checking and encoding what a person gives every adapter: an image and a question.

One copy of the text side all adapters share: the question checked, tokenized with truncation
(and a visible notice when words are cut or none is in the vocabulary), the record's text tokens
with their modality and character spans, and word masking for baselines and occlusion.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from core.errors import InputError

IMAGE_TOKEN = "[IMG]"  # the separator token single-stream adapters put before the image tokens


def check_question(question) -> str:
    if not isinstance(question, str):
        raise InputError("the question must be text")
    q = " ".join(question.split())
    if not q:
        raise InputError("the question is empty: type a question about the image")
    return q


def check_image(image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise InputError("expected a PIL image")
    if image.width < 1 or image.height < 1:
        raise InputError("the image is empty")
    return image.convert("RGB")


@dataclass(frozen=True, kw_only=True)
class EncodedQuestion:
    """One tokenized question: ``input_ids`` / ``attention_mask`` (1, T) tensors, each position's
    character span ``offsets`` (T pairs) and notices about what the model cannot read."""

    input_ids: object
    attention_mask: object
    offsets: list
    notices: tuple[str, ...]


def encode_question(tokenizer, question: str, max_tokens: int) -> EncodedQuestion:
    """Tokenize one checked question, truncated to ``max_tokens`` with a notice when it is cut."""
    return encode_each_question(tokenizer, [question], max_tokens)[0]


def encode_each_question(tokenizer, questions: list[str], max_tokens: int) -> list[EncodedQuestion]:
    """``encode_question`` of each checked question, in two tokenizer calls for all of them (a batch's
    recording read its questions one call at a time, twice each)."""
    import torch

    full = tokenizer(questions, add_special_tokens=True)["input_ids"]
    enc = tokenizer(questions, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    unk = tokenizer.unk_token_id
    specials = set(tokenizer.all_special_ids)
    out = []
    for n_full, ids, offsets in zip((len(f) for f in full), enc["input_ids"], enc["offset_mapping"]):
        notices = []
        if n_full > max_tokens:
            notices.append(f"question truncated: {n_full} tokens, this model reads at most "
                           f"{max_tokens}; words after the cut were ignored")
        words = [i for i in ids if i not in specials or i == unk]
        if words and all(i == unk for i in words):
            notices.append("none of the question's words are in this model's vocabulary (all unknown)")
        out.append(EncodedQuestion(input_ids=torch.tensor([ids]),
                                   attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   offsets=[tuple(o) for o in offsets], notices=tuple(notices)))
    return out


def encode_questions(tokenizer, questions: list[str], max_tokens: int):
    """A training / batch encoding: each question checked, padded to the longest, truncated."""
    return tokenizer([check_question(q) for q in questions], padding="longest", truncation=True,
                     max_length=max_tokens, return_tensors="pt")


def text_inputs(input_ids, attention_mask, device, *, token_types: bool) -> dict:
    """Model keyword inputs of the text side (``token_type_ids`` all 0 when the model takes them)."""
    import torch

    out = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    if token_types:
        out["token_type_ids"] = torch.zeros_like(input_ids).to(device)
    return out


def text_layout(tokenizer, ids: list[int], offsets) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(tokens, modality, character spans) of one question's token ``ids`` (``offsets``: one span each).

    Special tokens (not the unknown token, which stands for a word) get modality "special" and
    span (-1, -1).
    """
    toks = tokenizer.convert_ids_to_tokens(ids)
    specials = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    modality = ["special" if i in specials else "text" for i in ids]
    spans = [tuple(o) if m == "text" else (-1, -1) for o, m in zip(offsets, modality)]
    return toks, modality, spans


def pad_words(input_ids, mask, pad_id: int):
    """A copy of (B, T) ``input_ids`` with the positions of ``mask`` (T,) bool set to ``pad_id``."""
    import torch

    ids = input_ids.clone()
    ids[:, torch.as_tensor(mask, dtype=torch.bool, device=ids.device)] = pad_id
    return ids


def check_batch(images, questions, labels=None, source_keys=None):
    """(checked RGB images, checked questions, labels, source keys) of one batch, all as long as
    ``images``; missing labels / source keys are None. A ragged batch is an InputError."""
    n = len(images)
    labels = [None] * n if labels is None else list(labels)
    source_keys = [None] * n if source_keys is None else list(source_keys)
    if not n or len(questions) != n or len(labels) != n or len(source_keys) != n:
        raise InputError(f"a batch needs as many questions, labels and source keys as images (got {n} images, "
                         f"{len(questions)} questions, {len(labels)} labels, {len(source_keys)} source keys)")
    return [check_image(im) for im in images], [check_question(q) for q in questions], labels, source_keys
