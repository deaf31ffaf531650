"""Importers of other tools' recordings into a VL-Lens store (safe loaders only, never plain pickle)."""
