"""Public mode: which stores a visitor may make the server open.

A public deployment (the Docker Space sets ``VL_LENS_PUBLIC=1``) must not open whatever a stranger
types into ``?store=`` or the sidebar: a server path reads another user's files, and an ``http://``
URL makes the server send requests on the visitor's behalf (to hosts only it can reach). In public
mode a store opens only when it is

- the app's own store (``core.paths.default_store()``: the demo store, or ``VL_LENS_STORE``), or
- a local directory at or under a root named in ``VL_LENS_ALLOWED_STORES``, or
- a URL starting with a prefix named there (``https://host/path/``; a prefix ends at a ``/``, so
  ``https://host`` does not admit ``https://host.evil.example``).

``VL_LENS_ALLOWED_STORES`` is a comma-separated list. Everything here is a pure function of the
location and the environment, so it is tested without Streamlit; ``ui.state.open_store`` calls
``check_store`` before anything is opened or fetched. Off (``make run``), every location opens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from core.errors import StoreError

ENV_PUBLIC = "VL_LENS_PUBLIC"
ENV_ALLOWED = "VL_LENS_ALLOWED_STORES"
_TRUE = ("1", "true", "yes", "on")

REFUSED = ("This public VL-Lens opens only its own stores (the demo store and the ones its host allows); "
           "the store asked for was not opened.")


@dataclass(frozen=True, kw_only=True)
class StorePolicy:
    """What may be opened. ``public=False`` admits everything (a local, single-user app)."""

    public: bool
    own_store: str
    local_roots: tuple[Path, ...] = ()
    url_prefixes: tuple[str, ...] = ()

    def __post_init__(self):
        bad = [p for p in self.url_prefixes if not _is_url(p) or not p.endswith("/")]
        if bad:
            raise ValueError(f"URL prefixes must be scheme://host/... ending with '/': {bad}")
        if any(not p.is_absolute() for p in self.local_roots):
            raise ValueError("local store roots must be absolute paths")


def public_mode(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(ENV_PUBLIC, "").strip().lower() in _TRUE


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _resolved(path: str) -> Path:
    """Absolute, with '..' and symbolic links resolved, so neither can step outside a root."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def policy_from_env(own_store: str, env: Mapping[str, str] = os.environ) -> StorePolicy:
    """The policy the host configured: ``VL_LENS_PUBLIC`` and ``VL_LENS_ALLOWED_STORES``."""
    roots, prefixes = [], []
    for item in filter(None, (s.strip() for s in env.get(ENV_ALLOWED, "").split(","))):
        if _is_url(item):
            prefixes.append(item if item.endswith("/") else item + "/")
        else:
            roots.append(_resolved(item.removeprefix("file://")))
    return StorePolicy(public=public_mode(env), own_store=own_store, local_roots=tuple(roots),
                       url_prefixes=tuple(prefixes))


def store_allowed(location: str, policy: StorePolicy) -> bool:
    """True when ``policy`` lets the server open ``location`` (a path, ``file://`` path or URL)."""
    if not policy.public:
        return True
    location = location.strip()
    if not location:
        return False
    if location == policy.own_store:
        return True
    if _is_url(location):
        # '::' chains fsspec protocols (simplecache::http://...); '..' segments climb out of a prefix.
        if "::" in location or "/../" in location or location.endswith("/.."):
            return False
        return any(location.startswith(p) or location + "/" == p for p in policy.url_prefixes)
    if "::" in location:
        return False
    path = _resolved(location.removeprefix("file://"))
    own = policy.own_store
    if not _is_url(own) and "::" not in own and path == _resolved(own.removeprefix("file://")):
        return True
    return any(path == root or root in path.parents for root in policy.local_roots)


def check_store(location: str, policy: StorePolicy) -> None:
    """Raise StoreError with one line (that does not echo the visitor's text) when refused."""
    if not store_allowed(location, policy):
        raise StoreError(REFUSED)
