"""`cli.py attribute`: attribute an answer to image regions and words, for one image or a data set.

    python cli.py attribute --model vilt-easyvqa --image shape.png --question "what color is the shape?" \
        --method ig --steps 30 --out shape_ig.npz
    python cli.py attribute --model vilt-easyvqa --dataset easyvqa --split test --limit 20 --method relevance \
        --out attributions/

Generative models (llava, ...) explain one generated token (default the first; --target-token K), its
log-probability given everything before it (or its logit: --score logit); the whole answer
(--target whole: the sum of its tokens' log-probabilities); a given answer A (--target A, teacher-forced);
or "A rather than B" (the difference of the two answers' scores):

    python cli.py attribute --model llava-easyvqa --image shape.png --question "what color is the shape?" \
        --method ig --target-token 0 --out token0.npz
    python cli.py attribute --model llava-easyvqa --image shape.png --question "what color is the shape?" \
        --method relevance --target "red rather than blue" --out red_vs_blue.npz

Each .npz holds region_boxes (R, 4: x0, y0, x1, y1 as fractions of the image), region_scores (R),
tokens (T), token_scores (T), token_is_special (T), target (its label), target_kind (answer / contrast for
classifiers; token / whole / contrast for generated answers), target_text, target_contrast, target_token
(-1 unless a token), target_unit (logit / logprob), answer (a generative model's generated answer),
probability, method, question, and for ig delta and score_difference. Only numeric and string arrays: read
with np.load(path) (no pickle).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from commands.devices import add_device_argument

METHODS_HELP = "ig, rollout, relevance, occlusion, attention"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model name (see `models`) or ADAPTER:HUB_ID_OR_DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="an image file (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    src.add_argument("--dataset", help="a data set spec (e.g. easyvqa): one .npz per example into --out DIR")
    p.add_argument("--question", help="the question (with --image)")
    p.add_argument("--split", default="test", help="split, with --dataset (default: test)")
    p.add_argument("--limit", type=int, default=None, help="at most N examples, with --dataset")
    p.add_argument("--method", required=True, help=f"one of: {METHODS_HELP}")
    p.add_argument("--target", default=None,
                   help="answer to explain (default: the model's top answer; for a generative model its first "
                        "generated token), or 'A rather than B'; generative models also take 'whole' (the whole "
                        "generated answer) and any answer text A (teacher-forced)")
    p.add_argument("--target-token", type=int, default=None, metavar="K",
                   help="generative models: explain generated token K (0 = the first answer token)")
    p.add_argument("--score", choices=("logprob", "logit"), default="logprob",
                   help="generative models: explain a token's log-probability (default) or its logit")
    p.add_argument("--steps", type=int, default=None, help="IG integration steps (default 30)")
    p.add_argument("--out", required=True, help="FILE.npz with --image, a directory with --dataset")
    add_device_argument(p)


def _target(args):
    """The --target / --target-token value for ``target_spec`` (checked before anything loads)."""
    if args.target_token is not None:
        if args.target:
            raise ValueError("--target-token and --target exclude each other (a token of the generated answer, "
                             "or a whole answer)")
        if args.target_token < 0:
            raise ValueError("--target-token must be 0 or more")
        return args.target_token
    return args.target


def _check_generative(adapter, args) -> None:
    from analysis.attribution.targets import is_generative

    if not is_generative(adapter) and (args.target_token is not None or args.score != "logprob"):
        raise ValueError("--target-token and --score apply to generative models only")


def _params(args) -> dict:
    if args.steps is not None:
        if args.method != "ig":
            raise ValueError("--steps applies to --method ig only")
        if args.steps < 1:
            raise ValueError("--steps must be at least 1")
        return {"n_steps": args.steps}
    return {}


def save_result(path: Path, result, **extra) -> None:
    """Write the result's arrays (plus string and number extras) atomically: complete or absent."""
    import numpy as np

    arrays = result.as_arrays()
    for k, v in extra.items():
        arrays[k] = np.array(v) if isinstance(v, (int, float)) else np.array("" if v is None else str(v))
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _file_name(source_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source_key).strip("-") + ".npz"


def run(args) -> int:
    from core.errors import InputError
    from adapters.registry import load_model, resolve_model
    from analysis.attribution import attribute, get_method
    from analysis.attribution.targets import is_generative, target_fields, target_spec

    get_method(args.method)  # fail fast, before loading anything
    target_arg = _target(args)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # errors stay one line; our own progress bar is tqdm's
    params = _params(args)
    resolve_model(args.model)
    out = Path(args.out)
    if args.image:
        from sources.images import decode_image

        if not args.question or not args.question.strip():
            raise InputError("--question is required with --image (and must not be empty)")
        if out.suffix != ".npz":
            raise ValueError("--out must name a .npz file with --image")
        if not out.resolve().parent.exists():
            raise FileNotFoundError(f"--out: directory {out.resolve().parent} does not exist")
        path = Path(args.image)
        if not path.is_file():
            raise FileNotFoundError(f"--image: {path} is not a file")
        image = decode_image(path.read_bytes(), name=str(path))
        adapter = load_model(args.model, device=args.device)
        _check_generative(adapter, args)
        spec, target = target_spec(adapter, image, args.question, target_arg, unit=args.score)
        result = attribute(adapter, spec, target, args.method, **params)
        save_result(out, result, question=args.question, model=args.model, example_id=spec.extra.get("example_id"),
                    answer=spec.extra.get("generated"), **target_fields(target))
        extra = f", delta {result.delta:.3g} ({result.relative_delta:.1%} of the score change)" \
            if result.delta is not None else ""
        print(f"{args.method}: {result.target} (p={result.probability:.3f}), image share {result.image_share:.2f}"
              f"{extra}, {result.seconds:.1f} s -> {out}")
        for note in result.notes:
            print(f"  note: {note}")
        return 0

    from tqdm import tqdm

    from pipeline.record import limited
    from sources import open_source

    if args.question:
        raise ValueError("--question goes with --image; a data set brings its own questions")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if out.suffix == ".npz":
        raise ValueError("--out must be a directory with --dataset (one .npz per example)")
    source = open_source(args.dataset, split=args.split)
    total = len(source) if args.limit is None else min(args.limit, len(source))
    adapter = load_model(args.model, device=args.device)
    _check_generative(adapter, args)
    if args.target and not is_generative(adapter):
        from analysis.attribution import resolve_target

        resolve_target(adapter, None, args.target)  # an unknown answer fails once, before the loop
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    failed: list[tuple[str, str]] = []
    for ex in tqdm(limited(iter(source), args.limit), total=total, desc=f"attribute {args.method}", unit="ex"):
        path = out / _file_name(ex.source_key)
        if path.exists():
            skipped += 1
            continue
        try:
            spec, target = target_spec(adapter, ex.image(), ex.question, target_arg, unit=args.score)
            result = attribute(adapter, spec, target, args.method, **params)
        except InputError as e:
            failed.append((ex.source_key, str(e)))
            continue
        save_result(path, result, question=ex.question, label=ex.label, source_key=ex.source_key,
                    model=args.model, example_id=spec.extra.get("example_id"), answer=spec.extra.get("generated"),
                    **target_fields(target))
        written += 1
    print(f"{args.method}: {written} written, {skipped} already there, {len(failed)} failed -> {out}")
    for key, why in failed[:10]:
        print(f"  failed {key}: {why}")
    return 0 if not failed or written else 1
