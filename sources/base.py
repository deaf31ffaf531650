"""One interface for every data set: a lazy, streaming iterator of ``Example``.

A source spec is a short string (``easyvqa``, ``easyvqa:train``, and the formats in
``sources/registry``) so that the CLI, the recorder and the trainer all take the same thing.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from core.errors import SourceError
from core.ids import example_id_of


@dataclass(frozen=True, kw_only=True)
class Example:
    """One image + question, with its answer(s) when known.

    ``load_image`` is lazy so that listing a large data set reads no pixels.
    ``answers`` maps answer -> soft score in [0, 1] (VQA: min(1, count / 3)); ``label`` is the
    best-scored answer.
    """

    source_key: str  # stable name inside its data set, e.g. "easyvqa/test/17"
    question: str
    load_image_bytes: Callable[[], bytes] = field(repr=False, compare=False)
    label: str | None = None
    answers: dict[str, float] = field(default_factory=dict)
    group: str | None = None  # multiple-choice item this candidate belongs to
    meta: dict = field(default_factory=dict)

    def image_bytes(self) -> bytes:
        return self.load_image_bytes()

    def image(self) -> Image.Image:
        """The decoded RGB image; an unreadable file raises SourceError naming the file and row."""
        from core.errors import InputError
        from sources.images import decode_image

        data = self.image_bytes()
        where = self.meta.get("where") or self.source_key
        try:
            return decode_image(data, name=f"image of {where}")
        except InputError as e:
            raise SourceError(f"{where}: {e}") from None

    @property
    def example_id(self) -> str:
        return example_id_of(self.image(), self.question)


class DataSource:
    """A named, sized, lazily read collection of examples."""

    name: str = "source"

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[Example]:  # pragma: no cover - interface
        raise NotImplementedError

    def answers(self) -> list[str]:
        """The answer vocabulary when the data set defines one (used for training heads)."""
        return []


def read_image_file(path: str | Path, where: str) -> bytes:
    """The one place every loader reads an image file (tests count the calls to check streaming)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{where}: image file {path} does not exist") from None
    except IsADirectoryError:
        raise SourceError(f"{where}: image path {path} is a directory, not an image file") from None
    except OSError as e:
        raise SourceError(f"{where}: cannot read image file {path} ({e.strerror or e})") from None


def file_image_loader(path: str | Path, where: str) -> Callable[[], bytes]:
    """A lazy loader for an image file: nothing is read until the example's image is asked for.

    Looks ``read_image_file`` up at call time, so a test can count reads by patching it.
    """
    import sources.base as this

    return lambda: this.read_image_file(path, where)


def soft_scores(annotator_answers: Iterable[str]) -> dict[str, float]:
    """VQA soft scores from the answers of the annotators: min(1, count / 3) per distinct answer."""
    counts: dict[str, int] = {}
    for a in annotator_answers:
        if a:
            counts[a] = counts.get(a, 0) + 1
    return {a: min(1.0, c / 3.0) for a, c in counts.items()}


def best_answer(answers: dict[str, float], prefer: str | None = None) -> str | None:
    """The highest-scored answer; ties go to ``prefer`` (e.g. VQA's multiple_choice_answer), then first seen."""
    if not answers:
        return None
    top = max(answers.values())
    if prefer is not None and answers.get(prefer) == top:
        return prefer
    return next(a for a, s in answers.items() if s == top)


def answers_from_value(value, where: str) -> dict[str, float]:
    """Answer scores from the forms data sets use.

    - a string: that answer, score 1;
    - a list of strings, or of {"answer": ...} dicts (one per annotator): VQA soft scores;
    - a dict answer -> score: taken as given (scores must lie in [0, 1]).
    """
    if value is None:
        return {}
    if isinstance(value, float) and value != value:  # NaN from a blank CSV cell
        return {}
    if isinstance(value, str):
        v = value.strip()
        return {v: 1.0} if v else {}
    if isinstance(value, dict):
        if "answer" in value and not isinstance(value.get("answer"), (int, float)):
            return answers_from_value(value["answer"], where)
        out = {}
        for a, sc in value.items():
            try:
                f = float(sc)
            except (TypeError, ValueError):
                raise SourceError(f"{where}: answer score for {a!r} is not a number: {sc!r}") from None
            if not 0.0 <= f <= 1.0:
                raise SourceError(f"{where}: answer score for {a!r} must lie in [0, 1], got {f}")
            out[str(a).strip()] = f
        return out
    if isinstance(value, (list, tuple)):
        flat = []
        for item in value:
            if isinstance(item, dict):
                if "answer" not in item:
                    raise SourceError(f"{where}: an entry of the answers list has no 'answer' key: {item!r}")
                flat.append(str(item["answer"]).strip())
            else:
                flat.append(str(item).strip())
        return soft_scores(flat)
    if isinstance(value, (int, float, bool)):
        return {str(value).lower() if isinstance(value, bool) else str(value): 1.0}
    raise SourceError(f"{where}: cannot read answers from a {type(value).__name__}")


def mark_label_set(examples: Iterable[Example], label_set: Iterable[str]) -> Iterator[Example]:
    """Stream examples with ``meta['label_in_model']`` (bool) and ``meta['answers_not_in_model']`` set.

    An answer the model cannot output is kept, only marked, so a run shows it instead of crashing.
    """
    known = set(label_set)
    for ex in examples:
        missing = sorted(a for a in ex.answers if a not in known)
        if ex.label is not None and ex.label not in known and ex.label not in missing:
            missing.append(ex.label)
        meta = dict(ex.meta, label_in_model=(ex.label in known) if ex.label is not None else None,
                    answers_not_in_model=missing)
        yield dataclasses.replace(ex, meta=meta)


def parse_options(query: str, allowed: Iterable[str], spec: str) -> dict[str, str]:
    """``key=value&key=value`` (the part of a spec after '?') -> dict; unknown keys are refused."""
    from urllib.parse import parse_qsl

    allowed = set(allowed)
    out = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if k not in allowed:
            raise SourceError(f"data set spec {spec!r}: unknown option {k!r}; known: {', '.join(sorted(allowed))}")
        out[k] = v
    return out


def resolve_path(path: str | Path) -> Path:
    return Path(os.path.expanduser(str(path)))
