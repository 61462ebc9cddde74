"""The GPU check: every GPU question of the project answered in one call of about 6 minutes, on the lent
machine's image as it is (``scripts/gpu_check.sh`` installs the carried wheels first, then runs this).

    python scripts/gpu_check.py --out DIR [--budget 400] [--only correctness,speed]
    GPU_CHECK_DRY_RUN=1 python scripts/gpu_check.py --out DIR     # CPU, tiny shapes, Triton interpreter

Steps, in order of what matters most if time runs out (each its own process with its own time limit,
all within ``--budget`` seconds): ``env`` (device, versions, what imports), ``warm`` (every kernel the
check runs compiled in parallel processes, into Triton's cache), ``correctness`` (kernels vs
an fp32 reference at LLaMA-7B shapes, 2/4-bit, g128 and per-channel, M = 1…16, activation spikes of
6·10⁴, half2 on and off), ``splitk`` (bitwise-identical repeats, counters back at zero), ``speed`` (GB/s,
cold and warm, vs torch fp16 and torch int4), ``ncu`` (DRAM throughput and issue-slot use of the default
GEMV), ``decode`` (CUDA-graph tokens/s, packed vs fp16), ``families`` (every tiny family × GPTQ/APTQ,
``device=cuda pack=true``), ``block7b`` (GPTQ/APTQ on one 7B-shaped block at 128 × 2048 calibration).

Nothing is autotuned (``HARNESS_AUTOTUNE=0``: the shipped configurations, compiled once and cached by
Triton across steps). Every measurement is one JSON line appended to ``DIR/gpu_check.jsonl`` as soon as
it is made (``benchmarks/_jsonl.py``); each step's output goes to ``DIR/steps.log``; ``DIR/summary.json``
gathers it all at the end. A step that fails or times out is recorded and the next one runs. Exit status
1 if any step failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from _jsonl import dry_run, emit  # noqa: E402

NCU_METRICS = ("gpu__time_duration.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
               "dram__bytes_read.sum.per_second", "sm__inst_issued.avg.pct_of_peak_sustained_active",
               "smsp__issue_active.avg.pct_of_peak_sustained_active",
               "sm__warps_active.avg.pct_of_peak_sustained_active")
KERNEL_STEPS = ("warm", "correctness", "splitk", "speed", "ncu")  # under the Triton interpreter in the dry run
CARRIED = ("hydra", "omegaconf", "antlr4")  # scripts/gpu_wheels.txt: what the image lacks and the check needs


def steps(tmp: Path) -> list[tuple[str, int, list[str]]]:
    """(name, time limit in seconds, command) in order of importance."""
    py = [sys.executable, "-u"]
    stack = ["--layers", "1", "--new-tokens", "2", "--prompt", "8"] if dry_run() else \
        ["--layers", "8", "--new-tokens", "64"]
    return [
        ("env", 30, [*py, __file__, "--env"]),
        ("warm", 90, [*py, "benchmarks/gpu_kernels.py", "warm"]),
        ("correctness", 120, [*py, "benchmarks/gpu_kernels.py", "correctness"]),
        ("splitk", 45, [*py, "benchmarks/gpu_kernels.py", "splitk"]),
        ("speed", 75, [*py, "benchmarks/gpu_kernels.py", "speed"]),
        ("ncu", 60, [*py, __file__, "--ncu"]),
        ("decode", 90, [*py, "benchmarks/decode.py", "--models", "llama7b", "--variants", "fp16,int4,int2",
                        "--modes", "graph", *stack, "--out", str(tmp)]),
        ("families", 90, [*py, "benchmarks/gpu_e2e.py", "families"]),
        ("block7b", 120, [*py, "benchmarks/gpu_e2e.py", "block7b"]),
    ]


def step_env(out: Path, name: str) -> dict[str, str]:
    env = dict(os.environ, GPU_CHECK_STEP=name, GPU_CHECK_JSONL=str(out / "gpu_check.jsonl"), PYTHONUNBUFFERED="1",
               HARNESS_AUTOTUNE="0", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("TRITON_INTERPRET", None)
    if dry_run() and name in KERNEL_STEPS:  # the model steps run the reference op on the CPU (as tests do)
        env["TRITON_INTERPRET"] = "1"
    return env


def run_step(out: Path, name: str, limit: float, cmd: list[str]) -> dict:
    """Run one step in its own process group, output appended to steps.log; killed at ``limit`` seconds."""
    t0 = time.perf_counter()
    log = out / "steps.log"
    with log.open("a") as f:
        f.write(f"\n===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=step_env(out, name), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc, timed_out = 124, True
    seconds = time.perf_counter() - t0
    os.environ["GPU_CHECK_STEP"] = name
    rec = emit("step", rc=rc, seconds=round(seconds, 2), limit_s=limit, timed_out=timed_out)
    print(f"== {name}: rc {rc}{' (timed out)' if timed_out else ''}, {seconds:.1f} s", flush=True)
    return rec


def env_info() -> int:
    """Device, versions, and whether the carried packages and the harness import."""
    import importlib

    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "dry_run": dry_run(), "ncu": shutil.which("ncu")}
    for mod in ("triton", "transformers", *CARRIED, "harness.run", "harness.packed.kernels"):
        try:
            m = importlib.import_module(mod)
            info[mod] = getattr(m, "__version__", "ok")
        except Exception as err:  # noqa: BLE001 - reported, the steps that need it will fail on their own
            info[mod] = f"{type(err).__name__}: {err}"[:200]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), sms=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    memory_gb=p.total_memory / 1e9, l2_mb=getattr(p, "L2_cache_size", 0) / 2**20)
    emit("env", **info)
    needed = ("triton", "transformers", *CARRIED, "harness.run")
    failed = [m for m in needed if not str(info[m])[0].isdigit() and info[m] != "ok"]
    return 1 if failed else 0


def ncu_command(csv: Path) -> list[str] | None:
    ncu = shutil.which("ncu")
    if ncu is None:
        return None
    return [ncu, "--csv", "--page", "raw", "--clock-control", "none", "--metrics", ",".join(NCU_METRICS),
            "-k", "regex:gemv", "--launch-skip", "2", "--launch-count", "1", "--log-file", str(csv),
            sys.executable, "benchmarks/gpu_kernels.py", "ncu-target"]


def parse_ncu(text: str) -> dict[str, str]:
    """The last kernel row of ``ncu --csv --page raw`` (header, units, rows) as {metric: value unit}."""
    import csv
    import io

    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].startswith("==")]
    if len(rows) < 3:
        return {}
    head, units, last = rows[0], rows[1], rows[-1]
    return {h: f"{v} {u}".strip() for h, u, v in zip(head, units, last, strict=False)
            if h in NCU_METRICS or h in ("Kernel Name", "Grid Size", "Block Size")}


def ncu_step() -> int:
    """``ncu`` on the default GEMV (4096×4096, 4-bit g128, M = 1): DRAM throughput and issue-slot use."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "ncu.csv"
        cmd = ncu_command(csv)
        if cmd is None or dry_run():  # the target still runs, so its code is checked
            rc = subprocess.run([sys.executable, "benchmarks/gpu_kernels.py", "ncu-target"], cwd=ROOT).returncode
            emit("ncu", skipped="dry run" if dry_run() else "ncu not on PATH", target_rc=rc)
            return rc
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        metrics = parse_ncu(csv.read_text() if csv.exists() else "")
        emit("ncu", rc=proc.returncode, metrics=metrics, stderr_tail=proc.stderr[-500:] if not metrics else "")
        return 0 if metrics else 1


