"""Load test: concurrent browser sessions through Examples, Attention and Ask, against one session alone.

    python -m bench.load [--sessions 10] [--limit-s 420] [--out load.json]

Loopback only, bounded in count (at most 16 sessions) and time (the whole run stops at --limit-s).
Each phase starts a fresh `streamlit run` in public mode on 127.0.0.1 over a demo store recorded with
the shipped demo models, warms it with one visit (models loaded, the Ask page's default example
computed), then drives N headless-chromium sessions at once. Each session, as a visitor would:

1. opens Examples (table shown), then Attention (a chart shown);
2. opens Ask with two methods (``?methods=ig,rollout``; the default demo example's answer shown),
   then asks its own question (so no two sessions share a cached result): done when both methods'
   maps and the deletion curves are drawn.

A page's latency runs from the navigation or the keystroke to the app being idle again (no script
running for half a second; the half second is not counted). Errors: an exception shown in the page,
an uncaught page error, a console error from the app's host, or a step that timed out (goal 0).
The server's memory is its resident set size, sampled every 100 ms during the measured part.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.app_start import stop
from core.paths import REPO_ROOT

MAX_SESSIONS = 16
CHROMIUM = os.environ.get("VL_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
STEP_TIMEOUT_S = 240
METHODS = ("ig", "rollout")  # what each visitor keeps on the Ask page
TITLES = {"ig": "Integrated Gradients", "rollout": "Attention rollout", "relevance": "Gradient-weighted relevance",
          "occlusion": "Occlusion", "attention": "Raw attention (last layer)"}  # as views/ask.py labels them
QUESTIONS = ("what shape is in the image?", "what color is the shape?", "is there a circle in the image?",
             "what is the color of the shape?", "is the shape red?", "is there a triangle?",
             "which shape is this?", "is this a rectangle?", "what shape do you see?", "is the shape blue?",
             "is there a green shape?", "what is drawn here?", "is the shape a circle?", "is it yellow?",
             "what color is this?", "is there a gray shape?")
PAGES = ("examples", "attention", "ask (open)", "ask (own question)")
IDLE_JS = """() => { const a = document.querySelector('[data-testid="stApp"]');
  if (!a || a.getAttribute('data-test-script-state') === 'running') return false;
  const w = document.querySelector('[data-testid="stStatusWidget"]');
  return !(w && w.innerText.includes('Running')); }"""


# ---- the server ---------------------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    """Resident set size of a process and its children (Linux /proc)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += _children(k)
    return out


