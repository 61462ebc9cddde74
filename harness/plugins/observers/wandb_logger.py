"""Weights & Biases observer. Offline by default (files under ``<results_dir>/wandb``, uploaded later
by ``wandb sync``); ``wandb.mode=disabled`` turns it off. Runs of one sweep share a group (the
sweep's folder, set by the CLI, or ``wandb.group``); every metric (intervals' bounds included) is
logged and in the summary, and the record is attached as a ``run-record`` artifact. A W&B failure
is logged and never loses the run or its record (the record is written before this observer's
``run_end``)."""
from __future__ import annotations

import logging
from typing import Any

from harness.plugins.hookspecs import hookimpl

log = logging.getLogger(__name__)
KEY = "wandb"


def _settings(run) -> dict[str, Any]:
    return dict(run.config.get("wandb") or {"mode": "offline"})


def _guard(run, what: str, fn) -> None:
    wb = run.state.get(KEY)
    if wb is None:
        return
    try:
        fn(wb)
    except Exception as err:  # noqa: BLE001 - an observer must never break the run
        log.warning("W&B %s failed (%s: %s); continuing without W&B", what, type(err).__name__, err)
        run.state[KEY] = None


@hookimpl
def harness_run_start(run):
    opts = _settings(run)
    if opts.get("mode", "offline") == "disabled":
        return
    try:
        import wandb

        d = run.results_dir / "wandb"
        d.mkdir(parents=True, exist_ok=True)
        run.state[KEY] = {
            "run": wandb.init(project=opts.get("project", "quant-harness"), entity=opts.get("entity"),
                              mode=opts.get("mode", "offline"), dir=str(run.results_dir), name=run.run_id,
                              group=opts.get("group"), job_type=run.config["method"]["name"],
                              config=run.config, reinit="finish_previous",
                              settings=wandb.Settings(quiet=opts.get("quiet", True))),
            "layers": [],
        }
    except Exception as err:  # noqa: BLE001
        log.warning("W&B init failed (%s: %s); continuing without W&B", type(err).__name__, err)
        run.state[KEY] = None


@hookimpl
def harness_layer_quantized(run, name, info):
    _guard(run, "layer log", lambda wb: wb["layers"].append(
        [name, info.get("bits"), info.get("group_size"), info.get("numel"), info.get("err")]))


def flatten_numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """``{"tasks": {"piqa": {"acc": x}}, "mean": y}`` → ``{"zeroshot/piqa/acc": x, "zeroshot/mean": y}``."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten_numbers(v, prefix if k == "tasks" else f"{prefix}/{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = v
    return out


@hookimpl
def harness_task_result(run, task, metrics):
    nums = flatten_numbers(metrics, task)
    _guard(run, "metric log", lambda wb: wb["run"].log(nums))


@hookimpl
def harness_run_end(run, record):
    def finish(wb):
        import wandb

        if wb["layers"]:
            wb["run"].log({"layers": wandb.Table(columns=["layer", "bits", "group_size", "numel", "rel_err"],
                                                 data=wb["layers"])})
        q = record["quantization"]
        metrics = {k: v for t, m in record["metrics"].items() for k, v in flatten_numbers(m, t).items()}
        wb["run"].summary.update({"avg_bits": q["avg_bits"], "avg_bits_with_overhead": q["avg_bits_with_overhead"],
                                  **{f"timing/{k}": v for k, v in record["timings_s"].items()}, **metrics})
        if record.get("record_path"):  # the whole record travels with the run (uploaded by wandb sync)
            artifact = wandb.Artifact(name=f"record-{record['run_id']}", type="run-record",
                                      metadata={"run_id": record["run_id"], "label": record["method"]["label"]})
            artifact.add_file(record["record_path"], name="record.json")
            wb["run"].log_artifact(artifact)
        wb["run"].finish()

    _guard(run, "finish", finish)
