"""One run as a data path: plan → load → quantize → pack → evaluate → record. Independent of Hydra.

``execute(config)`` takes the resolved config as a plain dict (the CLI passes Hydra's), so runs
can be embedded and tested without the CLI. ``plan`` does every check that needs no model (knobs,
the method's capabilities against ``pack``/``save``, the device, the group size against the
model's widths read from its config, the data files and their hashes) and fixes the run identity,
so bad input costs nothing; the phases after it each do one thing.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import harness
from harness.errors import ConfigError
from harness.export import PACKED, check_export, check_format, plan_check
from harness.inputs.data import CORPUS_FILES, data_fingerprint, resolve_data_dir
from harness.inputs.model import ModelConfig, architecture, load_model, map_devices, place
from harness.inputs.windows import CalibrationSpec, calibration_windows
from harness.packed.checkpoint import is_packed_checkpoint
from harness.plugins.hookspecs import RunContext
from harness.plugins.manager import Plugins, make_plugins
from harness.plugins.method import Method
from harness.plugins.task import Task, TaskEnv
from harness.quantize.driver import MethodRun, quantize_model
from harness.quantize.layers import linear_widths
from harness.quantize.primitives import check_bits
from harness.quantize.sequential import quantize_sequential
from harness.results.records import (
    SCHEMA_VERSION,
    completed,
    git_commit,
    make_run_id,
    package_versions,
    record_path,
)
from harness.util import REPO_ROOT, build_config, cache_lock, canonical_hash, file_sha256, write_atomic

log = logging.getLogger(__name__)

KNOBS = ("bits", "group_size", "sym", "ratio", "act_order", "true_sequential")
#: Modules whose code decides the numbers of every run (the method's and the tasks' own modules are
#: added per run; the packed modules when the run packs). Their file hashes join the run identity.
CORE_MODULES = ("harness/run.py", "harness/inputs", "harness/quantize", "harness/plugins/method.py",
                "harness/plugins/task.py")
PACKED_MODULES = ("harness/packed",)
#: Model options that say where the model runs, not what it computes: like ``device``, not part of the identity.
PLACEMENT = ("device_map",)


# ----------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Everything decided before the model is loaded."""

    cfg: dict[str, Any]
    plugins: Plugins
    method: Method
    tasks: list[Task]
    env: TaskEnv
    calib: CalibrationSpec | None
    model_cfg: ModelConfig
    pack: bool
    save: bool
    save_format: str  # packed (harness.packed.checkpoint) | gptq | compressed-tensors (harness.export)
    offload: bool
    results_dir: Path
    identity: dict[str, Any]
    run_id: str
    warnings: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def resolve_device(name: Any) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` → a device that exists here, or a one-line error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = str(name).partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ConfigError(f"device={name!r} is unknown; use auto, cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return str(name)


def validate_knobs(cfg: dict[str, Any]) -> None:
    ratio = cfg.get("ratio")
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError(f"ratio={ratio} is outside [0, 1]; it is the fraction of weights at a mixed-precision "
                          f"method's high bit width (APTQ: method.high_bits), the rest at its low one")
    check_bits(cfg.get("bits"))
    for knob in ("act_order", "true_sequential", "sym", "pack", "save", "offload", "force"):
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
    env = TaskEnv(data_dir=resolve_data_dir(cfg.get("data_dir")), cache_dir=Path(cfg["cache_dir"]).expanduser(),
                  device=resolve_device(cfg.get("device", "auto")))
    tasks = [plugins.tasks.get(name).from_options(dict(opts or {}), env) for name, opts in cfg["task"].items()]
    calib = build_config(CalibrationSpec, dict(cfg["calibration"]), "calibration") if method.needs_calibration \
        else None
    return method, tasks, env, calib


def check_capabilities(method: Method, model_cfg: ModelConfig, env: TaskEnv, pack: bool) -> None:
    """Refuse, before any model is loaded, what the method cannot do on this model and device."""
    if pack:
        refusal = method.pack_refusal()
        if refusal:
            raise ConfigError(f"pack=true/save=true: {method.label()} cannot be packed: {refusal}; "
                              f"run it with pack=false (fake-quant evaluation)")
        from harness.packed.ops import check_kernels  # no Triton import: it only looks for the package

        check_kernels(env.device)
    g = getattr(method.config, "group_size", -1)
    if not method.quantizes or g == -1:
        return
    widths = linear_widths(architecture(model_cfg, env.cache_dir))
    for what, width in widths.items():
        if width % g:
            fits = max((d for d in (256, 128, 64, 32, 16, 8) if all(w % d == 0 for w in widths.values())), default=None)
            hint = f"e.g. {fits}" if fits else "none of 8..256 fits"
            raise ConfigError(f"group_size={g} does not divide in_features={width} ({what} of {model_cfg.name}); "
                              f"use a divisor of every layer's width ({hint}) or -1 for per-channel")


def check_placement(cfg: dict[str, Any], method: Method, model_cfg: ModelConfig, env: TaskEnv, pack: bool) -> None:
    """Refuse, in one line before loading, a ``model.device_map`` this run cannot use: a GPU that is not
    there; packed layers run on one device; a quantizing method needs the undispatched model
    (``offload=true``: it stays on the CPU while quantized, then is dispatched); a packed checkpoint
    loads onto ``device``."""
    dm = model_cfg.device_map
    if dm is None:
        return
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for module, dev in (map_devices(dm) if isinstance(dm, dict) else {}).items():
        if dev.startswith("cuda") and int(dev.partition(":")[2]) >= gpus:
            raise ConfigError(f"model.device_map puts {module!r} on {dev}, but this machine has {gpus} CUDA "
                              f"device(s)")
    if pack:
        raise ConfigError("model.device_map cannot be combined with pack=true/save=true: packed layers run on one "
                          "device; drop model.device_map or pack")
    if method.quantizes and not cfg.get("offload"):
        raise ConfigError(f"model.device_map with method={method.name} needs offload=true: the model stays on the "
                          f"CPU while it is quantized (a calibrated method moves one decoder layer at a time to "
                          f"device={env.device}), then it is dispatched")
    if is_packed_checkpoint(model_cfg.path):
        raise ConfigError(f"model.path={model_cfg.path} is a packed checkpoint: it loads onto device={env.device}; "
                          f"drop model.device_map")


def code_fingerprint(method: Method, tasks: list[Task], pack: bool) -> dict[str, str]:
    """Hash of the source files that produce this run's numbers: the core data path, the method's
    and the tasks' modules (with their base classes'), and the packed modules when packing."""
    files: set[Path] = set()
    for rel in CORE_MODULES + (PACKED_MODULES if pack else ()):
        p = REPO_ROOT / rel
        files.update(p.rglob("*.py") if p.is_dir() else [p])
    for obj in (method, *tasks):
        for cls in type(obj).__mro__:
            module = sys.modules.get(cls.__module__)
            src = getattr(module, "__file__", None)
            if src and not cls.__module__.startswith(("builtins", "abc")):
                files.add(Path(src).resolve())
    digest = canonical_hash(sorted((str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else p.name,
                                    file_sha256(p)) for p in files))
    return {"harness": harness.__version__, "sha256": digest[:16], "files": str(len(files))}


def make_identity(cfg: dict[str, Any], method: Method, tasks: list[Task], env: TaskEnv,
                  calib: CalibrationSpec | None, pack: bool) -> dict[str, Any]:
    """Everything that changes a number: model, method options, protocols, calibration, profile,
    seed, packing, and the hashes of the evaluation and calibration data and of the code."""
    data = {t.name: data_fingerprint(t.data_keys(), env.data_dir) for t in tasks}
    if calib is not None:
        data["calibration"] = data_fingerprint([CORPUS_FILES[calib.corpus]], env.data_dir)
    return {
        "model": {k: v for k, v in cfg["model"].items() if k not in PLACEMENT},
        "method": {"name": method.name, **vars(method.config)},
        "tasks": {t.name: t.protocol() for t in tasks},
        "calibration": vars(calib) if calib else None,
        "profile": cfg["profile"]["name"],
        "seed": cfg["seed"],
        **({"pack": True} if pack else {}),  # evaluation runs on the packed model
        "data": data,
        "code": code_fingerprint(method, tasks, pack),
    }


def source_grid_warning(method: Method, model_cfg: ModelConfig) -> str | None:
    g = getattr(method.config, "group_size", -1)
    stored = model_cfg.source_grid.get("group_size")
    if method.quantizes and stored and 0 < g <= stored and stored % g == 0:
        return (f"group_size={g} re-finds the {model_cfg.source_grid.get('format')} grid the model's weights were "
                f"stored on (groups of {stored}): every method looks better than it is")
    return None


def bos_warnings(tasks: list[Task], model_cfg: ModelConfig) -> list[str]:
    """One warning per perplexity task whose BOS protocol is not the one the model config recommends."""
    want = model_cfg.recommended_bos
    return [f"model {model_cfg.name} recommends bos={want} for perplexity, but task.{t.name}.bos={t.config.bos}: "
            f"its perplexity is not the model's intended measure (set task.{t.name}.bos={want})"
            for t in tasks if want and getattr(t.config, "bos", want) != want]


def plan(cfg: dict[str, Any], plugins: Plugins | None = None, overrides: list[str] | None = None) -> Plan:
    """Validate everything that needs no model and fix the run's identity (cheap: no weights loaded)."""
    plugins = plugins or make_plugins()
    method, tasks, env, calib = build(cfg, plugins)
    model_cfg = build_config(ModelConfig, dict(cfg["model"]), "model")
    save = bool(cfg.get("save", False))
    save_format = check_format(cfg.get("save_format", PACKED))
    exports = save and save_format != PACKED
    # Saving packs (today's format), and an export evaluates the packed model where the packed format holds it
    # (the exported folder then computes exactly what was evaluated); 3/8-bit exports evaluate fake-quant.
    pack = bool(cfg.get("pack", False)) or (save and (not exports or method.pack_refusal() is None))
    if exports:
        c = method.config
        dynamic_groups = bool(getattr(c, "act_order", False) and getattr(c, "group_size", -1) != -1
                              and not getattr(c, "static_groups", True))
        check_export(save_format, method.export_refusal(), method.bit_widths(),
                     architecture(model_cfg, env.cache_dir) if method.quantizes else None, dynamic_groups)
    check_capabilities(method, model_cfg, env, pack)
    check_placement(cfg, method, model_cfg, env, pack)
    warnings = ignored_overrides(list(overrides or []), method)
    if (w := source_grid_warning(method, model_cfg)) is not None:
        warnings.append(w)
    warnings += bos_warnings(tasks, model_cfg)
    for w in warnings:
        log.warning(w)
    identity = make_identity(cfg, method, tasks, env, calib, pack)
    return Plan(cfg=cfg, plugins=plugins, method=method, tasks=tasks, env=env, calib=calib, model_cfg=model_cfg,
                pack=pack, save=save, save_format=save_format, offload=offloads(cfg, method, calib, model_cfg, env),
                results_dir=Path(cfg["results_dir"]).expanduser(), identity=identity,
                run_id=make_run_id(model_cfg.name, method.run_tag(), identity), warnings=warnings,
                overrides=list(overrides or []))


def offloads(cfg: dict[str, Any], method: Method, calib: CalibrationSpec | None, model_cfg: ModelConfig,
             env: TaskEnv) -> bool:
    """Whether the model stays on the CPU while it is quantized (``offload=true``): a calibrated method on
    an accelerator, or any quantizing method when a ``device_map`` dispatches the model afterwards."""
    if not cfg.get("offload") or not method.quantizes:
        return False
    return model_cfg.device_map is not None or (calib is not None and env.device != "cpu")


def reusable(p: Plan) -> dict[str, Any] | None:
    """The complete record of this exact run, if one exists and may be reused (never with force or save)."""
    if p.cfg.get("force") or p.save:
        return None
    path = record_path(p.results_dir, p.run_id)
    done = completed(p.results_dir, p.run_id)
    if done is None:
        return None
    if done.get("identity") != canonical_identity(p.identity):
        log.info("not reusing %s: its identity (schema %s) is not this run's; running again", path, done.get("schema"))
        return None
    code, data = p.identity["code"], p.identity["data"]
    log.info("skipping %s: reusing the complete record %s (finished %s): same model, method options, protocols, "
             "code %s and data (%d files hashed); force=true runs it again", p.run_id, path, done.get("finished"),
             code["sha256"], sum(len(v) for v in data.values()))
    return done


def canonical_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity as it reads back from a JSON record (tuples → lists, paths → strings)."""
    return json.loads(json.dumps(identity, default=str))


# ----------------------------------------------------------------------------------------- phases
@contextmanager
def phase(run: RunContext, name: str) -> Iterator[None]:
    """Time one phase of the data path into ``run.timings``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        run.timings[name] = time.perf_counter() - t0


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    info: dict[str, Any]
    checkpoint: dict[str, Any] | None  # a packed checkpoint's quantization.json (model.path=<checkpoint>)


def load(p: Plan) -> Loaded:
    model, tokenizer, info = load_model(p.model_cfg, p.env.device, p.env.cache_dir, seed=p.cfg["seed"],
                                        offload=p.offload)
    for task in p.tasks:
        task.check_tokenizer(tokenizer)
    imported = info.get("imported_checkpoint")
    if imported and p.method.quantizes:
        raise ConfigError(f"model.path={p.model_cfg.path} is a quantized {imported['format']} checkpoint "
                          f"({imported['label']}); evaluate it with method=fp16 (it is not quantized again)")
    checkpoint = info.get("packed_checkpoint")
    if checkpoint and p.method.quantizes:
        raise ConfigError(f"model.path={p.model_cfg.path} is a packed checkpoint ({checkpoint['method']['label']}); "
                          f"evaluate it with method=fp16 (it is not quantized again)")
    if p.env.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return Loaded(model, tokenizer, info, checkpoint)


def quantize(p: Plan, m: Loaded, run: RunContext) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Quantize in place; returns (the record's quantization summary, the integer grids, calibration info)."""
    hook = p.plugins.hook
    check = plan_check(p.save_format) if p.save and p.save_format != PACKED else None
    if p.calib is None:
        result, calib_info = quantize_model(m.model, p.method, hook, run, check_plan=check), None
    else:
        windows, calib_info = calibration_windows(p.calib, m.tokenizer, p.env.data_dir, p.env.cache_dir)
        model_key = {"model": p.identity["model"], "seed": p.cfg["seed"]}  # the seed matters for random-init models
        result = quantize_sequential(m.model, MethodRun(p.method, hook, run, check), windows, p.env.device,
                                     cache_dir=p.env.cache_dir, model_key=model_key)
    if p.offload:  # quantized layer by layer on the device; evaluated as a whole there (or over the device map)
        place(m.model, p.model_cfg, p.env.device, p.env.cache_dir)
    quant, grids = result.summary, result.grids
    if (imported := m.info.get("imported_checkpoint")) is not None:
        from harness.quantize.layers import linear_layers

        bits = {k: v["bits"] for k, v in imported["bit_map"].items()}
        size = {k: m.model.get_submodule(k).in_features * m.model.get_submodule(k).out_features for k in bits}
        rest = sum(mod.weight.numel() for k, mod in linear_layers(m.model).items() if k not in bits)
        # nominal bits over the decoder linears (any left unquantized count at 16, as in the harness's own runs)
        total = sum(size.values()) + rest
        # with overhead: an fp16 scale and a zero point of the layer's width per group, as the formats store them
        over = {k: (16 + v["bits"]) / (m.model.get_submodule(k).in_features if v["group_size"] == -1
                                       else v["group_size"]) for k, v in imported["bit_map"].items()}
        quant = {"imported_from": p.model_cfg.path, "source_format": imported["format"], "bit_plan": bits,
                 "avg_bits": (sum(size[k] * b for k, b in bits.items()) + 16 * rest) / total,
                 "avg_bits_with_overhead": (sum(size[k] * (b + over[k]) for k, b in bits.items()) + 16 * rest) / total,
                 "quantization_config": imported["quantization_config"]}
    if m.checkpoint:
        from harness.packed.qlinear import measured_bits

        summary = m.checkpoint.pop("quantization", None) or {}  # once, under "quantization", not also under "model"
        quant = {**summary, "loaded_from": p.model_cfg.path,
                 "measured": measured_bits(m.model, summary.get("linear_params", 0))}
    return quant, grids, calib_info


def pack(p: Plan, m: Loaded, quant: dict[str, Any], grids: dict[str, Any]) -> dict[str, Any] | None:
    """Replace the fake-quant layers by ``QuantLinear``; record parity and measured bits in ``quant``;
    with ``save``, write the checkpoint and return its sizes."""
    from harness.packed.checkpoint import save_packed
    from harness.packed.qlinear import measured_bits, pack_model, parity

    fake = pack_model(m.model, grids, quant["layers"])
    spec = build_config(CalibrationSpec, dict(p.cfg["calibration"]), "calibration")
    windows, info = calibration_windows(spec, m.tokenizer, p.env.data_dir, p.env.cache_dir)
    n = int(p.cfg.get("parity_windows", 2))
    quant["parity"] = {**parity(m.model, fake, windows[:n], p.env.device), "corpus": info.get("corpus")}
    del fake
    quant["measured"] = measured_bits(m.model, quant["linear_params"])
    log.info("packed %d layers: %.3f measured bits/weight (nominal %.3f); parity max |Δlogit| %.3g, Δppl %.3g",
             quant["measured"]["packed_layers"], quant["measured"]["measured_avg_bits"], quant["avg_bits"],
             quant["parity"]["max_abs_logit_err"], quant["parity"]["ppl_diff"])
    if not p.save or p.save_format != PACKED:
        return None
    summary = {k: v for k, v in quant.items() if k != "layers"}
    meta = {"method": method_record(p.method), "run_id": p.run_id, "quantization": summary,
            "source_model": p.cfg["model"]}
    saved = save_packed(m.model, m.tokenizer, p.results_dir / "checkpoints" / p.run_id, meta)
    log.info("saved %s (%.1f MB; the fp16 model: %.1f MB)", saved["path"], saved["bytes"] / 2**20,
             saved["fp16_model_bytes"] / 2**20)
    return {"format": PACKED, **saved}


def export_checkpoint(p: Plan, m: Loaded, quant: dict[str, Any], grids: dict[str, Any]) -> dict[str, Any]:
    """Write the run's model in ``save_format`` (GPTQ, compressed-tensors) from the fake-quant layers and their
    grids, before packing replaces them; returns the record's ``checkpoint`` entry."""
    from harness.export import export

    folder = p.results_dir / "checkpoints" / f"{p.run_id}-{p.save_format}"
    out = export(p.save_format, m.model, m.tokenizer, grids, quant["layers"],
                 bool(getattr(p.method.config, "sym", False)), folder)
    return {**out, "fp16_model_bytes": 2 * sum(t.numel() for t in m.model.parameters())}  # tied: once


def evaluate(p: Plan, m: Loaded, run: RunContext) -> dict[str, dict[str, Any]]:
    metrics: dict[str, dict[str, Any]] = {}
    for task in p.tasks:
        with phase(run, f"eval_{task.name}"):
            metrics[task.name] = task.evaluate(m.model, m.tokenizer, p.plugins.hook, run)
        p.plugins.hook.harness_task_result(run=run, task=task.name, metrics=metrics[task.name])
    return metrics


# ----------------------------------------------------------------------------------------- record
def method_record(method: Method) -> dict[str, Any]:
    return {"name": method.name, "label": method.label(), "options": vars(method.config)}


def placement(p: Plan, m: Loaded) -> dict[str, Any]:
    """Where accelerate put each module, when a ``device_map`` was asked for (transformers keeps no map
    when everything landed on one device)."""
    if p.model_cfg.device_map is None:
        return {}
    where = getattr(m.model, "hf_device_map", None) or {"": next(m.model.parameters()).device}
    return {"device_map": {k: str(v) for k, v in where.items()}}


def environment() -> dict[str, Any]:
    """What the float path depends on besides the code: threads, machine, BLAS build."""
    return {"torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cuda": torch.version.cuda,
            "mkl": torch.backends.mkl.is_available(), "openmp": torch.backends.openmp.is_available()}


def peak_memory(device: str) -> dict[str, float]:
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device.startswith("cuda"):
        out["cuda_allocated"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def make_record(p: Plan, m: Loaded, run: RunContext, quant: dict[str, Any], calib_info: dict[str, Any] | None,
                metrics: dict[str, dict[str, Any]], saved: dict[str, Any] | None) -> dict[str, Any]:
    method = method_record(p.method)
    if m.checkpoint:
        method = {**m.checkpoint["method"], "loaded_from_checkpoint": True}
    if (imported := m.info.get("imported_checkpoint")) is not None:
        method = {"name": f"imported-{imported['format']}", "label": imported["label"],
                  "options": {k: imported["quantization_config"].get(k) for k in ("bits", "group_size", "sym",
                                                                                  "desc_act", "format")},
                  "imported": True}
    return {
        "schema": SCHEMA_VERSION,
        "run_id": p.run_id,
        "status": "complete",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "identity": canonical_identity(p.identity),
        "model": {**m.info, **placement(p, m)},
        "method": method,
        "capabilities": vars(p.method.capabilities()),
        "profile": p.cfg["profile"]["name"],
        "protocol": p.identity["tasks"],
        "primary": {t.name: t.primary_metric() for t in p.tasks},
        "calibration": calib_info,
        "seed": p.cfg["seed"],
        "data_dir": str(p.env.data_dir) if p.env.data_dir else "huggingface",
        "device": p.env.device,
        "quantization": quant,
        "metrics": metrics,
        "timings_s": dict(run.timings),
        **({"checkpoint": saved} if saved else {}),
        "peak_memory_mb": peak_memory(p.env.device),
        "environment": environment(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "warnings": p.warnings,
        "overrides": p.overrides,
        "config": p.cfg,
    }


def execute(cfg: dict[str, Any], plugins: Plugins | None = None, overrides: list[str] | None = None) -> dict:
    """Run one configuration end to end and return its record (or the reusable complete one)."""
    p = plan(cfg, plugins, overrides)
    # One job per run id at a time: in a parallel sweep, points that are the same run (a knob the method
    # ignores) wait for the one that computes it and then reuse its record, instead of computing it again.
    with cache_lock(record_path(p.results_dir, p.run_id)):
        if (done := reusable(p)) is not None:
            return done
        return run_phases(p)


def run_phases(p: Plan) -> dict:
    """load → quantize → pack → evaluate → record, for a planned run that has no reusable record."""
    cfg = p.cfg
    run = RunContext(run_id=p.run_id, config=cfg, results_dir=p.results_dir, identity=p.identity)
    torch.manual_seed(cfg["seed"])
    t_start = time.perf_counter()
    with phase(run, "load"):
        m = load(p)
    p.plugins.hook.harness_run_start(run=run)
    with phase(run, "quantize"):
        quant, grids, calib_info = quantize(p, m, run)
    saved = None
    if p.save and p.save_format != PACKED:
        with phase(run, "export"):
            saved = export_checkpoint(p, m, quant, grids)
    if p.pack:
        with phase(run, "pack"):
            saved = pack(p, m, quant, grids) or saved
    del grids
    metrics = evaluate(p, m, run)
    run.timings["total"] = time.perf_counter() - t_start
    record = write_record(p, make_record(p, m, run, quant, calib_info, metrics, saved))
    p.plugins.hook.harness_run_end(run=run, record=record)
    return record


def write_record(p: Plan, record: dict[str, Any]) -> dict[str, Any]:
    """Write the record atomically and return it with its ``record_path`` (not stored in the file).

    The run writes it itself, before any observer hears of the end: it is the one output that must
    never be lost, so it depends on no plugin being registered or succeeding.
    """
    path = record_path(p.results_dir, p.run_id)
    write_atomic(path, record)
    log.info("record written to %s", path)
    return {**record, "record_path": str(path)}
