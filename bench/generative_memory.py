"""Recording a LLaVA-1.5-7B-shaped model: bytes stored per example and peak memory of recording,
against the bare generate call.

    OMP_NUM_THREADS=1 python cli.py bench --only generative_memory

Shapes only, random weights, built from configs (no hub): the vision geometry of CLIP ViT-L/14-336
(336 px, 14-px patches: 576 image tokens, width 1024, 16 heads, MLP 4096) and the language model
width of Llama-7B (4096, 32 heads, MLP 11008), at reduced depth (``DEPTHS`` language-model layers,
2 vision layers) and with a vocabulary of a few words (the 32,000-word embeddings and output layer
of the real model are weights both calls hold alike). Float32 on the CPU, eager attention.

Each measurement runs in a subprocess of its own (torch's allocations are invisible to tracemalloc):
build the model, reset the kernel's resident-set high-water mark (``/proc/self/clear_refs``), run the
call once, read the high-water mark (``VmHWM``). glibc's allocator is told to hand every block of
64 KiB or more back to the kernel when freed (``MALLOC_MMAP_THRESHOLD_``), so the resident set
follows what is live. "generate": the adapter's greedy answer (``predict``). "record": what ``cli.py
record`` does for one example: the greedy answer, the layer-by-layer capture forward with head
statistics from the full maps, the Record, the store write.

Measured at two depths, the figures split into a fixed part and a per-layer part, which gives the
32-layer figures (the real model's depth) by a straight line; the table says which are extrapolated.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import dir_bytes, figure
from core.paths import REPO_ROOT

DEPTHS = (2, 4)  # language-model layers measured; the 32-layer figures are extrapolated from them
REAL_DEPTH = 32
QUESTION = "what shape is in the image?"
MAX_NEW_TOKENS = 8  # random weights never stop early: every answer is 8 tokens
MODES = ("generate", "record")


def llava7b_shape(layers: int):
    """The LLaVA-1.5-7B shape at ``layers`` language-model layers (see the module docstring)."""
    from demo.llava_init import LlavaShape

    return LlavaShape(image_size=336, patch=14, vision_hidden=1024, vision_layers=2, vision_heads=16, hidden=4096,
                      layers=layers, heads=32, context=1024, text_intermediate=11008)


def build_adapter(layers: int):
    import torch

    from adapters.llava import LlavaAdapter
    from demo.llava_init import build_model, build_processor, build_tokenizer

    shape = llava7b_shape(layers)
    tok = build_tokenizer([QUESTION, "circle rectangle triangle red green blue yes no"], context=shape.context)
    with torch.no_grad():
        model = build_model(tok, shape, seed=0)
    adapter = LlavaAdapter(model, build_processor(tok, shape), model_id=f"llava-1.5-7b-shaped-{layers}-layers")
    adapter.max_new_tokens = MAX_NEW_TOKENS
    return adapter


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(mode: str, layers: int) -> dict:
    """One measurement, in this process (run it in a fresh one: see ``run``)."""
    import time

    import numpy as np
    from PIL import Image

    from pipeline.record import run_with_head_stats
    from sources.base import Example
    from store.zarr_store import VLStore

    adapter = build_adapter(layers)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (336, 336, 3), np.uint8))
    example = Example(source_key="bench/0", question=QUESTION, load_image_bytes=None, answers={}, label=None)
    tmp = Path(tempfile.mkdtemp(prefix="vl-lens-genmem-"))
    writer = VLStore(tmp / "s.zarr", mode="a").writer("run", {"model_id": adapter.model_id})
    exact = _reset_high_water()
    before = _status_kib("VmRSS")
    t = time.perf_counter()
    out = {"mode": mode, "layers": layers, "exact_high_water": exact}
    if mode == "generate":
        pred = adapter.predict(image, QUESTION)
        out["answer_tokens"] = len(pred.token_probabilities)
    else:
        rec, stats = run_with_head_stats(adapter, image, example)
        writer.write(rec, stats)
        block = rec.attention["self"]
        out.update(tokens=rec.n_tokens, answer_tokens=len(rec.answer_indices()), query_rows=int(block.values.shape[2]),
                   attention_raw_bytes=int(block.values.nbytes),
                   hidden_raw_bytes=int(sum(h.values.nbytes for h in rec.hidden.values())))
        example_dir = tmp / "s.zarr" / "runs" / "run" / "examples" / rec.example_id
        out.update(stored_bytes=dir_bytes(example_dir), attention_stored_bytes=dir_bytes(example_dir / "attention"),
                   hidden_stored_bytes=dir_bytes(example_dir / "hidden"))
    out["seconds"] = round(time.perf_counter() - t, 2)
    peak = _status_kib("VmHWM") if exact else _peak_rss_kib()
    out.update(rss_before_mib=before / 1024, peak_mib=peak / 1024, added_mib=(peak - before) / 1024)
    return out


def _peak_rss_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def measure_in_subprocess(mode: str, layers: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-m", "bench.generative_memory", mode, str(layers)], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} at {layers} layers failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line_through(x: tuple[int, int], y: tuple[float, float], at: int) -> float:
    """The value at ``at`` of the straight line through (x[0], y[0]) and (x[1], y[1])."""
    slope = (y[1] - y[0]) / (x[1] - x[0])
    return y[0] + slope * (at - x[0])


def run(quick: bool = False) -> dict:
    depths = DEPTHS[:1] if quick else DEPTHS
    m = {(mode, d): measure_in_subprocess(mode, d) for d in depths for mode in MODES}
    d0 = depths[0]
    rec0, gen0 = m[("record", d0)], m[("generate", d0)]
    note0 = (f"{d0} of 32 layers; {rec0['tokens']} tokens ({rec0['answer_tokens']} generated), "
             f"{rec0['query_rows']} kept query rows; float32 weights on the CPU")
    figs = {
        f"LLaVA-7B-shaped ({d0} layers): peak memory, record vs bare generate": figure(
            rec0["peak_mib"], gen0["peak_mib"], "MiB", note0 + "; the process's resident-set high-water mark"),
        f"LLaVA-7B-shaped ({d0} layers): memory added by the call, record vs generate": figure(
            rec0["added_mib"], gen0["added_mib"], "MiB", "high-water mark minus the resident set before the call"),
        f"LLaVA-7B-shaped ({d0} layers): stored bytes per example": figure(
            rec0["stored_bytes"] / 2**20, (rec0["attention_raw_bytes"] + rec0["hidden_raw_bytes"]) / 2**20, "MiB",
            f"vs raw float16 attention rows + hidden states; attention {rec0['attention_stored_bytes'] / 2**20:.1f}, "
            f"hidden {rec0['hidden_stored_bytes'] / 2**20:.1f} MiB stored"),
        f"LLaVA-7B-shaped ({d0} layers): time, record vs bare generate": figure(rec0["seconds"], gen0["seconds"], "s"),
    }
    if len(depths) > 1:
        d = (depths[0], depths[1])
        rec1, gen1 = m[("record", d[1])], m[("generate", d[1])]
        at32 = {k: line_through(d, (m[("record", d[0])][k], rec1[k]), REAL_DEPTH)
                for k in ("peak_mib", "added_mib", "stored_bytes")}
        g32 = {k: line_through(d, (m[("generate", d[0])][k], gen1[k]), REAL_DEPTH) for k in ("peak_mib", "added_mib")}
        note = f"extrapolated along the line through {d[0]} and {d[1]} layers"
        figs.update({
            "LLaVA-7B-shaped (32 layers): memory added by the call, record vs generate": figure(
                at32["added_mib"], g32["added_mib"], "MiB", note),
            "LLaVA-7B-shaped (32 layers): stored bytes per example": figure(
                at32["stored_bytes"] / 2**20, None, "MiB", note),
        })
    return figs


if __name__ == "__main__":  # one measurement: python -m bench.generative_memory MODE LAYERS
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
