"""A folder of images plus a CSV or JSONL table of questions: the format a user makes by hand.

    folder:my_data                      (finds the one .csv / .jsonl in my_data)
    folder:my_data/questions.csv        (names the table)
    folder:my_data?file=qa.jsonl&question=prompt&answer=gold

my_data/questions.csv::

    image,question,answer
    photos/cat.jpg,What animal is this?,cat
    photos/cat.jpg,What color is the cat?,orange
    photos/street.png,How many cars are there?,

my_data/questions.jsonl (one object per line)::

    {"image": "photos/cat.jpg", "question": "What animal is this?", "answer": "cat"}
    {"image": "photos/street.png", "question": "How many cars?", "answers": ["2", "2", "3"]}

Columns: ``image`` (a path relative to the folder, or to ``images=DIR``; ``file_name`` as in
Hugging Face's imagefolder also works), ``question``, and optionally ``answer`` (one answer, score 1),
``answers`` (one answer per annotator, VQA soft scores min(1, count / 3); in a CSV separated by
``|``; in JSONL a list, or an object answer -> score) and ``id``. A row with ``choices`` (JSONL list,
or ``|``-separated in a CSV) and ``answer`` (index or text) is a multiple-choice item: see
sources/multiple_choice.py. Other column names: ``image=``, ``question=``, ``answer=``, ``id=``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from sources.base import DataSource, Example, answers_from_value, best_answer, file_image_loader, parse_options, resolve_path
from core.errors import SourceError
from sources.multiple_choice import DEFAULT_SEP, expand_item

OPTIONS = ("file", "images", "image", "question", "answer", "answers", "id", "sep")
TABLE_SUFFIXES = (".csv", ".jsonl")
IMAGE_ALIASES = ("image", "file_name", "image_path", "img")


class FolderSource(DataSource):
    name = "folder"

    def __init__(self, root: str | Path, *, file: str | None = None, images: str | None = None,
                 image_column: str | None = None, question_column: str = "question",
                 answer_column: str = "answer", answers_column: str = "answers", id_column: str = "id",
                 sep: str = DEFAULT_SEP):
        root = resolve_path(root)
        if root.is_file():
            root, file = root.parent, root.name
        if not root.is_dir():
            raise SourceError(f"folder {root} does not exist")
        self.root = root
        self.table = self._find_table(root, file)
        self.images_dir = resolve_path(images) if images else root
        if not self.images_dir.is_absolute():
            self.images_dir = root / self.images_dir
        if not self.images_dir.is_dir():
            raise SourceError(f"images directory {self.images_dir} does not exist")
        self.kind = self.table.suffix.lower()
        self.question_column = question_column
        self.answer_column = answer_column
        self.answers_column = answers_column
        self.id_column = id_column
        self.sep = sep
        self.image_column = self._check_columns(image_column)
        self._len: int | None = None

    @classmethod
    def from_spec(cls, spec: str, rest: str, query: str, **options) -> "FolderSource":
        opts = {**parse_options(query, OPTIONS, spec), **{k: v for k, v in options.items() if k in OPTIONS}}
        if not rest:
            raise SourceError(f"{spec!r}: expected folder:DIR (a folder of images with a .csv or .jsonl table)")
        return cls(rest, file=opts.get("file"), images=opts.get("images"), image_column=opts.get("image"),
                   question_column=opts.get("question", "question"), answer_column=opts.get("answer", "answer"),
                   answers_column=opts.get("answers", "answers"), id_column=opts.get("id", "id"),
                   sep=opts.get("sep", DEFAULT_SEP))

    @staticmethod
    def _find_table(root: Path, file: str | None) -> Path:
        if file:
            p = root / file
            if not p.is_file():
                raise SourceError(f"table {p} does not exist")
            if p.suffix.lower() not in TABLE_SUFFIXES:
                raise SourceError(f"table {p} must be a .csv or .jsonl file")
            return p
        found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
        if not found:
            raise SourceError(f"folder {root} has no .csv or .jsonl table of questions (columns: image, question, "
                              f"optional answer); see docs/data.md")
        if len(found) > 1:
            raise SourceError(f"folder {root} has several tables ({', '.join(p.name for p in found)}); "
                              f"name one: folder:{root}?file={found[0].name}")
        return found[0]

    # ---- reading rows ----------------------------------------------------------------------------
    def _rows(self) -> Iterator[tuple[str, dict]]:
        """(where, row) in file order; streams the table."""
        name = self.table.name
        if self.kind == ".csv":
            with open(self.table, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue
                    yield f"{name} line {reader.line_num}", row
        else:
            with open(self.table, encoding="utf-8-sig") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{name} line {n}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise SourceError(f"{name} line {n}: expected a JSON object, got {type(row).__name__}")
                    yield f"{name} line {n}", row

    def _columns(self) -> list[str]:
        if self.kind == ".csv":
            with open(self.table, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise SourceError(f"{self.table}: the CSV is empty (expected a header: image,question,answer)")
            return [h.strip() for h in header]
        for _, row in self._rows():
            return list(row)
        raise SourceError(f"{self.table}: the table has no rows")

    def _check_columns(self, image_column: str | None) -> str:
        cols = self._columns()
        if self.question_column not in cols:
            raise SourceError(f"{self.table}: no question column {self.question_column!r} (columns: "
                              f"{', '.join(cols)}); name it with ?question=COLUMN")
        if image_column:
            if image_column not in cols:
                raise SourceError(f"{self.table}: no image column {image_column!r} (columns: {', '.join(cols)})")
            return image_column
        for c in IMAGE_ALIASES:
            if c in cols:
                return c
        raise SourceError(f"{self.table}: no image column (looked for {', '.join(IMAGE_ALIASES)}; columns: "
                          f"{', '.join(cols)}); name it with ?image=COLUMN")

    def _examples(self, where: str, row: dict, index: int) -> list[Example]:
        q = row.get(self.question_column)
        if q is None or (isinstance(q, str) and not q.strip()):
            raise SourceError(f"{where}: the question ({self.question_column!r}) is missing or empty")
        img = row.get(self.image_column)
        if img is None or not str(img).strip():
            raise SourceError(f"{where}: the image ({self.image_column!r}) is missing or empty")
        path = Path(str(img).strip())
        path = path if path.is_absolute() else self.images_dir / path
        loader = file_image_loader(path, where)
        rid = row.get(self.id_column)
        key = f"folder/{self.table.stem}/{rid if rid not in (None, '') else index}"
        base_meta = {"where": where, "image_path": str(path)}
        choices = row.get("choices")
        if choices not in (None, ""):
            if isinstance(choices, str):
                choices = [c.strip() for c in choices.split("|")]
            answer = row.get(self.answer_column)
            if isinstance(answer, str) and answer.strip().lstrip("-").isdigit():
                answer = int(answer)
            item = {"question": str(q), "choices": choices, "answer": answer if answer != "" else None}
            return expand_item(item, where=where, item_id=key, image_loader=loader, sep=self.sep,
                               base_meta=base_meta)
        answers = {}
        many = row.get(self.answers_column)
        if many not in (None, ""):
            if isinstance(many, str):
                many = [a.strip() for a in many.split("|")]
            answers = answers_from_value(many, where)
        one = row.get(self.answer_column)
        if not answers and one not in (None, ""):
            answers = answers_from_value(one, where)
        label = best_answer(answers, prefer=str(one).strip() if isinstance(one, str) else None)
        return [Example(source_key=key, question=str(q), load_image_bytes=loader, label=label, answers=answers,
                        meta=base_meta)]

    # ---- the interface ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Example]:
        for i, (where, row) in enumerate(self._rows()):
            yield from self._examples(where, row, i)

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(len(self._examples(w, r, i)) for i, (w, r) in enumerate(self._rows()))
        return self._len

    def answers(self) -> list[str]:
        from collections import Counter

        c = Counter(ex.label for ex in self if ex.label)
        return [a for a, _ in c.most_common()]