class MemorySampler:
    """Peak RSS of a process tree, sampled every 100 ms between start() and stop()."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes(self.pid))
            self._stop.wait(0.1)

    def start(self) -> "MemorySampler":
        self.peak = _rss_bytes(self.pid)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_server(store: Path, home: Path) -> tuple[subprocess.Popen, str]:
    from bench.app_start import free_port

    port = free_port()
    # VL_LENS_ASK_LONG_SECONDS: no method waits for a "Run" click (on a loaded host the estimates
    # pass the 4 s default; a quiet 2-vCPU Space computes IG for a demo model in about 2 s).
    env = dict(os.environ, VL_LENS_STORE=str(store), VL_LENS_PUBLIC="1", HF_HUB_OFFLINE="1",
               VL_LENS_ASK_LONG_SECONDS="600",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HOME=str(home))
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=open(home / "server.log", "a"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited; see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("streamlit did not answer within 120 s")


# ---- one visitor ----------------------------------------------------------------------------------
@dataclass
class Visit:
    """What one session measured: seconds per page, and every error it saw."""

    latency: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)


async def _idle(page, t0: float, settle_s: float = 0.5) -> float:
    """Seconds from t0 to the first moment of a quiet stretch of settle_s (the stretch not counted)."""
    await page.wait_for_timeout(150)  # let a rerun the action caused begin
    deadline = time.perf_counter() + STEP_TIMEOUT_S
    quiet_since = None
    while time.perf_counter() < deadline:
        if await page.evaluate(IDLE_JS):
            quiet_since = quiet_since or time.perf_counter()
            if time.perf_counter() - quiet_since >= settle_s:
                return quiet_since - t0
        else:
            quiet_since = None
        await page.wait_for_timeout(100)
    raise TimeoutError(f"still running after {STEP_TIMEOUT_S} s")


async def _check(page, visit: Visit, where: str) -> None:
    n = await page.locator('[data-testid="stException"]').count()
    if n:
        text = await page.locator('[data-testid="stException"]').first.inner_text()
        visit.errors.append(f"{where}: exception shown: {text[:200]}")


async def _step(visit: Visit, name: str, coro) -> bool:
    try:
        visit.latency[name] = await asyncio.wait_for(coro, STEP_TIMEOUT_S + 30)
        return True
    except Exception as e:  # noqa: BLE001 - a failed step is an error of the run, counted and named
        visit.errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return False


async def visit(browser, url: str, question: str, methods: tuple[str, ...] = METHODS) -> Visit:
    v = Visit()
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    page.set_default_timeout(STEP_TIMEOUT_S * 1000)
    page.on("pageerror", lambda exc: v.errors.append(f"page error: {exc}"))

    def console(msg):
        where = (msg.location or {}).get("url", "")
        # Streamlit probes <page>/_stcore/health on a deep link before the root one: its normal start-up.
        if msg.type == "error" and where.startswith(url) and "/_stcore/" not in where:
            v.errors.append(f"console error: {msg.text[:200]}")

    page.on("console", console)

    async def examples():
        t0 = time.perf_counter()
        await page.goto(url)
        await page.locator('[data-testid="stMain"] h1', has_text="Examples").wait_for()
        await page.locator('[data-testid="stDataFrame"]').first.wait_for()
        return await _idle(page, t0)

    async def attention():
        t0 = time.perf_counter()
        await page.goto(f"{url}/attention")
        await page.locator('[data-testid="stMain"] h1', has_text="Attention").wait_for()
        await page.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]').first.wait_for()
        return await _idle(page, t0)

    async def ask_open():
        t0 = time.perf_counter()
        await page.goto(f"{url}/ask?methods={','.join(methods)}")
        await page.get_by_text("Answer:").first.wait_for()
        return await _idle(page, t0)

    async def ask_own_question():
        box = page.locator('[data-testid="stMain"] [data-testid="stTextInput"] input').first
        await box.fill(question)
        t0 = time.perf_counter()
        await box.press("Enter")
        main = page.locator('[data-testid="stMain"]')
        for m in methods:  # each result is headed "<method title> · <seconds> s"
            await main.get_by_text(f"{TITLES[m]} ·").first.wait_for()
        await main.get_by_text("is the level to beat").first.wait_for()  # the deletion curves' caption
        return await _idle(page, t0)

    try:
        for name, step in zip(PAGES, (examples, attention, ask_open, ask_own_question)):
            ok = await _step(v, name, step())
            await _check(page, v, name)
            if not ok:
                break
    finally:
        await ctx.close()
    return v


async def _phase(url: str, n: int, limit_s: float, methods: tuple[str, ...]) -> list[Visit]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            warm = await visit(browser, url, "what is in the image?", methods)  # models loaded, default example cached
            if warm.errors:
                raise RuntimeError(f"warm-up visit failed: {warm.errors[:3]}")
            return list(await asyncio.wait_for(
                asyncio.gather(*(visit(browser, url, QUESTIONS[i], methods) for i in range(n))), limit_s))
        finally:
            await browser.close()


# ---- the run ------------------------------------------------------------------------------------
def summarize(visits: list[Visit], peak_rss: int, wall_s: float) -> dict:
    pages = {}
    for p in PAGES:
        xs = [v.latency[p] for v in visits if p in v.latency]
        pages[p] = {"median_s": round(statistics.median(xs), 2) if xs else None,
                    "worst_s": round(max(xs), 2) if xs else None, "n": len(xs)}
    return {"sessions": len(visits), "errors": sum(len(v.errors) for v in visits),
            "error_samples": [e for v in visits for e in v.errors][:10], "pages": pages,
            "server_peak_rss_mb": round(peak_rss / 2**20), "wall_s": round(wall_s, 1)}


def run_phase(store: Path, home: Path, n: int, limit_s: float, methods: tuple[str, ...] = METHODS) -> dict:
    proc, url = start_server(store, home)
    # The sampler covers the whole phase, warm-up included: the warm-up is one visitor, so the peak
    # is the concurrent part's (for N = 1 both are one visitor).
    sampler = MemorySampler(proc.pid).start()
    t0 = time.perf_counter()
    try:
        visits = asyncio.run(_phase(url, n, limit_s, methods))
        return summarize(visits, sampler.stop(), time.perf_counter() - t0)
    finally:
        sampler.stop()
        stop(proc)


def build_store(path: Path, limit: int) -> None:
    from demo.build_store import available_demo_models, ensure_demo_store

    if not available_demo_models():
        raise SystemExit("the demo weights (demo/models/) are absent: the load test runs the shipped demo models")
    ensure_demo_store(path, limit=limit, progress=False)


def format_table(single: dict, many: dict) -> str:
    lines = [f"| page | 1 session: median / worst (s) | {many['sessions']} sessions: median / worst (s) |",
             "|---|---|---|"]
    for p in PAGES:
        a, b = single["pages"][p], many["pages"][p]
        lines.append(f"| {p} | {a['median_s']} / {a['worst_s']} | {b['median_s']} / {b['worst_s']} |")
    lines.append(f"| errors | {single['errors']} | {many['errors']} |")
    lines.append(f"| server peak RSS | {single['server_peak_rss_mb']} MB | {many['server_peak_rss_mb']} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10, help=f"concurrent sessions (1..{MAX_SESSIONS})")
    ap.add_argument("--limit-s", type=float, default=420, help="time limit of the concurrent phase")
    ap.add_argument("--examples", type=int, default=40, help="demo store examples per model")
    ap.add_argument("--methods", default=",".join(METHODS), help="the Ask methods each visitor keeps")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args(argv)
    n = max(1, min(a.sessions, MAX_SESSIONS))
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    if not methods or set(methods) - set(TITLES):
        raise SystemExit(f"--methods takes names from {', '.join(TITLES)}")
    with tempfile.TemporaryDirectory(prefix="vl-lens-load-") as tmp:
        tmp = Path(tmp)
        store = tmp / "demo_store.zarr"
        build_store(store, a.examples)
        single = run_phase(store, tmp, 1, a.limit_s, methods)
        print("1 session:", json.dumps(single), flush=True)
        many = run_phase(store, tmp, n, a.limit_s, methods)
        print(f"{n} sessions:", json.dumps(many), flush=True)
    report = {"single": single, "concurrent": many, "cpus": os.cpu_count(), "methods": methods,
              "compute_slots": os.environ.get("VL_LENS_COMPUTE_SLOTS", "2")}
    print(format_table(single, many))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0 if many["errors"] == 0 and single["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
