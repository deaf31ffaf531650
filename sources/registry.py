"""Spec string -> DataSource. One place that knows every format.

A spec is ``KIND:ARGUMENTS[?key=value&key=value]``:

    easyvqa[:train|test]
    vqa:QUESTIONS.json,ANNOTATIONS.json,IMAGES_DIR[?image_pattern=...&normalize=0]
    vqa:QUESTIONS.json,IMAGES_DIR                  (no annotations: questions only, no labels)
    folder:DIR[?file=NAME.csv&image=...&question=...&answer=...]
    hf:NAME_OR_DIR[:SPLIT][?image=...&question=...&answer=...&answers=...&id=...]
    mc:FILE.jsonl[?images=DIR&sep=...&label=yesno|none]   (multiple choice, VCR style)

The options after ``?`` are the same keyword options ``open_spec`` takes (the CLI passes only the
spec and ``--split``), so a spec string alone says everything. See docs/data.md.
"""
from __future__ import annotations

from sources.base import DataSource
from core.errors import SourceError

KNOWN = ("easyvqa[:train|test]", "vqa:QUESTIONS.json,ANNOTATIONS.json,IMAGES_DIR", "folder:DIR",
         "hf:NAME_OR_DIR[:SPLIT]", "mc:FILE.jsonl")


def split_spec(spec: str) -> tuple[str, str, str]:
    """'kind:rest?query' -> (kind, rest, query)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError("empty data set spec; known: " + ", ".join(KNOWN))
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    rest, _, query = rest.partition("?")
    return kind.strip().lower(), rest.strip(), query


def open_spec(spec: str, split: str | None = None, **options) -> DataSource:
    kind, rest, query = split_spec(spec)
    if kind == "easyvqa":
        from sources.easyvqa import EasyVQA

        return EasyVQA(split=rest or split or "test")
    if kind == "vqa":
        from sources.vqa import VQASource

        return VQASource.from_spec(spec, rest, query, **options)
    if kind == "folder":
        from sources.folder import FolderSource

        return FolderSource.from_spec(spec, rest, query, **options)
    if kind == "hf":
        from sources.hf import HFSource

        return HFSource.from_spec(spec, rest, query, split=split, **options)
    if kind in ("mc", "multiple-choice", "multiple_choice"):
        from sources.multiple_choice import MultipleChoiceSource

        return MultipleChoiceSource.from_spec(spec, rest, query, **options)
    raise SourceError(f"unknown data set spec {spec!r}; known: {', '.join(KNOWN)}")
