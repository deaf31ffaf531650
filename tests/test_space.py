"""Hugging Face Space readiness: front matter, writes only under the cache dir, models offered by connectivity."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# ---- front matter ----------------------------------------------------------------------------------
def front_matter() -> dict[str, str]:
    """The README's leading YAML block: what a Hugging Face Space reads."""
    text = (ROOT / "README.md").read_text()
    block = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert block, "README.md does not start with a --- front matter block"
    out = {}
    for line in block.group(1).splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip().strip('"')
    return out


def test_front_matter_is_a_docker_space_on_the_image_port():
    from bench.space_check import parse_dockerfile

    fm = front_matter()
    df = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert fm["sdk"] == "docker"  # the built-in Streamlit SDK is deprecated on the Hub
    assert int(fm["app_port"]) == df.exposed_port == 7860
    assert "--server.port 7860" in " ".join(df.cmd) and "--server.address 0.0.0.0" in " ".join(df.cmd)
    assert "sdk_version" not in fm and "app_file" not in fm  # streamlit-SDK keys a Docker Space ignores


# ---- the Dockerfile -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile():
    from bench.space_check import parse_dockerfile

    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_image_installs_exactly_the_runtime_pins(dockerfile):
    """The pip steps install requirements.txt at its pins, torch from the CPU index, and no test tool."""
    from bench.space_check import read_pins, requirement_pins

    req, dev = read_pins(ROOT / "requirements.txt"), read_pins(ROOT / "requirements-dev.txt")
    files, explicit, torch_indexes = [], {}, []
    for argv in dockerfile.pip_commands:
        f, specs, indexes = requirement_pins(argv)
        files += f
        for spec in specs:
            name, _, version = spec.partition("==")
            assert version, f"unpinned pip install in the Dockerfile: {spec}"
            explicit[name.lower()] = version
            if name.lower() == "torch":
                torch_indexes += indexes
    assert files == ["requirements.txt"]  # never requirements-dev.txt
    assert all(req.get(n) == v for n, v in explicit.items()), (explicit, req)  # the same pins
    assert explicit.get("torch") == req["torch"] and torch_indexes == ["https://download.pytorch.org/whl/cpu"]
    test_tools = set(dev) - set(req)
    assert test_tools >= {"pytest", "playwright", "hypothesis"}
    assert not test_tools & set(explicit)
    assert dockerfile.pip_commands[0] and "torch==" in " ".join(dockerfile.pip_commands[0])  # CPU torch first


def test_image_runs_as_user_1000_in_public_mode(dockerfile):
    text = (ROOT / "Dockerfile").read_text()
    assert dockerfile.base == "python:3.11-slim"
    assert re.search(r"useradd[^\n]*--uid 1000 user", text) and dockerfile.user == "user"
    assert dockerfile.env["VL_LENS_PUBLIC"] == "1"
    assert dockerfile.env["STREAMLIT_SERVER_FILE_WATCHER_TYPE"] == "none"
    assert dockerfile.env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] == "false"
    assert dockerfile.env["HOME"] == "/home/user"
    # uploads inside the Hub's cross-site iframe: the XSRF cookie must be SameSite=None, protection kept on
    assert dockerfile.env["STREAMLIT_SERVER_XSRF_COOKIE_SAME_SITE"] == "none"
    assert "enableXsrfProtection" not in text and "ENABLE_XSRF_PROTECTION" not in text


def test_build_context_leaves_out_tests_and_local_state_but_keeps_the_app():
    from bench.space_check import context_files

    files = set(context_files(ROOT))
    assert "streamlit_app.py" in files and "requirements.txt" in files and ".streamlit/config.toml" in files
    assert {"demo/models/vilt-easyvqa/model.safetensors", "demo/models/vilt-easyvqa/config.json"} <= files
    assert not any(f.startswith(("tests/", ".venv/", ".git/")) for f in files)
    assert "requirements-dev.txt" not in files and not any(".zarr/" in f for f in files)


def test_dockerignore_matching():
    from bench.space_check import ignored

    pats = ["tests", "**/__pycache__", "**/*.zarr", ".venv"]
    assert ignored("tests/test_x.py", pats) and ignored("a/b/__pycache__/m.pyc", pats)
    assert ignored("out/s.zarr/zarr.json", pats) and ignored(".venv/bin/python", pats)
    assert not ignored("testkit/tiny_vilt.py", pats) and not ignored("views/tests_page.py", pats)


