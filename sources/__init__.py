"""Data set loaders behind one interface (see sources/base.py).

Named ``sources`` rather than ``datasets`` so it never shadows the Hugging Face library.
"""
from core.errors import SourceError
from sources.base import DataSource, Example
from sources.registry import open_spec as open_source

__all__ = ["Example", "DataSource", "open_source", "SourceError"]
