"""Public mode: a visitor cannot make the server open a store outside the allow-list, every cache is
bounded, and the Streamlit settings a public app needs are in .streamlit/config.toml."""
from __future__ import annotations

import ast
import shutil
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.public import REFUSED, StorePolicy, check_store, policy_from_env, store_allowed
from core.errors import StoreError

ROOT = Path(__file__).resolve().parent.parent


# ---- the policy, as pure functions ------------------------------------------------------------------
@pytest.fixture
def layout(tmp_path):
    """own store, an allowed root with a store in it, a directory beside it, and a symlink out of the root."""
    (tmp_path / "cache/demo_store.zarr").mkdir(parents=True)
    (tmp_path / "shared/a.zarr").mkdir(parents=True)
    (tmp_path / "private/b.zarr").mkdir(parents=True)
    (tmp_path / "shared/escape").symlink_to(tmp_path / "private")
    env = {"VL_LENS_PUBLIC": "1", "VL_LENS_ALLOWED_STORES": f"{tmp_path / 'shared'}, https://hub.example/data/"}
    return tmp_path, policy_from_env(str(tmp_path / "cache/demo_store.zarr"), env)


@pytest.mark.parametrize("rel,allowed", [
    ("cache/demo_store.zarr", True),            # the app's own store
    ("cache/demo_store.zarr/", True),
    ("shared/a.zarr", True),                    # under an allowed root
    ("shared", True),
    ("private/b.zarr", False),                  # outside every root
    ("shared/../private/b.zarr", False),        # '..' climbs out
    ("shared/escape/b.zarr", False),            # a symbolic link points out
    ("cache", False),                           # the own store's folder is not a root
    ("sharedX/a.zarr", False),                  # a root is a folder, not a string prefix
])
def test_local_paths(layout, rel, allowed):
    tmp, policy = layout
    assert store_allowed(str(tmp / rel), policy) is allowed
    assert store_allowed("file://" + str(tmp / rel), policy) is allowed


@pytest.mark.parametrize("url,allowed", [
    ("https://hub.example/data/run.zarr", True),
    ("https://hub.example/data/", True),
    ("https://hub.example/data", True),
    ("https://hub.example/other/run.zarr", False),
    ("https://hub.example.evil.test/data/run.zarr", False),   # the prefix ends at a '/'
    ("https://hub.example/data/../secret.zarr", False),
    ("http://hub.example/data/run.zarr", False),              # another scheme
    ("http://127.0.0.1:8080/x", False),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("simplecache::https://hub.example/data/run.zarr", False),  # fsspec chaining
    ("memory://x", False),
    ("", False),
    ("   ", False),
])
def test_urls(layout, url, allowed):
    _, policy = layout
    assert store_allowed(url, policy) is allowed


def test_off_admits_everything_and_on_refuses_with_one_line(tmp_path):
    off = policy_from_env(str(tmp_path / "own.zarr"), {})
    assert not off.public
    assert store_allowed("http://127.0.0.1:1/x", off) and store_allowed("/etc", off)
    on = policy_from_env(str(tmp_path / "own.zarr"), {"VL_LENS_PUBLIC": "true"})
    with pytest.raises(StoreError) as e:
        check_store("/etc/passwd", on)
    assert str(e.value) == REFUSED and "\n" not in REFUSED and "/etc" not in str(e.value)
    check_store(str(tmp_path / "own.zarr"), on)  # the own store: no error


def test_own_store_may_be_a_url():
    policy = policy_from_env("https://hub.example/demo.zarr", {"VL_LENS_PUBLIC": "1"})
    assert store_allowed("https://hub.example/demo.zarr", policy)
    assert not store_allowed("https://hub.example/demo.zarr/../other.zarr", policy)
    assert not store_allowed("https://hub.example/other.zarr", policy)


def test_bad_policy_is_refused_when_made():
    with pytest.raises(ValueError):
        StorePolicy(public=True, own_store="/x", url_prefixes=("https://host",))
    with pytest.raises(ValueError):
        StorePolicy(public=True, own_store="/x", local_roots=(Path("relative"),))


# ---- the app: refusals, with nothing opened or fetched ----------------------------------------------
class _Listener:
    """An HTTP server on 127.0.0.1 that counts the requests it receives."""

    def __init__(self):
        self.paths: list[str] = []
        seen = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    lst = _Listener()
    yield lst
    lst.close()


@pytest.fixture
def opened(monkeypatch):
    """Every location the store layer opens (the lowest level: before any zarr or fsspec call)."""
    import store.zarr_store as zs
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    seen: list[str] = []
    real = zs._open_store

    def spy(location, read_only):
        seen.append(str(location))
        return real(location, read_only)

    monkeypatch.setattr(zs, "_open_store", spy)
    return seen


def _app(monkeypatch, own: Path, public: bool) -> AppTest:
    monkeypatch.setenv("VL_LENS_STORE", str(own))
    monkeypatch.delenv("VL_LENS_ALLOWED_STORES", raising=False)
    if public:
        monkeypatch.setenv("VL_LENS_PUBLIC", "1")
    else:
        monkeypatch.delenv("VL_LENS_PUBLIC", raising=False)
    return AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def test_url_in_the_link_is_neither_opened_nor_fetched(monkeypatch, tiny_store, listener, opened):
    at = _app(monkeypatch, tiny_store, public=True)
    at.query_params["store"] = f"http://127.0.0.1:{listener.port}/x"
    at.run()
    assert not at.exception, at.exception
    assert _errors(at) == [REFUSED]
    assert listener.paths == []
    assert not any("127.0.0.1" in loc for loc in opened)
    assert not at.dataframe  # no store content shown


