"""Errors that more than one layer raises or catches, each with a message a person can act on.

They live here, below everything, so that a data source, the store and a view can all catch an
adapter's ``InputError`` without importing the adapters.
"""
from __future__ import annotations


class StoreError(RuntimeError):
    """The store or run cannot be opened, read or written; the message says why."""


class RecordError(ValueError):
    """A Record (or part of one) violates the schema; the message names the field."""


class AdapterError(RuntimeError):
    """A model could not be loaded or run; the message says why and what to do."""


class InputError(ValueError):
    """The user's input (image, question) cannot be used; the message says why."""


class SourceError(ValueError):
    """A data set cannot be opened or one of its rows cannot be read; the message names the row."""
