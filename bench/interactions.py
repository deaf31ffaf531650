"""Click to redraw: the median time from a person's action on each page to the page settling again.

One `streamlit run` of the app at ``--app`` (default: this checkout; pass another checkout to
measure the code before a change) on a demo store, driven by headless chromium. On each page one
interaction is repeated: the clock starts just before the key press or click and stops when the
app's first script (or fragment) run after it is over, i.e. the changed part is drawn (a watcher on
the app's script state, in the page, so polling adds nothing).

    python -m bench.interactions [--app DIR] [--store PATH] [--repeats 7] [--json out.json]

``run()`` (for `cli.py bench`) has no baseline of its own: the figure is the time a person waits.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.app_start import CHROMIUM, CHROMIUM_ARGS, free_port, stop, wait_healthy
from bench.common import figure
from core.paths import REPO_ROOT

# page url path -> (what is done, how): a slider moved one step by keyboard, or a toggle clicked.
INTERACTIONS = {
    "examples": ("Correctness filter", "select:Correctness"),
    "heads": ("z-score toggle", "toggle:z-score"),
    "attention": ("layer slider", "slider:Layer"),
    "projections": ("layer slider", "slider:Layer"),
    "compare": ("relative depth slider", "slider:Relative depth"),
    "ask": ("heatmap opacity slider", "slider:Heatmap opacity"),
}


@contextlib.contextmanager
def serve(app: Path, store: Path, work: Path, timeout: float = 240.0):
    """`streamlit run` of ``app``/streamlit_app.py on a free port; yields its URL once healthy."""
    port = free_port()
    env = {**os.environ, "VL_LENS_STORE": str(store), "VL_LENS_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VL_LENS_ASK_LONG_SECONDS": "1000", "PYTHONPATH": str(app)}
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=str(app), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, time.perf_counter(), timeout)
        yield url
    finally:
        stop(proc)


def settled(page, timeout_s: float = 300.0, quiet_s: float = 0.3) -> None:
    """Until the script run is over and has stayed over for ``quiet_s``."""
    deadline, quiet = time.time() + timeout_s, None
    while time.time() < deadline:
        state = page.get_attribute('[data-testid="stApp"]', "data-test-script-state")
        if state == "notRunning":
            quiet = quiet or time.time()
            if time.time() - quiet >= quiet_s:
                return
        else:
            quiet = None
        page.wait_for_timeout(20)
    raise TimeoutError("the app kept running")


def _widget(page, testid: str, label: str):
    return page.locator(f'[data-testid="stMain"] [data-testid="{testid}"]:visible').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=label)).first


def act(page, how: str, k: int) -> None:
    """Do interaction ``how`` once (the k-th time: alternate directions / options)."""
    kind, label = how.split(":", 1)
    if kind == "slider":
        thumb = _widget(page, "stSlider", label).locator('input[type="range"], [role="slider"]').first
        thumb.focus()
        page.keyboard.press("ArrowLeft" if k % 2 == 0 else "ArrowRight")
    elif kind == "toggle":
        _widget(page, "stCheckbox", label).locator("label").first.click()
    elif kind == "select":
        box = _widget(page, "stSelectbox", label)
        box.locator('input[role="combobox"]').first.click()
        page.locator('[role="listbox"] [role="option"]').nth(2 if k % 2 == 0 else 0).click()


# Watches the app's script state: the end of the first run that starts after the action.
WATCH = """() => {
  const app = document.querySelector('[data-testid=stApp]');
  window.__vl = {t0: performance.now(), started: false, ended: null};
  const obs = new MutationObserver(() => {
    const state = app.getAttribute('data-test-script-state');
    if (state === 'running') window.__vl.started = true;
    else if (window.__vl.started && window.__vl.ended === null) { window.__vl.ended = performance.now(); obs.disconnect(); }
  });
  obs.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def time_page(page, url: str, path: str, how: str, repeats: int) -> list[float]:
    page.goto(f"{url}/{'' if path == 'examples' else path}")
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=300_000)
    settled(page, quiet_s=1.5)
    times = []
    for k in range(repeats + 1):  # the first one warms caches and is dropped
        page.evaluate(WATCH)
        act(page, how, k)
        page.wait_for_function("() => window.__vl.ended !== null", timeout=120_000)
        seconds = page.evaluate("() => (window.__vl.ended - window.__vl.t0) / 1000")
        settled(page, quiet_s=0.3)
        if k:
            times.append(seconds)
    return times


def measure(app: Path, store: Path, repeats: int = 7, pages=tuple(INTERACTIONS)) -> dict[str, dict]:
    from playwright.sync_api import sync_playwright

    out = {}
    with tempfile.TemporaryDirectory(prefix="vl-lens-clicks-") as tmp, serve(app, store, Path(tmp)) as url, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        for path in pages:
            what, how = INTERACTIONS[path]
            try:
                times = time_page(page, url, path, how, repeats)
            except Exception as e:  # noqa: BLE001 - a page without the widget: reported, not fatal
                out[path] = {"what": what, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
                continue
            out[path] = {"what": what, "median_s": round(statistics.median(times), 3),
                         "runs": [round(t, 3) for t in times]}
        browser.close()
    return out


def demo_store(path: Path, limit: int = 24) -> Path:
    from demo.build_store import build_demo_store

    if not path.exists():
        build_demo_store(path, limit=limit, progress=False)
    return path


def run(quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="vl-lens-clickstore-") as tmp:
        store = demo_store(Path(tmp) / "demo.zarr", limit=8 if quick else 24)
        res = measure(REPO_ROOT, store, repeats=3 if quick else 7)
    return {f"click to redraw, {p} ({r['what']})": figure(r["median_s"], None, "s", "median over repeats")
            for p, r in res.items() if "median_s" in r}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app", default=str(REPO_ROOT), help="checkout whose streamlit_app.py is served")
    ap.add_argument("--store", default=None, help="store to open (default: a 24-example demo store, built once)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pages", default=",".join(INTERACTIONS))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    store = Path(args.store) if args.store else demo_store(Path(tempfile.gettempdir()) / "vl-lens-clicks-demo.zarr")
    res = measure(Path(args.app).resolve(), store, args.repeats, tuple(args.pages.split(",")))
    for p, r in res.items():
        print(f"{p:12s} {r['what']:28s} " + (f"median {r['median_s']:.2f} s  {r['runs']}" if "median_s" in r
                                              else r["error"]))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
