"""Which models the app offers: the shipped demo models whose weights are on disk, plus real hub
models only when the host can reach the Hugging Face hub.

A Space (online) offers ViLT VQA and LXMERT VQA next to the easy-VQA demos; this offline machine,
or any host with HF_HUB_OFFLINE=1, offers the demos alone, so no choice in the app ends in a
download that cannot happen. The Ask page calls ``ask_models()`` (these plus any given in
VL_LENS_ASK_MODELS); the decision lives here only.
"""
from __future__ import annotations

import os
from pathlib import Path

from adapters.registry import ADAPTERS, DEMO_MODELS, MODELS
from core.paths import REPO_ROOT

_TRUE = ("1", "true", "yes", "on")


def hub_online() -> bool:
    """False when the host is told to stay offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set true)."""
    return not any(os.environ.get(var, "").strip().lower() in _TRUE
                   for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def demo_weights_present(name: str, *, root: Path = REPO_ROOT) -> bool:
    _adapter, source = MODELS[name]
    return (Path(root) / source / "config.json").is_file()


def offered_models(*, online: bool | None = None, root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Model names (keys of adapters.registry.MODELS) the app can load here, demos first.

    Demo models: listed in DEMO_MODELS with their weights present under ``root``.
    Hub models: every other named model whose adapter is registered, only when ``online``
    (default: ``hub_online()``). Models of adapters not in this build are never offered.
    """
    online = hub_online() if online is None else online
    demos = [n for n in DEMO_MODELS
             if n in MODELS and MODELS[n][0] in ADAPTERS and demo_weights_present(n, root=root)]
    hub = []
    if online:
        hub = [n for n, (adapter, source) in MODELS.items()
               if n not in DEMO_MODELS and adapter in ADAPTERS and not Path(root, source).exists()
               and not source.startswith(("demo/", "/", "."))]
    return tuple(demos + hub)


def ask_models(*, online: bool | None = None, root: Path = REPO_ROOT) -> dict[str, str]:
    """Display name -> model spec for adapters.registry.load_model: the models given as
    VL_LENS_ASK_MODELS="name=ADAPTER:DIR_OR_HUB_ID,..." (tests use a tiny model) first, then
    ``offered_models()``."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in os.environ.get("VL_LENS_ASK_MODELS", "").split(","))):
        name, _, spec = item.partition("=")
        out[name.strip()] = (spec or name).strip()
    for name in offered_models(online=online, root=root):
        out.setdefault(name, name)
    return out