def test_every_committed_binary_goes_through_lfs():
    """The Hub refuses binaries pushed outside LFS/Xet: every tracked file with a NUL byte is LFS-routed."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    binaries = [f for f in files if (ROOT / f).is_file() and b"\0" in (ROOT / f).read_bytes()[:8000]]
    assert any(f.endswith(".safetensors") for f in binaries) and any(f.endswith(".png") for f in binaries)
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *binaries, "README.md", "streamlit_app.py",
                            "x.zarr/zarr.json", "x.zarr/runs/r/zarr.json", "x.zarr/runs/r/examples/e/image/c/0/0/0"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout
    got = dict(line.rsplit(": filter: ", 1) for line in attrs.splitlines())
    assert all(got[f] == "lfs" for f in binaries), {f: got[f] for f in binaries if got[f] != "lfs"}
    assert got["README.md"] == got["streamlit_app.py"] == "unspecified"
    assert got["x.zarr/zarr.json"] == got["x.zarr/runs/r/zarr.json"] == "unset"  # a store's JSON metadata stays plain text
    assert got["x.zarr/runs/r/examples/e/image/c/0/0/0"] == "lfs"  # a store's chunks


# ---- models offered -------------------------------------------------------------------------------
@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A controlled registry: two demo models (one with weights on disk), two hub models (one adapter missing)."""
    import ui.models as m

    models = {"alpha-demo": ("vilt", "demo/models/alpha"), "beta-demo": ("vilt", "demo/models/beta"),
              "alpha-hub": ("vilt", "org/alpha-vqa"), "gamma-hub": ("gamma", "org/gamma-vqa")}
    monkeypatch.setattr(m, "MODELS", models)
    monkeypatch.setattr(m, "DEMO_MODELS", ("alpha-demo", "beta-demo"))
    monkeypatch.setattr(m, "ADAPTERS", {"vilt": object})
    (tmp_path / "demo/models/alpha").mkdir(parents=True)
    (tmp_path / "demo/models/alpha/config.json").write_text("{}")
    (tmp_path / "demo/models/beta").mkdir(parents=True)  # no weights: not offered
    return tmp_path


@pytest.mark.parametrize("env,online", [({"HF_HUB_OFFLINE": "1"}, False), ({"TRANSFORMERS_OFFLINE": "true"}, False),
                                        ({}, True), ({"HF_HUB_OFFLINE": "0"}, True)])
def test_hub_models_only_when_online(registry, monkeypatch, env, online):
    import ui.models as m

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert m.hub_online() is online
    expected = ("alpha-demo", "alpha-hub") if online else ("alpha-demo",)
    assert m.offered_models(root=registry) == expected


def test_offered_models_with_the_real_registry(monkeypatch):
    from adapters.registry import ADAPTERS, DEMO_MODELS, MODELS
    from ui.models import offered_models

    offline = offered_models(online=False)
    assert set(offline) <= set(DEMO_MODELS)
    assert all((ROOT / MODELS[n][1] / "config.json").is_file() for n in offline)
    online = offered_models(online=True)
    assert online[:len(offline)] == offline  # demos first
    if "vilt" in ADAPTERS:
        assert "vilt-vqa" in online
    if "lxmert" in ADAPTERS:
        assert "lxmert-vqa" in online
    assert not any(MODELS[n][1].startswith("demo/") for n in online[len(offline):])


# ---- the app writes only under the cache dir --------------------------------------------------------
APP_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    sys.dont_write_bytecode = True
    sys.path.insert(0, {root!r})
    import adapters.registry as registry
    import demo.build_store as build
    # the tiny random ViLT stands in for the shipped demo weights; 4 examples keep it fast
    registry.MODELS["vilt-easyvqa"] = ("vilt", {tiny!r})
    build.DEMO_MODELS = ("vilt-easyvqa",)
    build.build_demo_store = functools.partial(build.build_demo_store, limit=4)
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file({app!r}, default_timeout=600)
    at.run()
    from core.paths import cache_dir, default_store
    print(json.dumps({{"exceptions": [str(e.value) for e in at.exception], "errors": [e.value for e in at.error],
                      "rows": len(at.dataframe[0].value) if len(at.dataframe) else 0,
                      "cache": str(cache_dir()), "store": default_store()}}))
