"""`make space-check`: the Space image's install and start commands, run here without Docker.

    python -m bench.space_check [--keep]

No Docker daemon runs on our machines, so this reads the Dockerfile and plays its steps:

1. a clean virtual environment (no system packages) stands in for python:3.11-slim;
2. every ``pip install`` of the Dockerfile runs in it as written, except that PyTorch's CPU index
   (unreachable here) is dropped: ``torch==2.13.0`` then comes from the wheel on local disk;
3. the build context is copied as ``COPY . .`` would, leaving out what .dockerignore names;
4. the start command (CMD) runs there with the Dockerfile's ENV, a fresh HOME and a free loopback
   port, and headless chromium loads the first page: the demo store is built (first start), the
   Examples table shows, no exception is on the page, and a ``?store=`` outside the allow-list gets
   public mode's one-line refusal.

It prints what it measured and exits non-zero on the first failure. ``VL_LENS_DEMO_LIMIT``
(default 12 here, 120 in the image) bounds the first-start build so the check takes minutes.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from core.paths import REPO_ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CHROMIUM = os.environ.get("VL_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# ---- reading the Dockerfile ---------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Dockerfile:
    """The instructions this check plays: base image, user, ENV, pip commands, CMD, exposed port."""

    base: str
    user: str
    env: dict
    pip_commands: tuple[tuple[str, ...], ...]  # each: the argv after "pip install"
    cmd: tuple[str, ...]
    exposed_port: int


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, backslash continuations joined."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    base = user = ""
    env: dict[str, str] = {}
    pips: list[tuple[str, ...]] = []
    cmd: tuple[str, ...] = ()
    port = 0
    for word, args in instructions(text):
        if word == "FROM":
            base = args.split()[0]
        elif word == "USER":
            user = args
        elif word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "RUN":
            for part in re.split(r"&&|;", args):
                argv = shlex.split(part)
                if len(argv) >= 2 and argv[0] in ("pip", "pip3") and argv[1] == "install":
                    pips.append(tuple(argv[2:]))
                elif argv[:4] == ["python", "-m", "pip", "install"]:
                    pips.append(tuple(argv[4:]))
        elif word == "CMD":
            cmd = tuple(json.loads(args))
        elif word == "EXPOSE":
            port = int(args.split()[0].split("/")[0])
    return Dockerfile(base=base, user=user, env=env, pip_commands=tuple(pips), cmd=cmd, exposed_port=port)


def requirement_pins(argv: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    """(requirement files after -r, explicit name==version specs, index URLs) of one pip install."""
    files, specs, indexes = [], [], []
    it = iter(argv)
    for a in it:
        if a in ("-r", "--requirement"):
            files.append(next(it))
        elif a in ("--index-url", "-i", "--extra-index-url"):
            indexes.append(next(it))
        elif a.startswith("-"):
            continue
        else:
            specs.append(a)
    return files, specs, indexes


def read_pins(path: Path) -> dict[str, str]:
    """name (lowercase) -> version of every ``name==version`` line; ``-r`` lines are not followed."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)$", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


# ---- the build context --------------------------------------------------------------------------
def ignored(rel: str, patterns: list[str]) -> bool:
    """True when .dockerignore leaves ``rel`` out (a pattern matches it or one of its parent folders)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        for p in prefixes:
            if fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat[3:])):
                return True
    return False


def context_files(root: Path = REPO_ROOT) -> list[str]:
    """The files ``COPY . .`` sends: git's tracked and untracked-not-ignored files minus .dockerignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    patterns = [ln.strip() for ln in (root / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    return sorted(f for f in out if f and (root / f).is_file() and not ignored(f, patterns))


# ---- playing it ---------------------------------------------------------------------------------
def _step(msg: str) -> float:
    print(f"[space-check] {msg}", flush=True)
    return time.perf_counter()


def install(df: Dockerfile, venv: Path, app: Path) -> dict:
    t = _step(f"clean venv {venv} (stands in for {df.base})")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for argv in df.pip_commands:
        args = [a for a in argv if a != "--user"]
        if CPU_INDEX in args:  # unreachable here: the same pin resolves from the wheel on local disk
            i = args.index(CPU_INDEX)
            del args[i - 1:i + 1]
        _step("pip install " + " ".join(args))
        subprocess.run(pip + args, cwd=app, check=True)
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout
    installed = {ln.split("==")[0].lower(): ln.split("==")[1] for ln in freeze.splitlines() if "==" in ln}
    return {"installed": installed, "install_s": round(time.perf_counter() - t, 1)}


