"""`cli.py models`: list adapters and named models."""
from __future__ import annotations


def add_arguments(p):
    pass


def run(args) -> int:
    from adapters.registry import ADAPTERS, MODELS, adapter_class

    print("adapters:")
    for name in sorted(ADAPTERS):
        try:
            cls = adapter_class(name)
            print(f"  {name:10s} {cls.architecture:14s} {cls.description}")
        except Exception as e:  # an adapter whose optional dependency is missing still lists
            print(f"  {name:10s} (unavailable: {e})")
    print("models (use with --model; or ADAPTER:HUB_ID_OR_DIR):")
    for name, (adapter, source) in sorted(MODELS.items()):
        print(f"  {name:16s} {adapter:8s} {source}")
    return 0
