"""Data set loaders behind one interface (see sources/base.py).

Named ``sources`` rather than ``datasets`` so it never shadows the Hugging Face library.
"""
from sources.base import Example, DataSource, open_source
from core.errors import SourceError

__all__ = ["Example", "DataSource", "open_source", "SourceError"]
