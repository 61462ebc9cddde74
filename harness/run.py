"""One run: load → quantize → evaluate every task → one record. Independent of Hydra.

``execute(config)`` takes the resolved config as a plain dict (the CLI passes Hydra's), so runs
can be embedded and tested without the CLI.
"""
from __future__ import annotations

import datetime as dt
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError
from harness.inputs.data import resolve_data_dir
from harness.inputs.model import ModelConfig, load_model
from harness.inputs.windows import CalibrationSpec, calibration_windows
from harness.packed.checkpoint import save_packed
from harness.packed.qlinear import check_pack_config, measured_bits, pack_model, parity
from harness.plugins.manager import Plugins, make_plugins
from harness.plugins.method import Method
from harness.plugins.task import Task, TaskEnv
from harness.quantize.driver import quantize_model
from harness.quantize.primitives import check_bits
from harness.quantize.sequential import quantize_sequential
from harness.results.records import (
    SCHEMA_VERSION,
    completed,
    git_commit,
    make_run_id,
    package_versions,
)
from harness.util import build_config

log = logging.getLogger(__name__)

KNOBS = ("bits", "group_size", "sym", "ratio", "act_order", "true_sequential")


@dataclass
class RunContext:
    """What observers see of a run. ``state`` is scratch space for observers (keyed by plugin)."""

    run_id: str
    config: dict[str, Any]
    results_dir: Path
    identity: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    return name


def validate_knobs(cfg: dict[str, Any]) -> None:
    ratio = cfg.get("ratio")
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError(f"ratio={ratio} is outside [0, 1]; it is the fraction of weights kept at 4 bits")
    check_bits(cfg.get("bits"))
    for knob in ("act_order", "true_sequential", "sym"):
        if not isinstance(cfg.get(knob, False), bool):
            raise ConfigError(f"{knob}={cfg.get(knob)!r} must be true or false")
    if not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed={cfg.get('seed')!r} must be an integer")


def ignored_overrides(overrides: list[str], method: Method) -> list[str]:
    """Top-level knobs the user set on the command line that the chosen method does not use."""
    out = []
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key in KNOBS and key not in method.knobs:
            out.append(f"{ov} does not apply to method {method.name} (it uses: "
                       f"{', '.join(sorted(method.knobs)) or 'none'}); the run is the same without it")
    return out


def build(cfg: dict[str, Any], plugins: Plugins) -> tuple[Method, list[Task], TaskEnv, CalibrationSpec | None]:
    """Validate the config and instantiate the method and the tasks (no heavy work)."""
    validate_knobs(cfg)
    method_opts = dict(cfg["method"])
    method = plugins.methods.get(method_opts.pop("name")).from_options(method_opts)
    if not cfg.get("task"):
        raise ConfigError(f"no task selected; choose some of: {', '.join(plugins.tasks.names())}")
    cache_dir = Path(cfg["cache_dir"]).expanduser()
    env = TaskEnv(data_dir=resolve_data_dir(cfg.get("data_dir")), cache_dir=cache_dir,
                  device=resolve_device(cfg.get("device", "auto")))
    tasks = [plugins.tasks.get(name).from_options(dict(opts or {}), env) for name, opts in cfg["task"].items()]
    calib = build_config(CalibrationSpec, dict(cfg["calibration"]), "calibration") if method.needs_calibration \
        else None
    return method, tasks, env, calib


