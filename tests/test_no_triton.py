"""The harness runs where Triton is absent: only the kernel modules of ``harness.packed`` (``kernels`` and
the ``gemv``, ``gemm``, ``gemm_tc``, ``common``, ``tuning`` modules it imports) import it, and only when a kernel runs
(CUDA, or the interpreter). Triton is hidden in subprocesses by ``tests/no_triton``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HIDE = str(Path(__file__).resolve().parent / "no_triton")
REPO = Path(__file__).resolve().parent.parent
# Hides Triton itself (in subprocesses); CI runs it once, in .ci/run's no-Triton pass.
pytestmark = pytest.mark.no_triton

TINY = ["+smoke=tiny", "task=[wikitext2]"]  # conf/smoke/tiny.yaml

RUN = r"""
import json, sys
sys.path.insert(0, "tests")
from conftest import _compose  # the same composition the CLI does
from harness.run import execute
rec = execute(_compose(sys.argv[1:]))
q = rec["quantization"]
print(json.dumps({"triton_imported": "triton" in sys.modules, "parity": q["parity"],
                  "packed": q["measured"]["packed_layers"]}))
"""


def hidden_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([HIDE, str(REPO)]), "PYTHONUNBUFFERED": "1"}


def test_triton_is_really_hidden():
    res = subprocess.run([sys.executable, "-c", "import triton"], env=hidden_env(), capture_output=True, text=True)
    assert res.returncode == 1 and "hidden by tests/no_triton" in res.stderr


@pytest.mark.slow
def test_a_packed_run_saves_loads_and_reports_without_triton(tmp_path, run_cli):
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, "-c", RUN, *TINY, "method=gptq", "pack=true", f"results_dir={out}"],
                         cwd=REPO, env=hidden_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["triton_imported"] is False and got["packed"] == 14  # the reference matmul ran every QuantLinear
    assert got["parity"]["max_abs_logit_err"] < 1e-3

    env = {"PYTHONPATH": hidden_env()["PYTHONPATH"]}
    res = run_cli("harness", *TINY, "method=rtn", "save=true", f"results_dir={out}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    (ckpt,) = (out / "checkpoints").iterdir()
    res = run_cli("harness", *TINY, "model=hf", f"model.path={ckpt}", "method=fp16", f"results_dir={out}", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli("harness.report", str(out), env=env)
    assert res.returncode == 0 and "wrote" in res.stderr, res.stderr[-3000:]