def test_path_outside_the_allow_list_is_refused(monkeypatch, tiny_store, tmp_path, opened):
    other = tmp_path / "other.zarr"
    shutil.copytree(tiny_store, other)
    at = _app(monkeypatch, tiny_store, public=True)
    at.query_params["store"] = str(other)
    at.run()
    assert not at.exception, at.exception
    assert _errors(at) == [REFUSED]
    assert str(other) not in opened and not at.dataframe
    # the same link with public mode off opens it: the refusal is public mode's doing
    at = _app(monkeypatch, tiny_store, public=False)
    at.query_params["store"] = str(other)
    at.run()
    assert not _errors(at) and len(at.dataframe[0].value) == 6
    assert str(other) in opened


def test_sidebar_entry_outside_the_allow_list_is_refused(monkeypatch, tiny_store, tmp_path, listener, opened):
    at = _app(monkeypatch, tiny_store, public=True)
    at.run()
    assert not _errors(at) and len(at.dataframe[0].value) == 6  # the own store opens
    for entry in (str(tmp_path), f"http://127.0.0.1:{listener.port}/y.zarr"):
        at.text_input(key="store_input").input(entry).run()
        assert not at.exception, at.exception
        assert _errors(at) == [REFUSED], entry
    assert listener.paths == [] and set(opened) == {str(tiny_store)}


def test_allowed_root_opens_in_public_mode(monkeypatch, tiny_store, tmp_path):
    other = tmp_path / "shared" / "other.zarr"
    shutil.copytree(tiny_store, other)
    at = _app(monkeypatch, tiny_store, public=True)
    monkeypatch.setenv("VL_LENS_ALLOWED_STORES", str(tmp_path / "shared"))
    at.query_params["store"] = str(other)
    at.run()
    assert not at.exception and not _errors(at)
    assert len(at.dataframe[0].value) == 6


# ---- every cache bounded ------------------------------------------------------------------------------
def _cache_decorators(path: Path):
    """(function name, decorator call) for every st.cache_data / st.cache_resource decorator in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(target, ast.Attribute) and target.attr in ("cache_data", "cache_resource"):
                yield node.name, dec


def _front_end_files() -> list[Path]:
    return [ROOT / "streamlit_app.py", *sorted((ROOT / "views").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py"))]


def test_every_cache_is_bounded():
    found, unbounded = 0, []
    for path in _front_end_files():
        for name, dec in _cache_decorators(path):
            found += 1
            bound = next((k.value for k in getattr(dec, "keywords", []) if k.arg == "max_entries"), None)
            ok = isinstance(bound, ast.Constant) and isinstance(bound.value, int) and 0 < bound.value <= 1024
            if not ok:
                unbounded.append(f"{path.relative_to(ROOT)}:{dec.lineno} {name}")
    assert found >= 10  # the scan sees the app's caches (a broken scan would pass vacuously)
    assert not unbounded, "caches without a max_entries bound: " + ", ".join(unbounded)


def test_the_scan_catches_an_unbounded_cache(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import streamlit as st\n@st.cache_resource\ndef a(): ...\n"
                   "@st.cache_data(show_spinner=False)\ndef b(): ...\n@st.cache_data(max_entries=4)\ndef c(): ...\n")
    got = {name: getattr(dec, "keywords", None) for name, dec in _cache_decorators(src)}
    assert set(got) == {"a", "b", "c"} and got["a"] is None
    assert [k.arg for k in got["b"]] == ["show_spinner"]


def test_upload_cache_holds_bounded_bytes():
    """The upload cache keeps decoded images reduced to MAX_SIDE px, so it holds at most
    max_entries x MAX_SIDE² x 3 bytes whatever visitors upload (the page module runs Streamlit on
    import, so its source is read)."""
    tree = ast.parse((ROOT / "views/ask.py").read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decode_upload")
    entries = next(k.value.value for k in fn.decorator_list[0].keywords if k.arg == "max_entries")
    call = next(n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "decode_image")
    side = next(k.value for k in call.keywords if k.arg == "max_side")
    assert isinstance(side, ast.Name) and side.id == "MAX_SIDE"
    assert entries * consts["MAX_SIDE"] ** 2 * 3 <= 64 * 2**20


def test_decode_reduces_to_max_side():
    import io

    import numpy as np
    from PIL import Image

    from sources.images import decode_image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((900, 1200, 3), np.uint8)).save(buf, format="PNG")
    assert max(decode_image(buf.getvalue(), max_side=512).size) == 512


# ---- Streamlit settings -------------------------------------------------------------------------------
def test_streamlit_config_for_a_public_app():
    cfg = tomllib.loads((ROOT / ".streamlit/config.toml").read_text())
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["toolbarMode"] == "viewer"  # no Deploy button, no developer menu
    assert 0 < cfg["server"]["maxUploadSize"] <= 50
    assert cfg["server"]["fileWatcherType"] in ("poll", "none")  # watchdog would watch .venv recursively
