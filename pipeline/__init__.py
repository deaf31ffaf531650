"""The record pipeline: source -> adapter -> head statistics -> store.

Everything that computes Records and writes them sits here (the store only persists): the one
resume-aware recording loop (``record``), parallel recording with Dask (``parallel``) and importers of
other tools' formats (``importers``).
"""
