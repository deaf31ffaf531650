"""Tiny random models built offline from configs (and their tokenizers / processors), for the tests and
the benchmarks alike. Nothing here is a test: tests/ and bench/ both import it."""
