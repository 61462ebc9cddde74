"""No module imports a layer above its own (the order in ``harness/__init__.py``), and the layers form no
cycle: every ``import`` in ``harness/``, ``methods/`` and ``tasks/`` is read, function-level ones included."""
import ast
from pathlib import Path

from harness.util import REPO_ROOT

#: package prefix → layer (the longest prefix wins); see the docstring of ``harness/__init__.py``
LAYERS = {
    "harness.errors": 1, "harness.util": 1,
    "harness.quantize": 2,
    "harness.packed": 3,
    "harness.inputs": 4,
    "harness.plugins": 5,
    "methods": 6, "tasks": 6,
    "harness.results": 7,
    "harness.run": 8, "harness.cli": 8, "harness.callbacks": 8, "harness.__main__": 8,
    "harness.report": 8, "harness.compare": 8,
}
#: upward edges left to the results refactor (issue 24 items 3-4), to be emptied there
KNOWN = {
    ("tasks.perplexity", "harness.results.stats"),  # intervals: pure arithmetic that lives in results/
    ("tasks.zeroshot", "harness.results.stats"),
}


def layer(module: str) -> int | None:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return LAYERS[best] if best else None


def modules() -> dict[str, Path]:
    out = {}
    for root in ("harness", "methods", "tasks"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def edges() -> set[tuple[str, str]]:
    return {(m, dep) for m, path in modules().items() if layer(m) for dep in imports(path) if layer(dep)}


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "harness" and layer(m) is None] == []


def test_no_module_imports_a_layer_above_it():
    upward = sorted((m, d) for m, d in edges() if layer(d) > layer(m) and (m, d) not in KNOWN)
    assert upward == [], "upward imports (see the layer order in harness/__init__.py)"


def test_the_known_exceptions_still_exist():
    """An exception that was fixed leaves the list, so the list never hides a new edge."""
    assert KNOWN <= edges()


def test_no_cycle_between_packages():
    pkg = {m: ".".join(m.split(".")[:2]) if m.startswith("harness.") else m.split(".")[0] for m in modules()}
    graph: dict[str, set[str]] = {}
    for m, d in edges() - KNOWN:
        src, dst = pkg[m], next((pkg[k] for k in (d, d.rpartition(".")[0]) if k in pkg), None)
        if dst and src != dst:
            graph.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return a == b or any(n not in seen and reaches(n, b, seen | {n}) for n in graph.get(a, ()))

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert cycles == []
