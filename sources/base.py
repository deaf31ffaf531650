"""One interface for every data set: a lazy, streaming iterator of ``Example``.

A source spec is a short string (``easyvqa``, ``easyvqa:train``, and the formats in
``sources/registry``) so that the CLI, the recorder and the trainer all take the same thing.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Callable, Iterator

from PIL import Image


class SourceError(ValueError):
    """A data set could not be opened or one of its rows is unusable; the message names file and row."""


def example_id_for(image_bytes: bytes, question: str) -> str:
    """Content hash of (image bytes, question): the join key between two models' records."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(image_bytes).digest())
    h.update(question.strip().encode("utf-8"))
    return h.hexdigest()[:24]


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
        im = Image.open(io.BytesIO(self.image_bytes()))
        im.load()
        return im

    @property
    def example_id(self) -> str:
        return example_id_for(self.image_bytes(), self.question)


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


def open_source(spec: str, **options) -> DataSource:
    """Open a data set from its spec string. See README 'Bring your own data'."""
    from sources.registry import open_spec

    return open_spec(spec, **options)
