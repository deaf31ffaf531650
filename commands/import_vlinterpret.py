"""`cli.py import-vlinterpret`: bring a VL-InterpreT database into a store, safely.

    python cli.py import-vlinterpret path/to/example_database2 --out demo_store [--run NAME]

Example pickles are loaded with a restricted unpickler (numpy arrays and plain data only); a
database that tries to run code stops the import with a one-line error naming the example.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    p.add_argument("path", help="VL-InterpreT database directory (the LMDB folder holding data.mdb)")
    p.add_argument("--out", required=True, help="store path (directory) or fsspec URL")
    p.add_argument("--run", default=None, help="run name (default: vlinterpret-<database folder name>)")
    p.add_argument("--limit", type=int, default=None, help="import at most N examples")


def default_run_name(path: str) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).resolve().name).strip("-")
    return f"vlinterpret-{name}"[:100] if name else "vlinterpret"


def run(args) -> int:
    from pipeline.importers.vlinterpret import import_vlinterpret
    from store.zarr_store import VLStore

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if not Path(args.path).exists():
        raise FileNotFoundError(f"no VL-InterpreT database at {args.path}")
    out = args.out
    if "://" not in out:
        parent = Path(out).resolve().parent
        if not parent.exists():
            raise FileNotFoundError(f"--out: directory {parent} does not exist")
    run_name = args.run or default_run_name(args.path)
    store = VLStore(out, mode="a")
    res = import_vlinterpret(args.path, store, run_name, limit=args.limit)
    print(f"{run_name}: {res.written} written, {res.skipped} already there, of {res.examples} examples "
          f"({res.n_layers} layers x {res.n_heads} heads) in {res.seconds:.1f} s -> {out}")
    for n in res.notices:
        print(f"  note: {n}")
    return 0
