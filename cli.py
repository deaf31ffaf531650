"""VL-Lens command line.

    python cli.py models
    python cli.py record --model vilt-easyvqa --dataset easyvqa --split test --limit 100 --out demo_store
    python cli.py attribute ...  |  finetune ...  |  import-vlinterpret ...  |  bench ...

Errors print one clear line (no traceback) and exit non-zero; set VL_LENS_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module under commands/, one-line help)
SUBCOMMANDS = {
    "models": ("models", "list the registered adapters and named models"),
    "record": ("record", "record a data set through one or more models into a Zarr store"),
    "attribute": ("attribute", "attribute an answer to pixels and words (ig, rollout, relevance, occlusion, attention)"),
    "faithfulness": ("faithfulness", "measure each attribution method's faithfulness (perturbation curves, mask share)"),
    "finetune": ("finetune", "fine-tune a registered model on a data set"),
    "import-vlinterpret": ("import_vlinterpret", "import a VL-InterpreT database into a store (safely)"),
    "bench": ("bench", "run every benchmark and print one table of ratios"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cli.py", description="VL-Lens: look inside vision-language transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(f"commands.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"commands.{module}":
                raise
            p.set_defaults(_missing=name)
            continue
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"error: '{args._missing}' is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; committed examples are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; tracebacks on request
        if os.environ.get("VL_LENS_DEBUG"):
            raise
        from core.errors import AdapterError, InputError
        from core.errors import SourceError
        from core.errors import StoreError

        known = (AdapterError, InputError, SourceError, StoreError, FileNotFoundError, ValueError)
        prefix = "error" if isinstance(e, known) else f"error ({type(e).__name__})"
        print(f"{prefix}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
