"""Build the demo store: easy-VQA test examples recorded with every shipped demo model.

Every model of DEMO_MODELS (the classifiers and the generative llava-easyvqa) records the same first
``limit`` test examples, so Compare lines every pair up on all of them.

    python -m demo.build_store [--out PATH] [--limit 120]

The app calls ``ensure_demo_store`` on first start: the store is built once, under a file lock, even
when several visitors (threads of one server, or several server processes) arrive at the same moment.
"""
from __future__ import annotations

import argparse
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: a single local user, no lock
    fcntl = None

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


@contextmanager
def _exclusive(lock_path: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``; call ``on_wait`` once if another holder makes us wait.

    flock belongs to the open file, so two threads of one process exclude each other as two
    processes do, and the OS releases it when its holder dies (no stale lock after a crash).
    """
    with open(lock_path, "a+") as fh:
        if fcntl is not None:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_store(location: str | Path, *, on_wait: Callable[[], None] | None = None, **build) -> bool:
    """Build the demo store at ``location`` unless it exists; True when this call built it.

    The build writes ``<location>.building`` and renames it when complete, so ``location`` exists
    only complete. The first caller builds under ``<location>.lock``; a caller arriving meanwhile
    waits (``on_wait`` is told once), then finds the finished store and returns False. Only the lock
    holder removes a ``.building`` folder (one left by a build that was killed). ``build`` goes to
    ``build_demo_store`` (limit, models, on_progress, progress).
    """
    loc = Path(location)
    if loc.exists():
        return False
    loc.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(loc.with_name(loc.name + ".lock"), on_wait):
        if loc.exists():  # built by whoever held the lock before us
            return False
        tmp = loc.with_name(loc.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        build_demo_store(tmp, **build)
        tmp.rename(loc)
    return True


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
