"""Multiple-choice items (VCR style): one image, one question, several candidate answers.

Each candidate becomes its own example so that a model that reads (image, text) can be recorded on
it: the text is ``"<question> [SEP] <candidate>"`` (a BERT-style tokenizer reads ``[SEP]`` as its
separator token; change it with ``sep=...``). All candidates of one item share ``Example.group``
(the item id), so the views can put them side by side, and carry ``meta['choice_index']`` and
``meta['is_correct']``. With ``label=yesno`` (the default) the label of a candidate is "yes" when it
is the right answer and "no" otherwise: the candidate is a statement to verify, which a VQA head with
yes / no answers can be recorded and fine-tuned on; ``label=none`` leaves labels empty.

    mc:items.jsonl[?images=DIR&sep=[SEP]&label=yesno]

One JSON object per line, images relative to the file's folder (or ``images=DIR``):

    {"id": "item-1", "image": "img/kitchen.png", "question": "What is the person doing?",
     "choices": ["cooking", "sleeping", "swimming"], "answer": 0}

``answer`` is the index of the right choice or its text. ``id`` is optional (default: the line
number). VCR's own annotation files also load: ``img_fn``, ``annot_id``, ``question`` and
``answer_choices`` as token lists whose object references (lists of detection indices) become the
object names (``[[0], "is", "smiling"]`` with objects ``["person"]`` -> "person0 is smiling"),
``answer_label``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from sources.base import DataSource, Example, file_image_loader, parse_options, resolve_path
from core.errors import SourceError

OPTIONS = ("images", "sep", "label")
DEFAULT_SEP = "[SEP]"


def vcr_text(tokens, objects: list[str] | None) -> str:
    """VCR token list -> text; [0, 2] object references become 'person0 and dog2'."""
    if isinstance(tokens, str):
        return tokens
    words = []
    for t in tokens:
        if isinstance(t, list):
            names = [f"{objects[i] if objects and 0 <= i < len(objects) else 'object'}{i}" for i in t]
            words.append(" and ".join(names))
        else:
            words.append(str(t))
    text = " ".join(words)
    for p in (" ?", " .", " ,", " !", " '", " n't"):
        text = text.replace(p, p.strip())
    return text


def expand_item(item: dict, *, where: str, item_id: str, image_loader, sep: str = DEFAULT_SEP,
                yes_no: bool = True, base_meta: dict | None = None) -> list[Example]:
    """One multiple-choice item -> one Example per candidate (same group)."""
    objects = item.get("objects")
    question = item.get("question")
    if question is None or (isinstance(question, str) and not question.strip()):
        raise SourceError(f"{where}: missing 'question'")
    question = vcr_text(question, objects)
    choices = item.get("choices", item.get("answer_choices"))
    if not isinstance(choices, list) or len(choices) < 2:
        raise SourceError(f"{where}: 'choices' must be a list of at least 2 candidate answers")
    choices = [vcr_text(c, objects) for c in choices]
    answer = item.get("answer", item.get("answer_label"))
    if answer is None:
        correct = None
    elif isinstance(answer, bool):
        raise SourceError(f"{where}: 'answer' must be a choice index or the choice's text")
    elif isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise SourceError(f"{where}: answer index {answer} is outside the {len(choices)} choices")
        correct = answer
    else:
        text = vcr_text(answer, objects)
        if text not in choices:
            raise SourceError(f"{where}: answer {text!r} is not one of the choices")
        correct = choices.index(text)
    out = []
    for k, c in enumerate(choices):
        is_correct = None if correct is None else (k == correct)
        label = None
        if yes_no and is_correct is not None:
            label = "yes" if is_correct else "no"
        meta = dict(base_meta or {}, where=f"{where} choice {k}", choice_index=k, choice=c,
                    question_only=question, is_correct=is_correct, n_choices=len(choices))
        out.append(Example(source_key=f"{item_id}/choice{k}", question=f"{question} {sep} {c}",
                           load_image_bytes=image_loader, label=label, answers={label: 1.0} if label else {},
                           group=str(item_id), meta=meta))
    return out


class MultipleChoiceSource(DataSource):
    name = "mc"

    def __init__(self, path: str | Path, *, images: str | Path | None = None, sep: str = DEFAULT_SEP,
                 yes_no: bool = True):
        self.path = resolve_path(path)
        if not self.path.is_file():
            raise SourceError(f"multiple-choice file {self.path} does not exist")
        self.images_dir = resolve_path(images) if images else self.path.parent
        if not self.images_dir.is_dir():
            raise SourceError(f"images directory {self.images_dir} does not exist")
        self.sep = sep
        self.yes_no = yes_no
        self._len: int | None = None

    @classmethod
    def from_spec(cls, spec: str, rest: str, query: str, **options) -> "MultipleChoiceSource":
        opts = {**parse_options(query, OPTIONS, spec), **{k: v for k, v in options.items() if k in OPTIONS}}
        if not rest:
            raise SourceError(f"{spec!r}: expected mc:FILE.jsonl")
        label = opts.get("label", "yesno").lower()
        if label not in ("yesno", "none"):
            raise SourceError(f"{spec!r}: label must be 'yesno' or 'none', not {label!r}")
        return cls(rest, images=opts.get("images"), sep=opts.get("sep", DEFAULT_SEP), yes_no=label == "yesno")

    def _items(self) -> Iterator[tuple[int, dict]]:
        """(line number, item) for every non-blank line; a JSON list file is read whole."""
        with open(self.path, encoding="utf-8") as f:
            head = f.read(1)
            while head and head.isspace():
                head = f.read(1)
            f.seek(0)
            if head == "[":
                try:
                    items = json.load(f)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{self.path}: not valid JSON ({e})") from None
                for i, it in enumerate(items):
                    yield i + 1, it
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{self.path.name} line {n}: not valid JSON ({e.msg})") from None

    def iter_items(self) -> Iterator[list[Example]]:
        """The candidates of each item, one list per item."""
        for n, item in self._items():
            where = f"{self.path.name} line {n}"
            if not isinstance(item, dict):
                raise SourceError(f"{where}: expected a JSON object")
            img = item.get("image", item.get("img_fn"))
            if not img:
                raise SourceError(f"{where}: missing 'image' (the image file, relative to {self.images_dir})")
            item_id = str(item.get("id", item.get("annot_id", f"line{n}")))
            path = self.images_dir / str(img)
            yield expand_item(item, where=where, item_id=item_id, image_loader=file_image_loader(path, where),
                              sep=self.sep, yes_no=self.yes_no, base_meta={"image_path": str(path)})

    def __iter__(self) -> Iterator[Example]:
        for candidates in self.iter_items():
            yield from candidates

    def __len__(self) -> int:
        """Number of examples (candidates), counted once without reading any image."""
        if self._len is None:
            self._len = sum(len(c) for c in self.iter_items())
        return self._len

    def answers(self) -> list[str]:
        return ["yes", "no"] if self.yes_no else []
