"""The architecture, checked: imports run one way, bottom to top, and nothing imports in a circle.

Layers (a module may import its own layer or any below it, never above):

  0  core/ and store/schema.py          errors, the example content hash, attention kinds, paths, the Record
  1  store/, sources/                    persistence; data set loaders
  2  adapters/                           the only place that knows a model
  3  analysis/                           statistics, projections, attribution, faithfulness
  4  pipeline/                           source -> adapter -> statistics -> store; parallel; importers
  5  training/, demo/                    the fine-tuning loop; demo configs, weights and store builder
  6  front ends: streamlit_app, views/, ui/, charts/, cli, commands/, bench/, vllens (notebook API), testkit/
  7  tests/

Read with ast from the source tree, so a lazy import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", ".git", "node_modules", "__pycache__", "out", "tmp"}

LAYERS = [
    ("core", "store.schema"),
    ("store", "sources"),
    ("adapters",),
    ("analysis",),
    ("pipeline",),
    ("training", "demo"),
    ("streamlit_app", "views", "ui", "charts", "cli", "commands", "bench", "vllens", "testkit"),
    ("tests",),
]


def layer_of(module: str) -> int | None:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or module.startswith(p + "."):
                # the longest matching prefix wins (store.schema sits below the rest of store/)
                if best is None or len(p) > best[1]:
                    best = (i, len(p))
    return None if best is None else best[0]


def project_modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if SKIP.intersection(rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported by the file (``from pkg import mod`` resolves to pkg.mod when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in graph() if layer_of(m) is None)
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_imports_run_one_way():
    upward = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                    for m, targets in graph().items() for t in targets
                    if layer_of(m) is not None and layer_of(t) is not None and layer_of(t) > layer_of(m))
    assert not upward, "imports against the direction of the layers:\n" + "\n".join(upward)


def test_no_import_circles():
    g = graph()
    # A package's __init__ re-exporting its own submodules is not a circle through another file.
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and g.get(t) and m in g[t])} for m, ts in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule itself can fail: an adapter importing a view is upward, a view importing core is not."""
    assert layer_of("adapters.vilt") < layer_of("views.ask")
    assert layer_of("store.schema") < layer_of("store.zarr_store")
    assert layer_of("core.errors") == 0 and layer_of("tests.test_store") == 7
    bad = tmp_path / "bad.py"
    bad.write_text("from views.ask import x\nimport core.ids\n")
    modules = {"views.ask": bad, "core.ids": bad, "core": bad}
    assert imports_of(bad, modules) == {"views.ask", "core.ids"}
