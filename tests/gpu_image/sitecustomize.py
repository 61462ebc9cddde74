"""Start-up hook that makes this Python look like the lent GPU machines' image: every installed package
that the image lacks is hidden, except the wheels the GPU check carries.

``PYTHONPATH=tests/gpu_image`` makes Python import this module at start-up. The image's distributions
are listed in ``scripts/gpu_image_packages.txt``, the carried ones in ``scripts/gpu_wheels.txt``; the
harness's own distribution stays. Every other installed distribution's top-level modules (unless an
allowed distribution provides the same name, as namespace packages do) then raise
``ModuleNotFoundError`` on import, so a step of ``scripts/gpu_check.py`` that needs a package the image
lacks fails here, in CI, and not on the GPU machine. ``GPU_IMAGE_HIDDEN`` (set here) lists what is hidden.
Used by ``tests/test_gpu_check.py``; the same idea as ``tests/no_triton``.
"""
import os
import re
import sys
from importlib import metadata
from importlib.machinery import PathFinder
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parent.parent.parent / "scripts"
_OWN = "quant-harness"


def _names(path: Path) -> set[str]:
    """Normalised distribution names of a list file (one a line, ``NAME`` or ``NAME==VERSION``, # comments)."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(_norm(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installs (top_level.txt, else its RECORD)."""
    text = dist.read_text("top_level.txt")
    if text:
        return {t.strip() for t in text.split() if t.strip()}
    names = set()
    for f in dist.files or ():
        part = f.parts[0] if f.parts else ""
        if part.endswith((".dist-info", ".egg-info", ".pth", ".data")) or part in ("..", "__pycache__", "bin"):
            continue
        names.add(part.removesuffix(".py").split(".")[0])
    return {n for n in names if n.isidentifier()}


def _closure(names: set[str], dists: dict[str, metadata.Distribution]) -> set[str]:
    """``names`` and everything they require as installed here (extras left out). The versions here may
    need a package the image's older versions do not (huggingface-hub here needs httpx2): that is version
    skew, not a package the check forgot, so it stays importable."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in (dists[name].requires or []) if name in dists else []:
            if "extra ==" not in req.replace('extra==', 'extra =='):
                todo.append(_norm(re.split(r"[=<>!~ ;\[(]", req, maxsplit=1)[0]))
    return seen


def hidden() -> tuple[set[str], set[str]]:
    """(top-level modules, normalised distribution names) that the image lacks and the check does not carry."""
    dists = {_norm(d.metadata["Name"] or ""): d for d in metadata.distributions()}
    roots = _names(_SCRIPTS / "gpu_image_packages.txt") | _names(_SCRIPTS / "gpu_wheels.txt")
    allowed = _closure(roots, dists) | {_OWN}  # the harness itself, not what it requires
    keep, hide = set(), set()
    for name, dist in dists.items():
        (keep if name in allowed else hide).update(_top_level(dist))
    modules = hide - keep - set(sys.stdlib_module_names) - {"_distutils_hack", "setuptools", "pkg_resources", "pip"}
    return modules, set(dists) - allowed


class _ImageView:
    """``PathFinder`` as the image would answer: a hidden module is not found (``find_spec`` → None, so
    ``importlib.util.find_spec`` and availability checks such as accelerate's say absent and ``import``
    raises ``ModuleNotFoundError``), and a hidden distribution has no metadata (``importlib.metadata``)."""

    def __init__(self, modules: set[str], dists: set[str]):
        self.modules, self.dists = modules, dists

    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in self.modules:
            return None
        return PathFinder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):
        return (d for d in PathFinder.find_distributions(*args, **kwargs)
                if _norm(d.metadata["Name"] or "") not in self.dists)

    def invalidate_caches(self):
        PathFinder.invalidate_caches()


_modules, _dists = hidden()
os.environ["GPU_IMAGE_HIDDEN"] = ",".join(sorted(_modules))
sys.meta_path[:] = [_ImageView(_modules, _dists) if f is PathFinder else f for f in sys.meta_path]