def summarize(out: Path, wall: float) -> dict:
    """summary.json: per step rc/seconds/records/failures, and the measurements grouped by kind."""
    lines = [json.loads(x) for x in (out / "gpu_check.jsonl").read_text().splitlines() if x.strip()]
    by_kind: dict[str, list] = {}
    for r in lines:
        by_kind.setdefault(r["kind"], []).append(r)
    summary = {"wall_s": round(wall, 1), "dry_run": dry_run(), "steps": {}, "measurements": by_kind}
    for s in by_kind.get("step", []):
        mine = [r for r in lines if r["step"] == s["step"] and r["kind"] != "step"]
        summary["steps"][s["step"]] = {"rc": s["rc"], "seconds": s["seconds"], "timed_out": s["timed_out"],
                                       "records": len(mine), "failed": sum(r.get("ok") is False for r in mine)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\n{'step':<12} {'rc':>3} {'seconds':>8} {'records':>8} {'failed':>7}")
    for name, s in summary["steps"].items():
        print(f"{name:<12} {s['rc']:>3} {s['seconds']:>8.1f} {s['records']:>8} {s['failed']:>7}"
              f"{'  timed out' if s['timed_out'] else ''}")
    print(f"wall {wall:.1f} s; {len(lines)} JSON lines in {out / 'gpu_check.jsonl'}; summary in {out / 'summary.json'}")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu_check"))
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all steps together")
    p.add_argument("--only", default="", help="comma-separated step names (default: all)")
    p.add_argument("--limit-scale", type=float, default=1.0,
                   help="multiply every step's time limit (a dry run on a loaded CPU: 5)")
    p.add_argument("--env", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ncu", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.env:
        return env_info()
    if args.ncu:
        return ncu_step()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GPU_CHECK_JSONL"] = str(out / "gpu_check.jsonl")  # the driver's own step lines go there too
    t0 = time.perf_counter()
    only = set(filter(None, args.only.split(",")))
    rcs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, limit, cmd in steps(Path(tmp)):
            if only and name not in only:
                continue
            left = args.budget - (time.perf_counter() - t0)
            if left < 10:
                os.environ["GPU_CHECK_STEP"] = name
                emit("step", rc=-1, seconds=0, limit_s=0, timed_out=False, skipped="budget spent")
                rcs.append(1)
                continue
            rcs.append(run_step(out, name, min(limit * args.limit_scale, left), cmd)["rc"])
    summarize(out, time.perf_counter() - t0)
    return 1 if any(rcs) else 0


if __name__ == "__main__":
    sys.exit(main())
