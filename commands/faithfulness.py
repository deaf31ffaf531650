"""`cli.py faithfulness`: how faithful is each attribution method on one model, measured one way.

    python cli.py faithfulness --model vilt-easyvqa --dataset easyvqa --split test --limit 200 --every 37 \
        --out docs/faithfulness/vilt-easyvqa

For each example: the model's top answer (a generative model's whole generated answer) is explained by every
method (and a random order); image regions
and words are removed in each map's order, most relevant first (positive) and least relevant first
(negative), 0-90% (analysis/perturbation.py, Chefer, Gur & Wolf 2021), tracking accuracy against the label
and the target's probability (the adapter's rule). On easy-VQA also the localization score: the share of
positive image attribution inside the shape mask, against the mask's area (chance).

Writes OUT/faithfulness.json (everything, read by the app's Faithfulness page), OUT/faithfulness.csv (one row
per method: areas x 100 and the mask share) and OUT/faithfulness.png / .svg (the curves).
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import time
from pathlib import Path

from commands.devices import add_device_argument

METHODS_HELP = "ig, rollout, relevance, occlusion, attention (default: all)"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model name (see `models`) or ADAPTER:HUB_ID_OR_DIR")
    p.add_argument("--dataset", required=True, help="a data set spec (e.g. easyvqa)")
    p.add_argument("--split", default="test", help="split (default: test)")
    p.add_argument("--limit", type=int, required=True, help="number of examples")
    p.add_argument("--every", type=int, default=1,
                   help="take every K-th example, so images vary (easy-VQA has ~10 questions per image)")
    p.add_argument("--methods", nargs="+", default=None, help=METHODS_HELP)
    p.add_argument("--steps", type=int, default=30, help="IG integration steps (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    p.add_argument("--out", default=None, help="output directory (default: faithfulness/MODEL)")
    add_device_argument(p)


def _check(args) -> list[str]:
    from analysis.attribution import METHODS, get_method

    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.every < 1:
        raise ValueError("--every must be at least 1")
    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    methods = list(dict.fromkeys(args.methods or METHODS))
    for m in methods:
        get_method(m)  # an unknown name fails here, before anything loads
    return methods


def _label_index(adapter, label) -> int | None:
    answers = adapter.answers()
    return answers.index(label) if label in answers else None


def _explained(adapter, image, question, label):
    """(spec, target, label for the curves, 1.0 / 0.0 the answer is right, NaN unlabelled).

    Classifiers: the top answer, its index as the label. Generative models: the whole generated answer
    (the product of its tokens' probabilities); label 1 when it is right (VQA answer normalization), so
    the accuracy curves count examples still writing their right answer (a wrong answer counts 0)."""
    from analysis.attribution import resolve_target
    from analysis.attribution.targets import WHOLE, is_generative, target_spec
    from core.answers import normalize_answer

    if not is_generative(adapter):
        spec = adapter.attribution_spec(image, question)
        target = resolve_target(adapter, spec, None)
        index = _label_index(adapter, label)
        return spec, target, index, float(target.answer == index) if index is not None else float("nan")
    spec, target = target_spec(adapter, image, question, WHOLE)
    if label is None:
        return spec, target, None, float("nan")
    right = normalize_answer(spec.extra["generated"]) == normalize_answer(label)
    return spec, target, 1 if right else -1, float(right)


def evaluate(adapter, examples, methods, *, n_steps: int, seed: int, with_mask: bool, progress=None) -> dict:
    """Run the protocol over ``examples``: {"summary", "localization", "seconds", "accuracy", "n_examples"}."""
    import numpy as np

    from analysis.attribution import attribute
    from analysis.faithfulness import mask_share
    from analysis.perturbation import (localization_summary, perturbation_curves, random_scores, summarize,
                                       unit_scores)
    from sources.easyvqa import shape_mask

    rng = np.random.default_rng(seed)
    curves = {m: [] for m in [*methods, "random"]}
    shares = {m: [] for m in curves}
    seconds = {m: [] for m in methods}
    areas, correct = [], []
    for ex in examples:
        image = ex.image().convert("RGB")
        spec, target, label, right = _explained(adapter, image, ex.question, ex.label)
        correct.append(right)
        mask = shape_mask(np.asarray(image)) if with_mask else None
        if mask is not None:
            areas.append(float(mask.mean()))
        maps = {}
        for m in methods:
            r = attribute(adapter, spec, target, m, **({"n_steps": n_steps} if m == "ig" else {}))
            seconds[m].append(r.seconds)
            maps[m] = unit_scores(r, spec)
        maps["random"] = random_scores(spec, rng)
        for m, scores in maps.items():
            curves[m].append(perturbation_curves(adapter, spec, target, scores, label))
            if mask is not None:
                shares[m].append(mask_share(spec.region_boxes, scores["image"], mask))
        if progress is not None:
            progress.update(1)
    return {"summary": summarize(curves), "localization": localization_summary(shares, areas) if with_mask else {},
            "seconds": {m: float(np.mean(v)) for m, v in seconds.items()},
            "accuracy": float(np.nanmean(correct)) if correct else float("nan"), "n_examples": len(correct)}


def json_ready(x):
    """JSON has no NaN: NaN -> null; floats rounded to 5 decimals (means of 0..1 values; keeps files small)."""
    if isinstance(x, float):
        return None if x != x else round(x, 5)
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_ready(v) for v in x]
    return x


def write_outputs(out: Path, evaluation: dict) -> list[Path]:
    """faithfulness.json, .csv, .png, .svg in ``out``; each written complete or not at all."""
    import pandas as pd

    from analysis.perturbation import table_rows
    from charts.export import save_chart
    from charts.faithfulness import curves_chart

    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(evaluation["summary"], evaluation["localization"])
    paths = [out / "faithfulness.json", out / "faithfulness.csv"]
    _atomic(paths[0], json.dumps(json_ready(evaluation), indent=1).encode())
    _atomic(paths[1], pd.DataFrame(rows).round(4).to_csv(index=False).encode())
    chart = curves_chart(evaluation)
    for fmt in ("png", "svg"):
        path = out / f"faithfulness.{fmt}"
        _atomic(path, save_chart(chart, fmt))
        paths.append(path)
    return paths


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run(args) -> int:
    from tqdm import tqdm

    from adapters.registry import load_model, resolve_model
    from analysis.perturbation import FRACTIONS
    from sources import open_source
    from sources.easyvqa import EasyVQA

    methods = _check(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    resolve_model(args.model)
    source = open_source(args.dataset, split=args.split)
    total = min(args.limit, -(-len(source) // args.every))
    adapter = load_model(args.model, device=args.device)
    examples = itertools.islice(itertools.islice(iter(source), 0, None, args.every), args.limit)
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"faithfulness {args.model}", unit="ex") as bar:
        evaluation = evaluate(adapter, examples, methods, n_steps=args.steps, seed=args.seed,
                              with_mask=isinstance(source, EasyVQA), progress=bar)
    evaluation.update(model=args.model, dataset=args.dataset, split=args.split, every=args.every,
                      methods=[*methods, "random"], fractions=list(FRACTIONS), ig_steps=args.steps, seed=args.seed,
                      probability_rule=getattr(adapter, "probability_rule", None),
                      wall_seconds=time.perf_counter() - t0, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      command=(f"python cli.py faithfulness --model {args.model} --dataset {args.dataset} --split "
                               f"{args.split} --limit {args.limit} --every {args.every}"
                               + (f" --methods {' '.join(methods)}" if args.methods else "")
                               + (f" --steps {args.steps}" if args.steps != 30 else "")),
                      host=f"{os.cpu_count()} CPU cores, {platform.machine()}")
    if evaluation["n_examples"] == 0:
        raise ValueError(f"{args.dataset} ({args.split}) gave no examples")
    out = Path(args.out or Path("faithfulness") / args.model.replace(":", "-").replace("/", "-"))
    paths = write_outputs(out, evaluation)
    _print_table(evaluation)
    print(f"{evaluation['n_examples']} examples, {evaluation['wall_seconds']:.0f} s -> "
          + ", ".join(str(p) for p in paths))
    return 0


def _print_table(evaluation: dict) -> None:
    from analysis.perturbation import table_rows

    print(f"{'method':10s} {'img +':>6s} {'img -':>6s} {'txt +':>6s} {'txt -':>6s}  (accuracy AUC x 100)  mask share")
    for r in table_rows(evaluation["summary"], evaluation["localization"]):
        print(f"{r['method']:10s} {r['image_positive_accuracy_auc']:6.1f} {r['image_negative_accuracy_auc']:6.1f} "
              f"{r['text_positive_accuracy_auc']:6.1f} {r['text_negative_accuracy_auc']:6.1f}  "
              f"{'':20s} {r['mask_share']:.3f} (chance {r['mask_chance']:.3f})")
