"""Rich console observer: progress bars per phase and a final table of the metrics."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.plugins.hookspecs import hookimpl

KEY = "console"


def _state(run) -> dict:
    return run.state.setdefault(KEY, {"console": Console(stderr=True), "tasks": {}, "progress": None})


@hookimpl
def harness_run_start(run):
    st = _state(run)
    st["console"].rule(f"[bold]{run.run_id}")


@hookimpl
def harness_phase_start(run, phase, total):
    st = _state(run)
    if st["progress"] is None:
        st["progress"] = Progress(
            TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=st["console"], transient=False,
        )
        st["progress"].start()
    st["tasks"][phase] = st["progress"].add_task(phase, total=total)


@hookimpl
def harness_phase_advance(run, phase, advance):
    st = _state(run)
    if phase in st["tasks"]:
        st["progress"].advance(st["tasks"][phase], advance)


@hookimpl
def harness_phase_end(run, phase, seconds):
    st = _state(run)
    if phase in st["tasks"]:
        task_id = st["tasks"].pop(phase)
        st["progress"].update(task_id, description=f"{phase} ✓")
    if not st["tasks"] and st["progress"] is not None:
        st["progress"].stop()
        st["progress"] = None


@hookimpl
def harness_run_end(run, record):
    st = _state(run)
    q = record["quantization"]
    table = Table(title=f"{record['method']['label']} · {q['avg_bits']:.2f} bits/weight · profile {record['profile']}")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for task, metrics in record["metrics"].items():
        for name, m in {**metrics.get("tasks", {}), task: metrics}.items():  # a suite: its tasks, then itself
            for k in ("ppl", "acc", "acc_norm", "mean"):
                if k in m:
                    ci = m.get(f"{k}_ci")
                    err = f" ± {(ci['high'] - ci['low']) / 2:.2g}" if isinstance(ci, dict) else ""
                    table.add_row(name, k + (" *" if m.get("metric") == k and k != "mean" else ""),
                                  f"{m[k]:.4f}{err}")
    st["console"].print(table)
    st["console"].print("± half-width of the 95% bootstrap interval (windows / items)")
    if any("tasks" in m for m in record["metrics"].values()):
        st["console"].print("* the metric that feeds the suite mean")
    if "record_path" in record:
        st["console"].print(f"record: {record['record_path']}")
