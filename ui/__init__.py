"""Streamlit glue shared by the pages: store / run pickers, cached reads, URL state.

No numerics here (analysis/ computes) and no model code (adapters/ knows models).
"""
