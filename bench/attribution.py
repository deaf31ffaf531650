"""Attribution benchmark: IG memory and time against a plain Captum call, measured in one run.

    python -m bench.attribution            # ViLT-B/32-sized random model, 30 steps; all methods on the demo model
    python -m bench.attribution --quick    # smaller model, fewer steps (a smoke run)

Each IG variant runs in its own subprocess on the same input (same seed, same model built from a
config, no hub). Peak memory is the process's peak resident set size during the call (the kernel's
high-water mark, reset just before it through /proc/self/clear_refs), minus the resident size just
before it. ``run(quick)`` returns {figure: {"value", "baseline", "ratio", "unit"}} for the bench runner.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTION = "what color is the shape in the middle of the picture?"
DEMO_VILT = Path(os.environ.get("VL_LENS_DEMO_VILT", ROOT / "demo" / "models" / "vilt-easyvqa"))
METHOD_ORDER = ("ig", "rollout", "relevance", "occlusion", "attention")


# ---- memory measurement ---------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn):
    """(result, seconds, peak MB above the resident size at the start)."""
    import gc

    gc.collect()
    _reset_peak()
    before = _status_kb("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    return out, seconds, (peak - before) / 1024.0


# ---- the benchmark model --------------------------------------------------------------------------
def vilt_b32_adapter(*, quick: bool = False, seed: int = 0):
    """A ViLT-B/32-sized random ViltForQuestionAnswering (hidden 768, 12 layers, 12 heads, image 384, patch 32,
    3129 answers), built from its config; quick: a quarter of the width and depth."""
    import torch
    from transformers import ViltConfig, ViltForQuestionAnswering
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    from adapters.vilt import ViltAdapter
    from demo.train_vilt import build_tokenizer

    hidden, layers, heads, image = (192, 3, 3, 192) if quick else (768, 12, 12, 384)
    labels = 3129
    torch.manual_seed(seed)
    config = ViltConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 4, image_size=image, patch_size=32, max_image_length=-1,
                        num_labels=labels, id2label={i: f"answer {i}" for i in range(labels)},
                        label2id={f"answer {i}": i for i in range(labels)}, attn_implementation="eager")
    model = ViltForQuestionAnswering(config).eval()
    tok = build_tokenizer([QUESTION, "is there a red circle?", "what shape is it?"])
    proc = ViltImageProcessorPil(size={"shortest_edge": image}, size_divisor=32)
    return ViltAdapter(model, tok, proc, model_id="vilt-b32-random", device="auto")


def bench_image(side: int = 384):
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(side, side, 3) * 255).astype(np.uint8))


def _ig_variant(variant: str, steps: int, quick: bool) -> dict:
    """Runs in a subprocess: build the model, then one IG call, measured."""
    import captum.attr  # noqa: F401  imported before measuring, in both variants
    import torch

    from analysis.attribution import attribute, resolve_target

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    adapter = vilt_b32_adapter(quick=quick)
    spec = adapter.attribution_spec(bench_image(), QUESTION)
    target = resolve_target(adapter, spec, None)
    info = {"tokens": len(spec.record_tokens)}
    if variant == "plain":
        from captum.attr import LayerIntegratedGradients

        keys = [k for k, v in spec.inputs.items() if isinstance(v, torch.Tensor)]
        layers = adapter.attribution_layers()

        def forward(*t):
            return target.score(adapter.forward_logits(**dict(zip(keys, t))))

        def call():
            lig = LayerIntegratedGradients(forward, [layers["text"], layers["image"]])
            return lig.attribute(tuple(spec.inputs[k] for k in keys),
                                 baselines=tuple(spec.baselines[k] for k in keys),
                                 n_steps=steps, return_convergence_delta=True)

        (_, delta), seconds, peak = measure(call)
        info["delta"] = float(delta[0])
    else:
        res, seconds, peak = measure(lambda: attribute(adapter, spec, target, "ig", n_steps=steps))
        info.update(delta=res.delta, internal_batch_size=res.params["internal_batch_size"],
                    mb_per_step=res.params.get("measured_mb_per_step"))
    info.update(seconds=seconds, peak_mb=peak)
    return info


def _subprocess(variant: str, steps: int, quick: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "bench.attribution", "--variant", variant, "--steps", str(steps)]
    if quick:
        cmd.append("--quick")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"bench variant {variant} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- all methods on the demo model ----------------------------------------------------------------
def demo_adapter():
    """The easy-VQA demo ViLT when its weights are present, else a tiny random ViLT (says which)."""
    from adapters.vilt import ViltAdapter

    if (DEMO_VILT / "config.json").exists():
        return ViltAdapter.load(str(DEMO_VILT), device="auto"), "vilt-easyvqa"
    import tempfile

    from testkit.tiny_vilt import make_tiny_vilt

    d = make_tiny_vilt(Path(tempfile.mkdtemp(prefix="vl-lens-bench-")) / "tiny", image_size=64)
    return ViltAdapter.load(str(d), device="auto"), "tiny random ViLT (demo weights absent)"


def all_methods_seconds(adapter, n_examples: int = 3) -> dict:
    """Mean seconds per method over a few easy-VQA test examples (default parameters)."""
    from analysis.attribution import attribute, resolve_target
    from sources.easyvqa import EasyVQA

    import captum.attr  # noqa: F401  (import time is not the methods' time)

    src = EasyVQA("test")
    times = {m: [] for m in METHOD_ORDER}
    for i in range(n_examples):
        ex = src[i * 7]
        spec = adapter.attribution_spec(ex.image(), ex.question)
        t = resolve_target(adapter, spec, None)
        for m in METHOD_ORDER:
            t0 = time.perf_counter()
            attribute(adapter, spec, t, m)
            times[m].append(time.perf_counter() - t0)
    return {m: sum(v) / len(v) for m, v in times.items()}


def mask_share_table(adapter, *, n_examples: int = 50, methods=METHOD_ORDER, n_steps: int = 30, stride: int = 97):
    """easy-VQA test examples (every ``stride``-th question, so images vary): mean share of each method's
    positive image attribution inside the shape mask, next to the mask's mean share of the image area."""
    import numpy as np

    from analysis.attribution import attribute, resolve_target
    from analysis.faithfulness import mask_share
    from sources.easyvqa import EasyVQA, shape_mask

    src = EasyVQA("test")
    shares = {m: [] for m in methods}
    areas = []
    for i in range(n_examples):
        ex = src[(i * stride) % len(src)]
        img = ex.image().convert("RGB")
        mask = shape_mask(np.asarray(img))
        areas.append(float(mask.mean()))
        spec = adapter.attribution_spec(img, ex.question)
        t = resolve_target(adapter, spec, None)
        for m in methods:
            kw = {"n_steps": n_steps} if m == "ig" else {}
            r = attribute(adapter, spec, t, m, **kw)
            shares[m].append(mask_share(r.region_boxes, r.region_scores, mask))
    out = {m: float(np.nanmean(v)) for m, v in shares.items()}
    out["mask_area"] = float(np.mean(areas))
    out["n"] = n_examples
    return out


