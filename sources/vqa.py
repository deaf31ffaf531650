"""VQA layout (VQAv2 / COCO): a questions JSON, an annotations JSON and a folder of images.

    vqa:v2_OpenEnded_mscoco_val2014_questions.json,v2_mscoco_val2014_annotations.json,val2014

- questions file: ``{"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}, ...]}``
- annotations file (optional; leave it out or empty for test splits):
  ``{"annotations": [{"question_id", "multiple_choice_answer", "answers": [{"answer": ...}, ...]}, ...]}``
  Each annotator's answer counts once; the soft score of an answer is min(1, count / 3), as in the
  VQA evaluation and in VQA fine-tuning. The label is the best-scored answer (ties: the
  ``multiple_choice_answer``).
- images: ``COCO_<data_subtype>_<12-digit image id>.jpg`` (VQAv2 / COCO 2014), else
  ``<12-digit id>.jpg`` (COCO 2017), else ``<id>.jpg`` / ``.png``; or set ``image_pattern``
  (a format string with the fields ``{image_id}`` and ``{subtype}``, e.g. ``img_{image_id:06d}.png``).

Answers are normalized as the VQA evaluation does (lower case, punctuation, number words to
digits, articles dropped) unless ``normalize=0``, so that they match a VQA model's label set.

The JSON files are parsed on first use; images are read only when an example's image is asked
for, so streaming the first 100 questions of 200,000 reads 100 images.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterator

from sources.base import DataSource, Example, best_answer, parse_options, resolve_path, soft_scores
from core.answers import normalize_answer
from core.errors import SourceError

OPTIONS = ("image_pattern", "normalize")


def check_pattern(pattern: str, spec: str) -> str:
    """Only the fields image_id and subtype, no attribute or index access (the pattern is user text)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise SourceError(f"{spec}: image_pattern {pattern!r} is not a valid format string ({e})") from None
    for f in fields:
        if f not in ("image_id", "subtype"):
            raise SourceError(f"{spec}: image_pattern may use only {{image_id}} and {{subtype}}, not {{{f}}}")
    if not fields:
        raise SourceError(f"{spec}: image_pattern {pattern!r} must contain {{image_id}}")
    return pattern


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SourceError(f"{what} file {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{what} file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{what} file {path} must hold a JSON object, got a {type(data).__name__}")
    return data