def copy_context(app: Path) -> int:
    files = context_files()
    for f in files:
        dst = app / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / f, dst)
    return len(files)


def start(df: Dockerfile, venv: Path, app: Path, home: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VL_LENS_", "STREAMLIT_", "PYTHON"))}
    env.update(df.env)
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}:{home / '.local/bin'}:/usr/bin:/bin",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",  # this machine is offline; a Space is not
               VL_LENS_DEMO_LIMIT=os.environ.get("VL_LENS_DEMO_LIMIT", "12"))
    env.pop("VL_LENS_CACHE", None)
    if Path("/data").is_dir():  # this host has a /data of its own: keep the store in the fresh HOME
        env["VL_LENS_CACHE"] = str(home / ".cache" / "vl-lens")
    cmd = [c.replace(str(df.exposed_port), str(port)) for c in df.cmd]
    cmd = [c.replace("0.0.0.0", "127.0.0.1") for c in cmd]  # loopback only here
    _step("start: " + " ".join(cmd))
    return subprocess.Popen(cmd, cwd=app, env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT)


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no health answer within {timeout:.0f} s")


def browse(url: str, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    from ui.public import REFUSED

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            t0 = time.perf_counter()
            page.goto(url, timeout=timeout_s * 1000)
            page.locator('[data-testid="stMain"] h1', has_text="Examples").wait_for(timeout=timeout_s * 1000)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=timeout_s * 1000)
            first_page_s = time.perf_counter() - t0
            exceptions = page.locator('[data-testid="stException"]').count()
            shown = page.get_by_text(re.compile(r"\d+ of \d+ examples shown")).first.inner_text()
            page.goto(f"{url}/?store=/etc", timeout=timeout_s * 1000)
            page.get_by_text(REFUSED[:60]).first.wait_for(timeout=60_000)
            return {"first_page_s": round(first_page_s, 1), "exceptions": exceptions, "caption": shown,
                    "refusal_shown": True}
        finally:
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (venv, app copy, log)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for first start (store build) + first page")
    a = ap.parse_args(argv)
    df = parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())
    from bench.app_start import free_port

    tmp = Path(tempfile.mkdtemp(prefix="vl-lens-space-check-"))
    venv, app, home = tmp / "venv", tmp / "app", tmp / "home"
    app.mkdir()
    home.mkdir()
    proc = None
    try:
        n = copy_context(app)
        _step(f"build context: {n} files (.dockerignore applied)")
        inst = install(df, venv, app)
        req, dev = read_pins(REPO_ROOT / "requirements.txt"), read_pins(REPO_ROOT / "requirements-dev.txt")
        wrong = {k: (v, inst["installed"].get(k)) for k, v in req.items()
                 if inst["installed"].get(k, "").split("+")[0] != v}
        dev_only = sorted(set(dev) - set(req) & set(inst["installed"]))
        assert not wrong, f"installed versions differ from requirements.txt: {wrong}"
        assert not dev_only, f"test tools installed in the image: {dev_only}"
        port = free_port()
        proc = start(df, venv, app, home, port)
        url = f"http://127.0.0.1:{port}"
        healthy_s = wait_healthy(proc, url, 120)
        seen = browse(url, a.timeout)
        assert seen["exceptions"] == 0, "an exception is shown on the first page"
        assert not any(app.rglob("*.zarr")), "the app wrote a store into the code folder"
        stores = list(home.rglob("demo_store.zarr"))
        assert stores, "no demo store under HOME"
        report = {"pins_installed": len(req), "install_s": inst["install_s"], "torch": inst["installed"].get("torch"),
                  "server_healthy_s": round(healthy_s, 1), **seen, "demo_store": str(stores[0].relative_to(home))}
        print(json.dumps(report, indent=1))
        _step("OK")
        return 0
    except Exception as e:  # any failure: one line, then the server's log
        print(f"[space-check] FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        log = home / "server.log"
        if log.exists():
            print(log.read_text()[-3000:], file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if a.keep:
            print(f"[space-check] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