def run(quick: bool = False) -> dict:
    steps = 8 if quick else 30
    plain = _subprocess("plain", steps, quick)
    ours = _subprocess("ours", steps, quick)
    adapter, which = demo_adapter()
    per_method = all_methods_seconds(adapter, n_examples=1 if quick else 3)
    total = sum(per_method.values())
    figures = {
        "ig_peak_memory": {"value": ours["peak_mb"], "baseline": plain["peak_mb"],
                           "ratio": ours["peak_mb"] / max(plain["peak_mb"], 1e-9), "unit": "MB",
                           "note": f"IG {steps} steps, internal batch {ours['internal_batch_size']} "
                                   f"({ours['mb_per_step']} MB/step measured) vs plain Captum, "
                                   f"{'quick model' if quick else 'ViLT-B/32-sized'}, {ours['tokens']} tokens"},
        "ig_time": {"value": ours["seconds"], "baseline": plain["seconds"],
                    "ratio": ours["seconds"] / max(plain["seconds"], 1e-9), "unit": "s"},
        "all_methods_demo": {"value": total, "baseline": 5.0, "ratio": total / 5.0, "unit": "s",
                             "note": f"{which}; baseline = the 'few seconds' goal; per method: "
                                     + ", ".join(f"{m} {s:.2f}" for m, s in per_method.items())},
    }
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--variant", choices=("plain", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=30, help=argparse.SUPPRESS)
    p.add_argument("--mask-share", type=int, default=0, metavar="N",
                   help="also measure the share of attribution inside easy-VQA shape masks over N examples")
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(_ig_variant(args.variant, args.steps, args.quick)))
        return 0
    figures = run(quick=args.quick)
    for name, f in figures.items():
        print(f"{name:18s} {f['value']:10.2f} {f['unit']:3s} baseline {f['baseline']:10.2f}  ratio {f['ratio']:.2f}"
              + (f"  ({f['note']})" if f.get("note") else ""))
    if args.mask_share:
        adapter, which = demo_adapter()
        table = mask_share_table(adapter, n_examples=args.mask_share)
        print(f"share of positive image attribution inside the shape mask ({which}, {table['n']} examples):")
        for m in METHOD_ORDER:
            print(f"  {m:10s} {table[m]:.3f}")
        print(f"  mask area  {table['mask_area']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