class VQASource(DataSource):
    name = "vqa"

    def __init__(self, questions: str | Path, annotations: str | Path | None, images: str | Path, *,
                 image_pattern: str | None = None, normalize: bool = True, spec: str | None = None):
        self.questions_path = resolve_path(questions)
        self.annotations_path = resolve_path(annotations) if annotations else None
        self.images_dir = resolve_path(images)
        self.spec = spec or f"vqa:{questions},{annotations or ''},{images}"
        self.image_pattern = check_pattern(image_pattern, self.spec) if image_pattern else None
        self.normalize = normalize
        if not self.questions_path.is_file():
            raise SourceError(f"{self.spec}: questions file {self.questions_path} does not exist")
        if self.annotations_path is not None and not self.annotations_path.is_file():
            raise SourceError(f"{self.spec}: annotations file {self.annotations_path} does not exist")
        if not self.images_dir.is_dir():
            raise SourceError(f"{self.spec}: images directory {self.images_dir} does not exist")
        self._questions: list[tuple[int, int, str]] | None = None  # (question_id, image_id, question)
        self._subtype = ""
        self._answers: dict[int, tuple[dict[str, float], str | None, str | None]] | None = None

    @classmethod
    def from_spec(cls, spec: str, rest: str, query: str, **options) -> "VQASource":
        opts = {**parse_options(query, OPTIONS, spec), **{k: v for k, v in options.items() if k in OPTIONS}}
        parts = [p.strip() for p in rest.split(",")]
        if len(parts) == 3:
            q, a, im = parts
        elif len(parts) == 2:
            (q, im), a = parts, ""
        else:
            raise SourceError(f"{spec!r}: expected vqa:QUESTIONS.json,ANNOTATIONS.json,IMAGES_DIR "
                              "(or vqa:QUESTIONS.json,IMAGES_DIR without answers)")
        normalize = str(opts.get("normalize", "1")).lower() not in ("0", "false", "no", "off")
        return cls(q, a or None, im, image_pattern=opts.get("image_pattern"), normalize=normalize, spec=spec)

    # ---- parsing (once, on first use) ------------------------------------------------------------
    def _parse(self):
        if self._questions is not None:
            return
        data = _load_json(self.questions_path, "questions")
        qs = data.get("questions")
        if not isinstance(qs, list):
            raise SourceError(f"questions file {self.questions_path} has no 'questions' list "
                              f"(keys: {', '.join(map(str, data))})")
        self._subtype = str(data.get("data_subtype", ""))
        parsed = []
        qname = self.questions_path.name
        for i, q in enumerate(qs):
            try:
                parsed.append((q.get("question_id", i), q["image_id"], str(q["question"])))
            except (AttributeError, KeyError):
                where = f"{qname} question #{i}"
                if not isinstance(q, dict):
                    raise SourceError(f"{where}: expected an object, got {type(q).__name__}") from None
                missing = [k for k in ("question", "image_id") if k not in q]
                raise SourceError(f"{where}: missing {', '.join(repr(m) for m in missing)} "
                                  f"(keys: {', '.join(map(str, q))})") from None
        del data, qs
        answers = {}
        if self.annotations_path is not None:
            data = _load_json(self.annotations_path, "annotations")
            anns = data.get("annotations")
            if not isinstance(anns, list):
                raise SourceError(f"annotations file {self.annotations_path} has no 'annotations' list")
            aname = self.annotations_path.name
            norm = normalize_answer if self.normalize else (lambda x: x)
            for i, a in enumerate(anns):
                try:
                    qid = a["question_id"]
                    given = [norm(str(x["answer"]) if isinstance(x, dict) else str(x)) for x in a.get("answers") or ()]
                except (AttributeError, KeyError, TypeError):
                    raise SourceError(f"{aname} annotation #{i}: expected an object with a 'question_id' and "
                                      f"'answers' entries that each have an 'answer'") from None
                mc = a.get("multiple_choice_answer")
                mc = norm(str(mc)) if mc is not None else None
                scores = soft_scores(given) if given else ({mc: 1.0} if mc else {})
                answers[qid] = (scores, best_answer(scores, prefer=mc), a.get("answer_type"))
        self._questions = parsed
        self._answers = answers

    # ---- the interface ---------------------------------------------------------------------------
    def __len__(self) -> int:
        self._parse()
        return len(self._questions)

    def image_path(self, image_id) -> Path:
        """Where the image of ``image_id`` lies (the first existing candidate; the first if none exists)."""
        sub = self._subtype
        if self.image_pattern:
            return self.images_dir / self.image_pattern.format(image_id=image_id, subtype=sub)
        candidates = []
        if isinstance(image_id, int):
            if sub:
                candidates.append(f"COCO_{sub}_{image_id:012d}.jpg")
            candidates += [f"{image_id:012d}.jpg", f"{image_id}.jpg", f"{image_id}.png"]
        else:
            candidates += [str(image_id), f"{image_id}.jpg", f"{image_id}.png"]
        for c in candidates:
            p = self.images_dir / c
            if p.is_file():
                return p
        return self.images_dir / candidates[0]

    def __getitem__(self, i: int) -> Example:
        self._parse()
        qid, image_id, question = self._questions[i]
        where = f"{self.questions_path.name} question #{i} (question_id {qid})"
        scores, label, answer_type = self._answers.get(qid, ({}, None, None))
        path = self.image_path(image_id)

        def load(p=path, w=where):
            import sources.base as base

            if not p.is_file():
                raise SourceError(f"{w}: image file {p} does not exist"
                                  + ("" if self.image_pattern else " (set image_pattern=... if your files are "
                                                                   "named differently)"))
            return base.read_image_file(p, w)

        meta = {"where": where, "question_id": qid, "image_id": image_id, "image_path": str(path)}
        if answer_type is not None:
            meta["answer_type"] = answer_type
        return Example(source_key=f"vqa/{qid}", question=question, load_image_bytes=load, label=label,
                       answers=dict(scores), meta=meta)

    def __iter__(self) -> Iterator[Example]:
        for i in range(len(self)):
            yield self[i]

    def answers(self) -> list[str]:
        """Every answer that occurs, most frequent label first."""
        self._parse()
        from collections import Counter

        c = Counter(lab for _, lab, _ in self._answers.values() if lab)
        return [a for a, _ in c.most_common()]
