"""The bottom layer: errors every layer raises, the example content hash, attention kinds, paths.

Imports nothing from the project, so every other package may import it (tests/test_import_graph.py).
"""