""")


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "__pycache__", ".hypothesis")]
        for f in filenames:
            p = Path(dirpath) / f
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _read_only_mount_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_app_writes_only_under_the_cache_dir(tmp_path, tiny_vilt_dir):
    """First start with no store: the demo store is built under VL_LENS_CACHE, the repository is untouched.

    As root, the repository is bind-mounted read-only for the app process (any write would fail);
    otherwise the repository is compared before and after.
    """
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VL_LENS_")}
    env.update(HOME=str(home), VL_LENS_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("HF_HOME", None)
    script = APP_SCRIPT.format(root=str(ROOT), tiny=str(tiny_vilt_dir), app=str(ROOT / "streamlit_app.py"))
    cmd = [sys.executable, "-c", script]
    read_only = _read_only_mount_available()
    if read_only:
        cmd = ["unshare", "-m", "sh", "-c",
               f'mount --bind "{ROOT}" "{ROOT}" && mount -o remount,bind,ro "{ROOT}" && exec "$@"', "sh", *cmd]
    before = snapshot(ROOT)
    out = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert not res["exceptions"] and not res["errors"], res
    assert res["rows"] == 4  # the demo store was built and the Examples page lists it
    assert res["cache"] == str(cache) and res["store"] == str(cache / "demo_store.zarr")
    assert (cache / "demo_store.zarr" / "zarr.json").is_file()
    assert not (cache / "demo_store.zarr.building").exists()
    from store.zarr_store import VLStore

    assert VLStore(cache / "demo_store.zarr").run("vilt-easyvqa").example_ids()
    assert snapshot(ROOT) == before, "the app wrote into the repository"
    assert not any(home.rglob("*.zarr")), "the store belongs in VL_LENS_CACHE, not HOME"


def test_cache_dir_order_and_fallback(tmp_path, monkeypatch):
    from core.paths import cache_dir

    monkeypatch.setenv("VL_LENS_CACHE", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("VL_LENS_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_dir() == tmp_path / "hf" / "vl-lens"
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the directory should be: not writable, fall through
    monkeypatch.setenv("VL_LENS_CACHE", str(blocker / "sub"))
    monkeypatch.setenv("HF_HOME", str(blocker / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "vl-lens"


# ---- the demo store is built once, however many first visitors arrive -------------------------------
BUILDER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import adapters.registry as registry
    import demo.build_store as build
    registry.MODELS["vilt-easyvqa"] = ("vilt", {tiny!r})
    real = build.build_demo_store
    def slow_build(out, **kw):  # the build takes a while: the other visitor arrives in the middle
        time.sleep(1.5)
        return real(out, **kw)
    build.build_demo_store = slow_build
    me, other = Path({go!r} + sys.argv[1]), Path({go!r} + sys.argv[2])
    me.touch()
    while not other.exists():  # both processes imported everything: start together
        time.sleep(0.01)
    waited = []
    built = build.ensure_demo_store({loc!r}, on_wait=lambda: waited.append(1), models=["vilt-easyvqa"],
                                    limit=3, progress=False)
    from store.zarr_store import VLStore
    n = len(VLStore({loc!r}).run("vilt-easyvqa").example_ids())
    print(json.dumps({{"built": built, "waited": bool(waited), "examples": n}}))
""")


