"""Sweeps through Hydra's submitit launcher on this machine (``hydra/launcher=local``, the same code path
as ``hydra/launcher=slurm`` without a cluster): jobs in separate processes, two at a time, records
written once, tables once at the end, an interrupted sweep resumed, a preempted job requeued."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_tool

require_tool("cluster")

REPO = Path(__file__).resolve().parent.parent
TINY = ["+smoke=tiny", "task=[wikitext2]"]  # conf/smoke/tiny.yaml
SUBMITIT_TIME = re.compile(r"submitit INFO \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\) - (Starting with|Exiting after)")


def sweep_args(results: Path, sweep_dir: Path, *points: str, jobs: int = 2) -> list[str]:
    return ["harness", "-m", "hydra/launcher=local", f"hydra.sweeper.max_batch_size={jobs}", *TINY,
            f"results_dir={results}", f"hydra.sweep.dir={sweep_dir}", *points]


def job_logs(sweep_dir: Path) -> str:
    """Everything the jobs logged (Hydra's per-job log files)."""
    return "".join(p.read_text() for p in sorted(sweep_dir.glob("*/harness.log")))


def written(logs: str) -> list[str]:
    """Run ids of the records the jobs wrote, one entry per write."""
    return [Path(m).stem for m in re.findall(r"record written to (\S+\.json)", logs)]


def reused(logs: str) -> list[str]:
    return re.findall(r"skipping (\S+): reusing the complete record", logs)


def job_intervals(sweep_dir: Path) -> list[tuple[dt.datetime, dt.datetime]]:
    """(start, end) of every submitit job, from its own log."""
    out = []
    for log in sweep_dir.glob(".submitit/*/*_0_log.out"):
        found = SUBMITIT_TIME.findall(log.read_text())
        times = {kind: dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, kind in found}
        out.append((times["Starting with"], times["Exiting after"]))
    return out


def most_at_once(intervals: list[tuple[dt.datetime, dt.datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "records").glob("*.json")}


@pytest.mark.slow
def test_parallel_sweep_writes_each_record_once_and_renders_the_tables_once_at_the_end(tmp_path, run_cli):
    results, sweep = tmp_path / "results", tmp_path / "sweep"
    # 4 sweep points, 3 runs: fp16 ignores bits, so its two points are one run (started together: one waits)
    res = run_cli(*sweep_args(results, sweep, "method=fp16,rtn", "bits=3,4"))
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(results)
    assert len(recs) == 3 and all(r["status"] == "complete" for r in recs.values())
    logs = job_logs(sweep)
    assert sorted(written(logs)) == sorted(recs)  # every record written exactly once
    (fp16,) = [k for k in recs if "FP16" in k]
    assert reused(logs) == [fp16]
    intervals = job_intervals(sweep)
    assert len(intervals) == 4 and most_at_once(intervals) == 2  # separate processes, two at a time
    # the tables: rendered once, by the launching process, after the last job ended
    launcher = res.stdout + res.stderr
    assert launcher.count("tables: ") == 1 and "tables: " not in logs
    md = results / "tables" / "tiny-llama__quick.md"
    assert md.stat().st_mtime >= max((results / "records" / f"{k}.json").stat().st_mtime for k in recs)
    rows = [line for line in md.read_text().splitlines()
            if line.startswith("| ") and "Method" not in line and "-bit*" not in line]  # not the group headers
    assert sorted(r.split("|")[1].strip() + r.split("|")[2].strip() for r in rows) == [
        "FP1616", "RTN3", "RTN4"]


@pytest.mark.slow
def test_interrupted_sweep_runs_only_the_unfinished_points_again(tmp_path, run_cli):
    results = tmp_path / "results"
    args = sweep_args(results, tmp_path / "sweep1", "method=rtn", "bits=2,3,4")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "launcher.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # the launcher, its job controllers and jobs: one group
        try:
            deadline = time.monotonic() + 300
            while not list((results / "records").glob("*.json")) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, mid-way
            proc.wait(timeout=30)
    done = records(results)
    assert 1 <= len(done) < 3, (tmp_path / "launcher.log").read_text()[-3000:]
    assert all(r["status"] == "complete" for r in done.values())  # killed jobs left no record

    res = run_cli(*sweep_args(results, tmp_path / "sweep2", "method=rtn", "bits=2,3,4"))
    assert res.returncode == 0, res.stderr[-3000:]
    logs = job_logs(tmp_path / "sweep2")
    assert sorted(reused(logs)) == sorted(done)  # the finished points are skipped ...
    assert len(written(logs)) == 3 - len(done) and not set(written(logs)) & set(done)  # ... the others run
    assert len(records(results)) == 3


def submitit_tasks(marker: str) -> list[int]:
    """Pids of the running submitit job processes whose command line mentions ``marker``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in argv and any(marker.encode() in a for a in argv):
            pids.append(int(cmdline.parent.name))
    return pids


@pytest.mark.slow
def test_preempted_job_is_requeued_and_its_run_starts_again(tmp_path):
    """submitit's preemption signal (USR2) mid-run: the launcher's checkpoint resubmits the same point, the
    job is requeued, the run starts again and writes its record once; nothing of the first try is kept."""
    results, sweep = tmp_path / "results", tmp_path / "sweep"
    args = sweep_args(results, sweep, "method=gptq", "bits=3", jobs=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "launcher.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            # the job's Hydra log appears when its run begins (submitit's signal handlers are installed by then)
            while not (sweep / "0" / "harness.log").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            (pid,) = submitit_tasks(str(sweep))
            os.kill(pid, signal.SIGSTOP)
            assert not (results / "records").exists() or not list((results / "records").glob("*.json"))  # mid-run
            os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a timeout or on preemption
            os.kill(pid, signal.SIGCONT)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert rc == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    (job_log,) = sweep.glob(".submitit/*/*_0_log.err")
    submitit_log = job_log.read_text() + job_log.with_suffix(".out").read_text()
    assert "this job is preempted" in submitit_log and "Requeued job" in submitit_log
    assert submitit_log.count("Starting with JobEnvironment") == 2  # the same job ran twice
    (rec,) = records(results).values()
    assert rec["status"] == "complete" and written(job_logs(sweep)) == [rec["run_id"]]


def test_slurm_launcher_submits_one_job_array_with_the_configured_resources(tmp_path, run_cli):
    """The real ``hydra/launcher=slurm`` path up to ``sbatch``: a stand-in ``sbatch`` keeps the script it is
    given and refuses it, so the sweep stops there (no cluster) and the script shows the resources asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_CAPTURE"\necho "sbatch: no cluster (test)" >&2\n'
                                    "exit 1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it before submitting
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = tmp_path / "sbatch.sh"
    res = run_cli("harness", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                  "hydra.launcher.gpus_per_node=2", "hydra.launcher.mem_gb=32", "hydra.launcher.timeout_min=90",
                  "hydra.launcher.array_parallelism=3",
                  *TINY, f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                  "method=rtn", "bits=2,3,4,8",
                  env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(script)})
    assert res.returncode != 0 and "sbatch: no cluster (test)" in res.stderr
    lines = set(script.read_text().splitlines())
    assert {"#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=32GB",
            "#SBATCH --time=90", "#SBATCH --cpus-per-task=8", "#SBATCH --signal=USR2@120"} <= lines
    assert not (tmp_path / "results" / "records").exists()  # nothing ran


def test_submitit_launchers_without_the_cluster_extra_give_one_line(tmp_path):
    hide = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.startswith('hydra_plugins.hydra_submitit_launcher'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "sys.argv = ['harness', '-m', 'hydra/launcher=slurm', 'method=rtn']\n"
            "from harness.cli import main\n"
            "main()\n")
    res = subprocess.run([sys.executable, "-c", hide], cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in res.stderr.splitlines() if "[ERROR]" in line]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    assert "hydra/launcher=slurm needs Hydra's submitit launcher: pip install -e '.[cluster]'" in errors[0]
