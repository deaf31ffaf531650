"""Spec string -> DataSource. One place that knows every format."""
from __future__ import annotations

from sources.base import DataSource, SourceError


def open_spec(spec: str, split: str | None = None, **options) -> DataSource:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "easyvqa":
        from sources.easyvqa import EasyVQA

        return EasyVQA(split=rest or split or "test")
    raise SourceError(f"unknown data set spec {spec!r}; known: easyvqa[:train|test]")
