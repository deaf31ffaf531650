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


DEVICE_ENV = "VL_LENS_DEVICE"  # cpu, cuda, cuda:N or mps: overrides what "auto" picks (the app's setting)
DEVICES = ("auto", "cpu", "cuda", "mps")  # what --device accepts ("cuda:N" picks one GPU)


def resolve_device(device: str | None) -> str:
    """The torch device to run on: "auto" (or None) is the first GPU when one is visible (CUDA,
    then Apple's MPS), else the CPU. Asking for a GPU that is not there is a one-line AdapterError."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto" and os.environ.get(DEVICE_ENV, "").strip().lower() not in ("", "auto"):
        # The app's device setting (and bench --device): what "auto" means in this process.
        try:
            return resolve_device(os.environ[DEVICE_ENV])
        except AdapterError as e:
            raise AdapterError(f"{DEVICE_ENV}: {e}") from None
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


def checkpoint_info(source: str, local: bool, config=None) -> dict:
    """Where a loaded model's weights came from, for a run's provenance.

    Hub: {"kind": "hub", "id", "revision"}: the commit the files were resolved at (None when it
    cannot be told). Local directory: {"kind": "local", "path"}: the absolute path; a directory has
    no revision, so what identifies its contents is a content hash of its files, which the store adds.
    """
    if local:
        return {"kind": "local", "path": str(Path(source).resolve())}
    return {"kind": "hub", "id": str(source), "revision": hub_revision(str(source), config)}


def hub_revision(repo_id: str, config=None) -> str | None:
    """The commit hash a hub model was loaded at: older transformers put it on the config
    (``_commit_hash``); otherwise the hub cache's snapshot folder its config.json was read from
    (models--ORG--NAME/snapshots/COMMIT/, what the default branch points to, online or offline)."""
    import re

    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
    except (ImportError, ValueError, OSError):
        return None
    found = re.search(r"snapshots/([0-9a-f]{40})/", Path(cached).as_posix()) if isinstance(cached, str) else None
    return found.group(1) if found else None
