"""The repository root, and where VL-Lens writes: a cache directory, never the working directory
(a Space mounts the code read-only)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """$VL_LENS_CACHE, else $HF_HOME/vl-lens, else ~/.cache/vl-lens; falls back to /tmp if unwritable."""
    for candidate in (os.environ.get("VL_LENS_CACHE"),
                      os.environ.get("HF_HOME") and str(Path(os.environ["HF_HOME"]) / "vl-lens"),
                      str(Path.home() / ".cache" / "vl-lens"), "/tmp/vl-lens"):
        if not candidate:
            continue
        p = Path(candidate)
        try:
            p.mkdir(parents=True, exist_ok=True)
            probe = p / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            return p
        except OSError:
            continue
    raise RuntimeError("no writable cache directory (set VL_LENS_CACHE)")


def default_store() -> str:
    """$VL_LENS_STORE, else the demo store in the cache directory."""
    return os.environ.get("VL_LENS_STORE") or str(cache_dir() / "demo_store.zarr")
