"""`cli.py bench`: run every benchmark in bench/ and print one table of ratios (see bench/runner.py)."""
from __future__ import annotations


def add_arguments(p):
    from commands.devices import add_device_argument

    add_device_argument(p)
    p.add_argument("--quick", action="store_true", help="fewer examples and repeats (a few minutes)")
    p.add_argument("--out", default="bench.json", help="JSON file to write the table to (default: bench.json)")
    p.add_argument("--only", action="append", default=None,
                   help="run only this module (recording, batching, views, attribution, scale, app_start); repeatable")


def run(args) -> int:
    import sys

    import os

    from adapters.loading import DEVICE_ENV, resolve_device
    from bench.runner import MODULES, format_report, run_all, write_json

    # Every benchmark model is built with device "auto", which this makes mean the chosen device.
    os.environ[DEVICE_ENV] = resolve_device(args.device)

    for name in args.only or []:
        if name not in MODULES:
            raise ValueError(f"--only: unknown benchmark {name!r}; known: {', '.join(MODULES)}")
    report = run_all(quick=args.quick, only=args.only, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_report(report))
    write_json(report, args.out)
    print(f"\nwritten to {args.out}")
    failed = [k for k, v in report["modules"].items() if v["status"] == "failed"]
    return 1 if failed else 0
