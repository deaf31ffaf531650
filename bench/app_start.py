"""App cold start: `streamlit run streamlit_app.py` to the first rendered page in headless chromium.

Against a prebuilt store (VL_LENS_STORE), the clock runs from launching the server process to
the example browser showing its title and table. Baseline: a one-line Streamlit app's cold
start, measured the same way in the same run (so the figure is what VL-Lens adds on top of
Streamlit itself).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from core.paths import REPO_ROOT
from bench.common import demo_vilt, figure, median

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MINIMAL_APP = 'import streamlit as st\nst.title("Hello")\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(browser, app: Path, env: dict, selectors: list[str], timeout: float = 240.0) -> float:
    """Seconds from launching `streamlit run app` to every selector being visible in a fresh page."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    page = None
    try:
        wait_healthy(proc, url, t0, timeout)
        page = browser.new_page()
        page.goto(url, timeout=timeout * 1000)
        for sel in selectors:
            page.wait_for_selector(sel, state="visible", timeout=timeout * 1000)
        return time.perf_counter() - t0
    finally:
        if page is not None:
            page.close()
        stop(proc)


def wait_healthy(proc: subprocess.Popen, url: str, t0: float, timeout: float) -> None:
    """Until the server at ``url`` answers its health check (an exit or ``timeout`` raises)."""
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-500:] if proc.stderr else ""
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {err}")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"streamlit did not answer within {timeout:.0f} s")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(quick: bool = False) -> dict:
    from playwright.sync_api import sync_playwright

    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="vl-lens-appstart-") as tmp:
        tmp = Path(tmp)
        adapter, desc = demo_vilt()
        store = tmp / "store.zarr"
        record_examples(adapter, limited(iter(EasyVQA("test")), 30), VLStore(store, mode="a"), "vilt-easyvqa",
                        progress=False)
        minimal = tmp / "minimal_app.py"
        minimal.write_text(MINIMAL_APP)
        env = dict(os.environ, VL_LENS_STORE=str(store), VL_LENS_CACHE=str(tmp / "cache"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        app_times, base_times = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                for _ in range(repeats):  # alternate, so both see the same machine load
                    base_times.append(cold_start(browser, minimal, env, ['h1:has-text("Hello")']))
                    app_times.append(cold_start(browser, REPO_ROOT / "streamlit_app.py", env,
                                                ['h1:has-text("Examples")', '[data-testid="stDataFrame"]']))
            finally:
                browser.close()
    return {"app cold start to first page": figure(
        median(app_times), median(base_times), "s",
        f"median of {repeats}; process launch -> example browser title and table visible in headless chromium, "
        f"store of 30 examples prebuilt ({desc}); baseline = a one-line Streamlit app the same way")}
