"""Where a checkpoint comes from (a local directory or a hub id), and the one message when it cannot load."""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import AdapterError
from core.paths import REPO_ROOT


def resolve_source(source: str | Path) -> tuple[str, bool]:
    """(path or hub id, is_local). Relative paths are tried against the repository root too."""
    p = Path(source)
    if p.exists():
        return str(p), True
    if not p.is_absolute() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p), True
    if str(source).startswith((".", "/", "~")) or os.sep in str(source) and str(source).count("/") > 1:
        raise AdapterError(f"model directory {source} does not exist")
    return str(source), False


def load_error(source: str, exc: Exception) -> AdapterError:
    """A one-line AdapterError for a checkpoint that failed to load (offline hubs get their own hint)."""
    msg = str(exc)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in msg.lower() or "connect" in msg.lower():
        return AdapterError(f"cannot load {source!r}: it is not a local directory and the Hugging Face hub is "
                            f"not reachable (offline). Download it on a connected machine and pass its directory.")
    return AdapterError(f"cannot load {source!r}: {msg.splitlines()[0] if msg else type(exc).__name__}")