@pytest.mark.slow
def test_two_first_visitors_build_the_demo_store_once(tmp_path, tiny_vilt_dir):
    loc = tmp_path / "cache" / "demo_store.zarr"
    script = BUILDER_SCRIPT.format(root=str(ROOT), tiny=str(tiny_vilt_dir), go=str(tmp_path / "ready-"),
                                   loc=str(loc))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    procs = [subprocess.Popen([sys.executable, "-c", script, me, other], env=env, cwd=str(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["built"] for r in results) == [False, True]  # exactly one built it
    waiter = next(r for r in results if not r["built"])
    assert waiter["waited"]  # it arrived during the build and waited on the lock
    assert [r["examples"] for r in results] == [3, 3]  # both read the complete store
    assert not (tmp_path / "cache" / "demo_store.zarr.building").exists()


def test_a_killed_build_is_started_over(tmp_path, monkeypatch):
    """A .building folder left by a dead builder is removed by the next lock holder, not reused."""
    import demo.build_store as build

    loc = tmp_path / "demo_store.zarr"
    stale = tmp_path / "demo_store.zarr.building"
    (stale / "junk").mkdir(parents=True)
    calls = []

    def fake_build(out, **kw):
        calls.append((Path(out).exists(), kw))
        (Path(out) / "zarr.json").parent.mkdir(parents=True)
        (Path(out) / "zarr.json").write_text("{}")

    monkeypatch.setattr(build, "build_demo_store", fake_build)
    assert build.ensure_demo_store(loc, limit=2) is True
    assert calls == [(False, {"limit": 2})]  # the stale folder was gone before the build began
    assert (loc / "zarr.json").is_file() and not stale.exists()
    assert build.ensure_demo_store(loc, limit=2) is False and len(calls) == 1  # built once


# ---- concurrent sessions: the compute gate ----------------------------------------------------------
def _run_threads(gate, keys, hold_s=0.05):
    """Each thread holds ``gate`` for its key; returns the peak number inside at once, overall and per key."""
    import threading
    import time
    from collections import Counter

    inside, per_key, peak, peak_key = [0], Counter(), [0], Counter()
    lock = threading.Lock()

    def work(key):
        with gate.hold(key):
            with lock:
                inside[0] += 1
                per_key[key] += 1
                peak[0] = max(peak[0], inside[0])
                peak_key[key] = max(peak_key[key], per_key[key])
            time.sleep(hold_s)
            with lock:
                inside[0] -= 1
                per_key[key] -= 1

    threads = [threading.Thread(target=work, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a thread is stuck in the gate"
    return peak[0], max(peak_key.values())


def test_gate_bounds_computations_across_sessions():
    from ui.compute import ComputeGate

    peak, _ = _run_threads(ComputeGate(2), [f"model-{i}" for i in range(8)])
    assert peak == 2  # never more than the slots, and the slots are used
    peak, peak_per_model = _run_threads(ComputeGate(3), ["one-model"] * 6)
    assert peak == peak_per_model == 1  # one model: one computation at a time (its hooks are shared)


def test_gate_is_reentrant_and_counts_the_queue():
    import threading

    from ui.compute import ComputeGate, queue_message

    gate = ComputeGate(1)
    with gate.hold("a"):
        with gate.hold("a"), gate.hold("b"):  # nested in one thread: no deadlock
            assert gate.running() == 1
    assert gate.running() == 0 and queue_message(gate) is None
    release, entered = threading.Event(), threading.Event()

    def holder():
        with gate.hold("a"):
            entered.set()
            release.wait(10)

    def waiter():
        with gate.hold("b"):
            pass

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    entered.wait(10)
    threads.append(threading.Thread(target=waiter))
    threads[1].start()
    for _ in range(200):
        if gate.waiting() == 1:
            break
        threading.Event().wait(0.01)
    assert gate.running() == 1 and gate.waiting() == 1 and gate.busy()
    assert queue_message(gate).startswith("2 requests from other visitors are being computed (at most 1 at a time")
    release.set()
    for t in threads:
        t.join(10)
    assert gate.running() == gate.waiting() == 0 and not gate.busy()


def test_gate_releases_after_an_error():
    from ui.compute import ComputeGate

    gate = ComputeGate(1)
    with pytest.raises(ZeroDivisionError):
        with gate.hold("m"):
            1 / 0
    assert _run_threads(gate, ["m", "m"]) == (1, 1)  # not left locked


def test_slots_from_env():
    from ui.compute import ComputeGate, slots_from_env

    assert slots_from_env({}) == 2 and slots_from_env({"VL_LENS_COMPUTE_SLOTS": "4"}) == 4
    assert slots_from_env({"VL_LENS_COMPUTE_SLOTS": "0"}) == 1 and slots_from_env({"VL_LENS_COMPUTE_SLOTS": "x"}) == 2
    with pytest.raises(ValueError):
        ComputeGate(0)


def test_every_model_computation_of_ask_holds_the_gate():
    """Each cached function of the Ask page that runs a model (calls get_adapter) does so inside GATE.hold."""
    import ast

    tree = ast.parse((ROOT / "views/ask.py").read_text())
    computing = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name != "get_adapter"
                 and any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "get_adapter" for c in ast.walk(n))]
    assert {f.name for f in computing} >= {"get_spec", "top_answers", "forward_seconds", "run_method", "deletion"}
    for fn in computing:
        holds = [w for w in ast.walk(fn) if isinstance(w, ast.With)
                 and any("GATE.hold" in ast.unparse(item.context_expr) for item in w.items)]
        assert holds, f"{fn.name} runs the model outside GATE.hold"


# ---- the load test's arithmetic (bench/load.py; the run itself is heavy and not part of the suite) ----
def test_load_summary_medians_worst_and_errors():
    from bench.load import PAGES, Visit, format_table, summarize

    visits = [Visit(latency={p: 1.0 + i for p in PAGES}, errors=[]) for i in range(3)]
    visits.append(Visit(latency={PAGES[0]: 10.0}, errors=["attention: TimeoutError: "]))
    s = summarize(visits, peak_rss=300 * 2**20, wall_s=12.34)
    assert s["sessions"] == 4 and s["errors"] == 1 and s["error_samples"] == ["attention: TimeoutError: "]
    assert s["pages"][PAGES[0]] == {"median_s": 2.5, "worst_s": 10.0, "n": 4}  # median of 1, 2, 3, 10
    assert s["pages"][PAGES[1]] == {"median_s": 2.0, "worst_s": 3.0, "n": 3}  # the failed visit has none
    assert s["server_peak_rss_mb"] == 300 and s["wall_s"] == 12.3
    table = format_table(s, s)
    assert "| errors | 1 | 1 |" in table and "| server peak RSS | 300 MB | 300 MB |" in table


def test_memory_sampler_sees_a_child_grow(tmp_path):
    """The sampler follows the server's process tree: a child allocating 200 MB raises the peak."""
    from bench.load import MemorySampler

    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(3)"])
    try:
        sampler = MemorySampler(os.getpid()).start()
        time.sleep(2)
        peak = sampler.stop()
    finally:
        child.wait(10)
    from bench.load import _rss_bytes

    assert peak - _rss_bytes(os.getpid()) > 150 * 2**20


@pytest.mark.slow
def test_a_model_is_loaded_once_per_process_for_every_session(tiny_vilt_dir, monkeypatch):
    """Two sessions of the Ask page (two AppTests share the process, as two visitors share a server)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    import adapters.registry as registry

    st.cache_data.clear()
    st.cache_resource.clear()
    loads = []
    real = registry.load_model

    def counting(spec, *a, **kw):
        loads.append(spec)
        return real(spec, *a, **kw)

    monkeypatch.setattr(registry, "load_model", counting)
    monkeypatch.setenv("VL_LENS_ASK_MODELS", f"tiny=vilt:{tiny_vilt_dir}")
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "1000")
    tables = []
    for _ in range(2):
        at = AppTest.from_file(str(ROOT / "views" / "ask.py"), default_timeout=300)
        at.run()
        assert not at.exception, at.exception
        tables.append(at.dataframe[0].value)
    assert loads == [f"vilt:{tiny_vilt_dir}"]  # one load, shared by both sessions
    assert list(tables[0]["answer"]) == list(tables[1]["answer"])


@pytest.mark.slow
def test_concurrent_attributions_through_the_gate_equal_sequential_ones(tiny_vilt):
    """Six sessions' IG on one shared model at once, through the gate, give exactly the sequential maps.

    Without the gate they do not: Captum's LayerIntegratedGradients hooks the shared model's embedding
    layers, so one thread's hook fires in another's forward (measured here: 5 of 6 runs failed with
    "The size of tensor a (8) must match the size of tensor b (10)").
    """
    import threading

    import numpy as np

    from analysis.attribution import attribute, resolve_target
    from sources.easyvqa import EasyVQA
    from ui.compute import ComputeGate

    src = EasyVQA("test")
    jobs = [(src[i].image(), src[i].question) for i in range(6)]

    def ig(image, question):
        spec = tiny_vilt.attribution_spec(image, question)
        return attribute(tiny_vilt, spec, resolve_target(tiny_vilt, spec, None), "ig", n_steps=8).region_scores

    sequential = [ig(*job) for job in jobs]
    gate, out, errors = ComputeGate(4), [None] * len(jobs), []

    def session(k):
        try:
            with gate.hold("tiny-vilt"):
                out[k] = ig(*jobs[k])
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=session, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for a, b in zip(sequential, out):
        np.testing.assert_array_equal(a, b)


def test_ask_link_opens_with_the_methods_it_names(tiny_vilt_dir, monkeypatch):
    """?methods=rollout,relevance (what the load test's visitors open) runs those two methods only."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    monkeypatch.setenv("VL_LENS_ASK_MODELS", f"tiny=vilt:{tiny_vilt_dir}")
    monkeypatch.setenv("VL_LENS_ASK_LONG_SECONDS", "1000")
    at = AppTest.from_file(str(ROOT / "views" / "ask.py"), default_timeout=300)
    at.query_params["methods"] = "rollout,relevance,nonsense"
    at.run()
    assert not at.exception, at.exception
    assert at.multiselect(key="ask_methods").value == ["rollout", "relevance"]  # unknown names dropped
    md = " ".join(m.value for m in at.markdown)
    assert "Attention rollout" in md and "Gradient-weighted relevance" in md and "Integrated Gradients" not in md
    assert set(at.dataframe[1].value["order"]) == {"rollout", "relevance", "random"}
