"""Run every benchmark module that exists and print one table; write it as JSON.

Each module ``bench.<name>`` has ``run(quick=False) -> {figure: {"value", "baseline", "ratio",
"unit", "note"}}``; baselines are measured in the same run, on the same machine, so the ratios
travel between machines better than the absolute numbers.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import platform
import time
import traceback

# In table order. Modules written by other parts of the project join when present.
MODULES = ("recording", "batching", "views", "attribution", "scale", "app_start", "generative_memory")


def machine_info() -> dict:
    info = {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    for var in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    return info


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        ax = abs(x)
        if ax == 0:
            return "0"
        if ax >= 1000:
            return f"{x:,.0f}"
        if ax >= 10:
            return f"{x:.1f}"
        if ax >= 0.01:
            return f"{x:.3g}"
        return f"{x:.2e}"
    return str(x)


def format_table(figures: dict) -> str:
    rows = [("figure", "value", "baseline", "ratio", "unit")]
    for name, f in figures.items():
        ratio = f.get("ratio")
        rows.append((name, _fmt(f.get("value")), _fmt(f.get("baseline")),
                     "-" if ratio is None else f"{ratio:.2f}x", f.get("unit", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def run_all(quick: bool = False, only: list[str] | None = None, log=print) -> dict:
    started = time.time()
    report = {"machine": machine_info(), "quick": quick,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "figures": {}, "modules": {}}
    for name in MODULES:
        if only and name not in only:
            continue
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bench.{name}":
                raise
            report["modules"][name] = {"status": "skipped", "note": "module not present in this build"}
            log(f"[bench] {name}: skipped (module not present)")
            continue
        log(f"[bench] {name} ...")
        t = time.time()
        try:
            figures = mod.run(quick=quick)
        except Exception as e:  # one failing benchmark must not hide the others
            report["modules"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                       "traceback": traceback.format_exc(), "seconds": time.time() - t}
            log(f"[bench] {name}: FAILED ({type(e).__name__}: {e})")
            continue
        report["modules"][name] = {"status": "ok", "seconds": round(time.time() - t, 1)}
        for fig, row in figures.items():
            report["figures"][fig] = {**row, "module": name}
        log(f"[bench] {name}: {len(figures)} figures in {time.time() - t:.0f} s")
    report["seconds"] = round(time.time() - started, 1)
    return report


def format_report(report: dict) -> str:
    m = report["machine"]
    head = (f"VL-Lens benchmarks{' (quick)' if report['quick'] else ''} · {m.get('cores')} cores · {m.get('cpu')} · "
            f"torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} threads · "
            f"load average at start {m.get('load_average_at_start', '?')} · {report['started']}")
    parts = [head, "", format_table(report["figures"])]
    notes = [(k, f["note"]) for k, f in report["figures"].items() if f.get("note")]
    if notes:
        parts += ["", "Notes:"] + [f"- {k}: {n}" for k, n in notes]
    other = [(k, v) for k, v in report["modules"].items() if v["status"] != "ok"]
    if other:
        parts += ["", "Modules not run:"] + [f"- {k}: {v['status']} ({v.get('note') or v.get('error')})"
                                             for k, v in other]
    return "\n".join(parts)


def write_json(report: dict, path: str) -> None:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with open(path, "w") as f:
        json.dump(clean(report), f, indent=2)
