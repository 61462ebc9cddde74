"""The layers of the house, checked statically: no module imports a layer above its own, and no modules
import each other in a circle.

Every ``import`` and ``from … import`` under ``harness/``, ``methods/`` and ``tasks/`` is read with
``ast`` (top-level, function-level and ``TYPE_CHECKING`` ones alike: a lower layer should not even name
a higher one) and resolved to the module it names. Layers, low → high (a module may import its own
layer and any layer below it):

0. ``harness.errors``                    the exception types
1. ``harness.util``                      atomic writes, locks, hashes, did-you-mean
2. ``harness.quantize``                  grids, RTN, the compensation loop, layers, the sequential driver
3. ``harness.packed``, ``harness.export``  packing, Triton kernels + reference, QuantLinear, checkpoints; GPTQ
                                         and compressed-tensors export
4. ``harness.inputs``                    model loading (packed checkpoints too), corpora, windows, calibration
5. ``harness.results``                   records, statistics, report: data about runs, read by plugins
6. ``harness.plugins``, ``harness``      hook specs, registries, observers (``harness/__init__`` re-exports
                                         ``hookimpl`` for plugin authors)
7. ``methods``, ``tasks``                the method and task plugins
8. ``harness.run``                       the data path: plan → load → quantize → pack → evaluate → record
9. ``harness.cli``, ``harness.__main__``, ``harness.report``, ``harness.compare``   entry points

Known violations that are being removed are listed in ``PENDING_EDGES`` / ``PENDING_CYCLES``, each
with its reason. The test fails on any violation not listed there, and on a listed one that no longer
occurs (delete its entry: the lists shrink to empty).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "tasks")

LAYERS: list[tuple[str, ...]] = [
    ("harness.errors",),
    ("harness.util",),
    ("harness.quantize",),
    ("harness.packed", "harness.export"),
    ("harness.inputs",),
    ("harness.results",),
    ("harness.plugins", "harness"),
    ("methods", "tasks"),
    ("harness.run",),
    ("harness.cli", "harness.__main__", "harness.report", "harness.compare", "harness.callbacks"),
]

# (importer, imported): upward edges being removed (issue 24, item 3).
PENDING_EDGES: dict[tuple[str, str], str] = {}

# Strongly connected sets of modules (each imports the others, directly or through the set).
PENDING_CYCLES: dict[frozenset[str], str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The longest module prefix of ``name`` (``harness.packed.ops.quant_matmul`` → ``harness.packed.ops``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (anywhere in its body)."""
    mods = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    pkg = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(pkg + ([base] if base else []))
                # `from pkg import module` names the module; `from module import name` the module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, mods)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def layer_of(mod: str) -> int:
    """The layer of the longest matching prefix in ``LAYERS``."""
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    return rank


def upward_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, bs in graph.items() for b in bs if layer_of(b) > layer_of(a)}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in sorted(modules()):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) < 0] == []


def test_no_new_upward_import():
    new = upward_edges(import_graph()) - set(PENDING_EDGES)
    assert not new, "imports of a higher layer (see this file's docstring for the layers):\n" + "\n".join(
        f"  {a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})" for a, b in sorted(new))


def test_no_new_import_cycle():
    new = cycles(import_graph()) - set(PENDING_CYCLES)
    assert not new, "modules that import each other in a circle:\n" + "\n".join(
        "  " + " ↔ ".join(sorted(c)) for c in new)


def test_pending_violations_still_occur():
    """A fixed violation leaves the allowlist, so that it cannot come back unnoticed."""
    graph = import_graph()
    gone = [f"edge {a} → {b}" for a, b in PENDING_EDGES if (a, b) not in upward_edges(graph)]
    gone += ["cycle " + " ↔ ".join(sorted(c)) for c in PENDING_CYCLES if c not in cycles(graph)]
    assert not gone, "no longer occur; delete them from PENDING_EDGES / PENDING_CYCLES:\n  " + "\n  ".join(gone)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The walker itself: an import inside a function and a relative import both count."""
    pkg = tmp_path / "harness"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from harness.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGES", ("harness",))
    graph = import_graph()
    assert graph["harness.sub.a"] == {"harness.sub.b"} and graph["harness.sub.b"] == {"harness.sub.a"}
    assert cycles(graph) == {frozenset({"harness.sub.a", "harness.sub.b"})}
