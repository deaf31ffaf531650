"""`cli.py record`: record a data set through one or more models into a store."""
from __future__ import annotations

from pathlib import Path

from commands.devices import add_device_argument


def add_arguments(p):
    p.add_argument("--model", action="append", required=True,
                   help="model name (see `models`) or ADAPTER:HUB_ID_OR_DIR; repeat to record several")
    p.add_argument("--dataset", default="easyvqa", help="data set spec (default: easyvqa)")
    p.add_argument("--split", default="test", help="split, for data sets that have them (default: test)")
    p.add_argument("--limit", type=int, default=None, help="record at most N examples")
    p.add_argument("--out", required=True, help="store path (directory) or fsspec URL")
    p.add_argument("--run", default=None, help="run name (default: the model name); one model only")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--workers", type=int, default=1, help="processes to record with (default 1)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786) to record on a cluster")
    p.add_argument("--batch-size", type=int, default=1,
                   help="examples per forward pass (default 1); each Record is the same up to float16 rounding")
    p.add_argument("--attention-rows", choices=("language", "all"), default=None,
                   help="generative models: record the attention rows of the text and answer tokens (language, "
                        "the default) or of every token, image tokens too (all: the full maps, much larger)")
    p.add_argument("--full-layers", type=positions, default=None, metavar="LAYERS",
                   help="generative models: also record every query row (image tokens' too) of these decoder "
                        "layers, e.g. 0,5,-1 (negative: from the end) or 0-3; the rest keep --attention-rows")
    p.add_argument("--full-heads", type=positions, default=None, metavar="HEADS",
                   help="with --full-layers: only these heads in full, e.g. 0-3 (default: every head)")
    add_device_argument(p)


def run_name_for(model: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", model.split(":")[-1].strip("/")).strip("-")[:100] or "run"


def positions(text: str) -> tuple[int, ...]:
    """Layer or head positions from ``0,5,-1`` / ``0-3`` / ``0-3,7`` (ranges inclusive)."""
    import argparse
    import re

    out = []
    for item in (t.strip() for t in text.split(",")):
        if re.fullmatch(r"-?\d+", item):
            out.append(int(item))
        elif m := re.fullmatch(r"(\d+)-(\d+)", item):
            lo, hi = int(m[1]), int(m[2])
            if hi < lo:
                raise argparse.ArgumentTypeError(f"range {item!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            raise argparse.ArgumentTypeError(f"{text!r}: give positions like 0,5,-1 or ranges like 0-3")
    return tuple(out)


def set_full_attention(adapter, layers: tuple[int, ...], heads: tuple[int, ...] | None) -> None:
    """Chosen layers / heads of a generative adapter recorded with every query row."""
    if not hasattr(adapter, "set_full_attention"):
        raise ValueError(f"--full-layers: {adapter.name} records every attention row already "
                         "(the flag is for generative models)")
    adapter.set_full_attention(layers, heads)


def set_attention_rows(adapter, rows: str) -> None:
    """Which query rows a generative adapter records; other adapters always record every row."""
    if not hasattr(adapter, "attention_rows"):
        raise ValueError(f"--attention-rows: {adapter.name} records every attention row already "
                         "(the flag is for generative models)")
    adapter.attention_rows = rows


def run(args) -> int:
    from adapters.registry import load_model, resolve_model
    from pipeline.record import limited, record_examples
    from sources import open_source
    from store.zarr_store import VLStore

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.batch_size > 1 and (args.workers > 1 or args.scheduler):
        raise ValueError("--batch-size batches one process's forward passes; leave it out with --workers / --scheduler")
    if (args.attention_rows or args.full_layers) and (args.workers > 1 or args.scheduler):
        raise ValueError("--attention-rows / --full-layers apply to one recording process; leave out --workers / "
                         "--scheduler")
    if args.full_heads and not args.full_layers:
        raise ValueError("--full-heads chooses heads of the --full-layers: give --full-layers too")
    if args.full_layers and args.attention_rows == "all":
        raise ValueError("--full-layers with --attention-rows all: every row of every layer is recorded already")
    if args.run and len(args.model) > 1:
        raise ValueError("--run names one run; leave it out when recording several models")
    for m in args.model:
        resolve_model(m)  # fail fast on an unknown name, before any work
    out = args.out
    if "://" not in out:
        parent = Path(out).resolve().parent
        if not parent.exists():
            raise FileNotFoundError(f"--out: directory {parent} does not exist")
    source = open_source(args.dataset, split=args.split)
    total = len(source) if args.limit is None else min(args.limit, len(source))
    store = VLStore(out, mode="a")
    for m in args.model:
        run_name = args.run or run_name_for(m)
        if args.workers > 1 or args.scheduler:
            from pipeline.parallel import record_parallel

            res = record_parallel(m, args.dataset, args.split, args.limit, out, run_name,
                                  workers=args.workers, scheduler=args.scheduler, top_k=args.top_k)
        else:
            adapter = load_model(m, device=args.device)
            if args.attention_rows:
                set_attention_rows(adapter, args.attention_rows)
            if args.full_layers:
                set_full_attention(adapter, args.full_layers, args.full_heads)
            res = record_examples(adapter, limited(iter(source), args.limit), store, run_name, total=total,
                                  top_k=args.top_k, batch_size=args.batch_size)
        print(f"{run_name}: {res.written} written, {res.skipped} already there, {len(res.failed)} failed "
              f"in {res.seconds:.1f} s -> {out}")
        for key, why in res.failed[:10]:
            print(f"  failed {key}: {why}")
    return 0
