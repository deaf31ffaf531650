"""Benchmarks: each module has ``run(quick=False) -> {figure: {"value", "baseline", "ratio", "unit", "note"}}``.

``python cli.py bench`` (bench/runner.py) runs every module that exists and prints one table of
ratios against baselines measured in the same run.
"""
