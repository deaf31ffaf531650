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


DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device accepts ("cuda:N" picks one GPU)


def resolve_device(device: str | None) -> str:
    """The torch device to run on: "auto" (or None) is the first GPU when one is visible (CUDA,
    then Apple's MPS), else the CPU. Asking for a GPU that is not there is a one-line AdapterError."""
    import torch

    name = (device or "auto").strip().lower()
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (":" in name and (kind != "cuda" or not index.isdigit())):
        raise AdapterError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} (or cuda:N)")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise AdapterError(f"device {device!r}: no CUDA GPU is visible to torch {torch.__version__} "
                               "(use --device cpu, or auto to take a GPU only when there is one)")
        if index and int(index) >= torch.cuda.device_count():
            raise AdapterError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind == "mps" and not mps_ok:
        raise AdapterError(f"device {device!r}: Apple's MPS backend is not available here (use --device cpu or auto)")
    return name
