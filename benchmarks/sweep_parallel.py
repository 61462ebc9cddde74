"""Wall time of one sweep through Hydra's submitit launcher on this machine with 1 and with N jobs at once.

The same sweep (by default the tiny settings of the CI sweep in ``tests/test_sweeps.py``, ``+smoke=tiny``
on WikiText-2, over method=fp16,rtn,gptq × bits=3,4: 6 points, 5 runs, since fp16 ignores bits; the CI
sweep itself is method=fp16,rtn × bits=3,4: 4 points, 3 runs) runs twice, each into a fresh results
directory (nothing reused), with ``hydra.sweeper.max_batch_size=1`` and ``=N``; the result is both wall
times and their ratio, and the load average before each (the machine may be shared).

    python benchmarks/sweep_parallel.py                  # 1 vs 2 jobs at once
    python benchmarks/sweep_parallel.py --jobs 4 method=rtn bits=2,3,4,8
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["+smoke=tiny", "task=[wikitext2]"]  # conf/smoke/tiny.yaml
POINTS = ["method=fp16,rtn,gptq", "bits=3,4"]


def sweep(jobs: int, points: list[str], root: Path) -> dict:
    """Run the sweep with ``jobs`` at once into ``root``; its wall time and how many records it wrote."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "harness", "-m", "hydra/launcher=local", f"hydra.sweeper.max_batch_size={jobs}",
           *TINY, f"results_dir={root}", f"hydra.sweep.dir={root / 'sweep'}", *points]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        sys.exit(f"sweep with {jobs} job(s) failed:\n{res.stderr[-3000:]}")
    return {"jobs": jobs, "wall_s": round(wall, 1), "records": len(list((root / "records").glob("*.json"))),
            "load_avg_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="jobs at once in the parallel sweep")
    ap.add_argument("points", nargs="*", default=POINTS, help="the sweep's overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [sweep(n, args.points, Path(tmp) / f"jobs{n}") for n in (1, args.jobs)]
    print(json.dumps({"points": args.points, "runs": runs, "cpus": os.cpu_count(),
                      "ratio_1_over_n": round(runs[0]["wall_s"] / runs[1]["wall_s"], 2)}, indent=2))


if __name__ == "__main__":
    main()
