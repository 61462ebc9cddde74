"""Shared fixtures. Tests read real data from ../shared/data (or $HARNESS_DATA) and cache the
converted default model under $HARNESS_CACHE (default ~/.cache/quant-harness).

Tiers: ``pytest -m "not slow"`` is the fast tier for the edit loop (every module keeps tests there);
``pytest`` runs everything, as CI does. A test that needs a tool CI installs (Chromium, Triton's ptxas,
the cluster extra, the shared data) asks ``require_tool(name)``: missing, it skips here, and under
``CI=true`` it fails, so that CI never passes by skipping what it was meant to check.

The Hugging Face Hub is switched off for the whole session (and the CLI subprocesses): every test
runs from local files, which proves the local-data paths never reach for the Hub."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub / datasets
os.environ["HF_DATASETS_OFFLINE"] = "1"

import torch  # noqa: E402

# Without CUDA, Triton kernels run in the interpreter (set before harness.packed.kernels is imported: the
# @triton.jit decorator reads it). Subprocesses (CLI tests) inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from harness.cli import CONF_DIR  # noqa: E402
from harness.inputs.data import resolve_data_dir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _ptxas() -> Path | None:
    """Triton's bundled ptxas (what it runs for sm_90), if Triton and the binary are there."""
    try:
        import triton
    except ImportError:
        return None
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # triton >= 3.6

        path = Path(get_ptxas(90).path)
    except (ImportError, TypeError, RuntimeError, AttributeError):
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


def _cluster_extra() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except (ImportError, ValueError):
        return False


# name → (how to find it: the found thing or None/False, how to get it)
TOOLS = {
    "chromium": (lambda: shutil.which("chromium"), "Debian's chromium (.ci/run installs it)"),
    "ptxas": (_ptxas, "Triton's bundled ptxas (pip install triton)"),
    "cluster": (_cluster_extra, "the cluster extra: pip install -e .[cluster]"),
    "data": (lambda: resolve_data_dir(None), "a local data directory: set HARNESS_DATA or put shared/data beside "
                                              "the checkout"),
}


def require_tool(name: str):
    """The tool ``name`` of ``TOOLS`` (what its finder returns), or a skip of the calling test when it is
    missing; under ``CI=true`` a failure instead, since CI installs every one of them."""
    find, how = TOOLS[name]
    found = find()
    if found:
        return found
    if CI:
        pytest.fail(f"{name} is missing under CI=true, where CI installs it: {how}", pytrace=False)
    pytest.skip(f"needs {how}")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_tool("data")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", "~/.cache/quant-harness")).expanduser()


def _compose(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="session")
def compose_cfg():
    """``compose_cfg([overrides])``: the resolved config as a plain dict, as the CLI would compose it."""
    return _compose


@pytest.fixture
def tiny_cfg(tmp_path):
    """A fast config: tiny random LLaMA, 2 windows of 64 tokens per task, no W&B."""

    def make(*overrides: str) -> dict:
        return _compose([
            "+smoke=tiny", f"results_dir={tmp_path / 'results'}", *overrides,  # conf/smoke/tiny.yaml
        ])

    return make


def _run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None
             ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli("harness", *overrides, env={...})``: ``python -m ...`` in a subprocess from the checkout."""
    return _run_cli


@pytest.fixture(scope="session")
def correlated_inputs():
    """``correlated_inputs(n, d, seed)``: (n, d) inputs with correlated channels, as layer inputs are."""

    def make(n=512, d=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(d, d, generator=g) / d**0.5
        return torch.randn(n, d, generator=g) @ A + 0.1 * torch.randn(n, d, generator=g)  # (n, d)

    return make


@pytest.fixture(scope="session")
def hessian():
    """``hessian(X)``: GPTQ's H = 2/n Σ XXᵀ of inputs X (n, d) → (d, d), through ``Gptq.add_batch``."""
    from methods.gptq import Gptq

    def H(X):
        m = Gptq(Gptq.default_config())
        m.add_batch("l", X.unsqueeze(0))
        return m.H["l"]

    return H