def execute(cfg: dict[str, Any], plugins: Plugins | None = None, overrides: list[str] | None = None) -> dict:
    """Run one configuration end to end and return its record (or the existing complete one)."""
    plugins = plugins or make_plugins()
    hook = plugins.hook
    method, tasks, env, calib = build(cfg, plugins)
    model_cfg = build_config(ModelConfig, dict(cfg["model"]), "model")
    save = bool(cfg.get("save", False))
    pack = bool(cfg.get("pack", False)) or save
    if pack:
        check_pack_config(method)
    warnings = ignored_overrides(list(overrides or []), method)
    for w in warnings:
        log.warning(w)
    g = getattr(method.config, "group_size", -1)
    q41 = model_cfg.source_grid.get("group_size")
    if method.quantizes and q41 and 0 < g <= q41 and q41 % g == 0:
        warnings.append(f"group_size={g} re-finds the {model_cfg.source_grid.get('format')} grid the model's "
                        f"weights were stored on (groups of {q41}): every method looks better than it is")
        log.warning(warnings[-1])

    identity = {
        "model": {k: v for k, v in cfg["model"].items()},
        "method": {"name": method.name, **vars(method.config)},
        "tasks": {t.name: t.protocol() for t in tasks},
        "calibration": vars(calib) if calib else None,
        "profile": cfg["profile"]["name"],
        "seed": cfg["seed"],
        **({"pack": True} if pack else {}),  # evaluation runs on the packed model
    }
    results_dir = Path(cfg["results_dir"]).expanduser()
    # only methods with one `bits` knob get it in the tag: mixed precision (ratio) carries its budget
    # in the label already, fp16 and pbllm have none
    tag = f"{method.label()} w{method.config.bits}" if "bits" in method.knobs else method.label()
    run_id = make_run_id(model_cfg.name, tag, identity)
    if not cfg.get("force") and not save and (done := completed(results_dir, run_id)):
        log.info("skipping %s: a complete record exists (force=true runs it again)", run_id)
        return done

    run = RunContext(run_id=run_id, config=cfg, results_dir=results_dir, identity=identity)
    torch.manual_seed(cfg["seed"])
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    offload = bool(cfg.get("offload")) and calib is not None and env.device != "cpu"
    model, tokenizer, model_info = load_model(model_cfg, env.device, env.cache_dir, seed=cfg["seed"],
                                              offload=offload)
    timings["load"] = time.perf_counter() - t0
    checkpoint = model_info.get("packed_checkpoint")
    if checkpoint and method.quantizes:
        raise ConfigError(f"model.path={model_cfg.path} is a packed checkpoint ({checkpoint['method']['label']}); "
                          f"evaluate it with method=fp16 (it is not quantized again)")
    if env.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    hook.harness_run_start(run=run)

    calib_info = None
    t0 = time.perf_counter()
    if calib is not None:
        windows, calib_info = calibration_windows(calib, tokenizer, env.data_dir, env.cache_dir)
        model_key = {"model": identity["model"], "seed": cfg["seed"]}  # the seed matters for random-init models
        quant = quantize_sequential(model, method, windows, env.device, hook, run,
                                    cache_dir=env.cache_dir, model_key=model_key)
    else:
        quant = quantize_model(model, method, hook, run)
    timings["quantize"] = time.perf_counter() - t0
    if offload:
        model.to(env.device)  # quantized layer by layer on the device; evaluated there as a whole
    grids = quant.pop("grids", {})  # tensors: never part of the record
    saved = None
    if pack:
        t0 = time.perf_counter()
        saved = pack_and_check(model, tokenizer, quant, grids, cfg, env, run_id, method, results_dir, save)
        timings["pack"] = time.perf_counter() - t0
    del grids
    record_method = {"name": method.name, "label": method.label(), "options": vars(method.config)}
    if checkpoint:
        summary = checkpoint.pop("quantization", None) or {}  # once, under "quantization", not also under "model"
        quant = {**summary, "loaded_from": model_cfg.path,
                 "measured": measured_bits(model, summary.get("linear_params", 0))}
        record_method = {**checkpoint["method"], "loaded_from_checkpoint": True}

    metrics: dict[str, dict[str, Any]] = {}
    for task in tasks:
        t0 = time.perf_counter()
        metrics[task.name] = task.evaluate(model, tokenizer, hook, run)
        timings[f"eval_{task.name}"] = time.perf_counter() - t0
        hook.harness_task_result(run=run, task=task.name, metrics=metrics[task.name])
    timings["total"] = time.perf_counter() - t_start

    record = {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "status": "complete",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_info,
        "method": record_method,
        "profile": cfg["profile"]["name"],
        "protocol": identity["tasks"],
        "calibration": calib_info,
        "seed": cfg["seed"],
        "data_dir": str(env.data_dir) if env.data_dir else "huggingface",
        "device": env.device,
        "quantization": quant,
        "metrics": metrics,
        "timings_s": timings,
        **({"checkpoint": saved} if saved else {}),
        "peak_memory_mb": peak_memory(env.device),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "warnings": warnings,
        "overrides": list(overrides or []),
        "config": cfg,
    }
    hook.harness_run_end(run=run, record=record)
    return record


def pack_and_check(model, tokenizer, quant: dict, grids: dict, cfg: dict, env: TaskEnv, run_id: str, method: Method,
                   results_dir: Path, save: bool) -> dict | None:
    """Convert the fake-quant model to ``QuantLinear`` layers, record parity and measured bits in
    ``quant``, and with ``save`` write the checkpoint (returns its sizes)."""
    fake = pack_model(model, grids, quant["layers"])
    spec = build_config(CalibrationSpec, dict(cfg["calibration"]), "calibration")
    windows, info = calibration_windows(spec, tokenizer, env.data_dir, env.cache_dir)
    n = int(cfg.get("parity_windows", 2))
    quant["parity"] = {**parity(model, fake, windows[:n], env.device), "corpus": info.get("corpus")}
    del fake
    quant["measured"] = measured_bits(model, quant["linear_params"])
    log.info("packed %d layers: %.3f measured bits/weight (nominal %.3f); parity max |Δlogit| %.3g, Δppl %.3g",
             quant["measured"]["packed_layers"], quant["measured"]["measured_avg_bits"], quant["avg_bits"],
             quant["parity"]["max_abs_logit_err"], quant["parity"]["ppl_diff"])
    if not save:
        return None
    summary = {k: v for k, v in quant.items() if k != "layers"}
    meta = {"method": {"name": method.name, "label": method.label(), "options": vars(method.config)},
            "run_id": run_id, "quantization": summary, "source_model": cfg["model"]}
    saved = save_packed(model, tokenizer, results_dir / "checkpoints" / run_id, meta)
    log.info("saved %s (%.1f MB; the fp16 model: %.1f MB)", saved["path"], saved["bytes"] / 2**20,
             saved["fp16_model_bytes"] / 2**20)
    return saved


def peak_memory(device: str) -> dict[str, float]:
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.startswith("cuda"):
        out["cuda_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    return out
