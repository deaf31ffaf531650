"""Build the demo store: easy-VQA test examples recorded with every shipped demo model.

    python -m demo.build_store [--out PATH] [--limit 120]

The app calls ``build_demo_store`` on first start when the store is missing.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable

from adapters.registry import DEMO_MODELS, MODELS
from core.paths import REPO_ROOT

# Examples per demo model in the store built on first start (VL_LENS_DEMO_LIMIT overrides).
DEFAULT_LIMIT = int(os.environ.get("VL_LENS_DEMO_LIMIT", "120"))


def available_demo_models() -> list[str]:
    """Demo models whose weights are present in demo/models/."""
    out = []
    for name in DEMO_MODELS:
        _, source = MODELS[name]
        if (REPO_ROOT / source / "config.json").exists():
            out.append(name)
    return out


def build_demo_store(out: str | Path, *, limit: int | None = None, models: list[str] | None = None,
                     on_progress: Callable[[str, int, int], None] | None = None, progress: bool = True) -> list[str]:
    from adapters.registry import load_model
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    limit = DEFAULT_LIMIT if limit is None else limit
    models = available_demo_models() if models is None else models
    if not models:
        raise RuntimeError("no demo model weights found under demo/models/")
    store = VLStore(out, mode="a")
    source = EasyVQA("test")
    for name in models:
        adapter = load_model(name)
        cb = (lambda i, total, n=name: on_progress(n, i, total)) if on_progress else None
        record_examples(adapter, limited(iter(source), limit), store, name, total=min(limit, len(source)),
                        progress=progress, on_progress=cb)
    return models


def main(argv=None):
    from core.paths import default_store

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="store path (default: the app's demo store)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT)
    a = p.parse_args(argv)
    out = a.out or default_store()
    models = build_demo_store(out, limit=a.limit)
    print(f"demo store {out}: {', '.join(models)} x {a.limit} easy-VQA test examples")


if __name__ == "__main__":
    main()
