"""First pass of mixed-precision methods: per-layer sensitivities of the full-precision model.

The scores depend only on the full-precision model, the calibration windows and the method's
sensitivity options, so they are cached on disk under ``<cache_dir>/sensitivity/`` keyed by a hash
of exactly those: a sweep over ``ratio`` computes them once. The pass reuses the layer-by-layer
machinery of the quantization pass (``Method.collect``), but nothing is quantized: every block's
full-precision outputs feed the next block.

A method names the pass its criterion needs (``Method.sensitivity_pass``): ``blocks`` (the statistics
of ``collect``, scored by ``layer_sensitivity``: APTQ's trace), or one of the loss-based passes of
``harness.quantize.loss_sensitivity``: ``gradient`` (fisher and kfac, one backward pass per window)
and ``truth`` (the measured loss increase of each layer quantized alone). A loss-based pass stores
all its tables (``{"fisher": .., "kfac": ..}``, ``{"dnll": .., "kl": ..}``) in one cache entry, and the
method's ``sensitivity_table`` picks the scores.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.quantize.driver import MethodRun
from harness.quantize.layers import block_linears, decoder_layers, linear_layers, on_device, run_block
from harness.quantize.loss_sensitivity import gradient_pass, low_bit_deltas, truth_pass
from harness.util import cache_lock, canonical_hash, write_atomic

log = logging.getLogger(__name__)


def windows_hash(windows: torch.Tensor) -> str:
    """SHA-256 of the calibration token ids (n, seqlen): the calibration set, exactly."""
    return hashlib.sha256(windows.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


@torch.no_grad()
def sensitivity_pass(model: nn.Module, mr: MethodRun, inps: torch.Tensor, kwargs: list[dict[str, Any]]
                     ) -> dict[str, float]:
    """Score every linear layer of the decoder with ``method.layer_sensitivity`` (model order);
    ``kwargs[i]``: decoder layer i's captured keyword arguments."""
    method, hook, run = mr.method, mr.hook, mr.run
    path, layers = decoder_layers(model)
    scores: dict[str, float] = {}
    hook.harness_phase_start(run=run, phase="sensitivity", total=len(layers))
    t0 = time.perf_counter()
    for i, block in enumerate(layers):
        with on_device(block, inps.device):
            modules = {f"{path}.{i}.{n}": m for n, m in block_linears(block).items()}
            outs = method.collect(block, modules, inps, kwargs[i])
            for name, mod in modules.items():
                scores[name] = float(method.layer_sensitivity(name, mod))
            # full precision, nothing quantized: the collection pass's outputs feed the next block
            inps = outs if outs is not None else run_block(block, inps, kwargs[i])
        hook.harness_phase_advance(run=run, phase="sensitivity", advance=1)
    hook.harness_phase_end(run=run, phase="sensitivity", seconds=time.perf_counter() - t0)
    return scores


def sensitivity_cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / "sensitivity" / f"{canonical_hash(key)[:20]}.json"


def read_cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored entry at ``path`` if it exists, reads and was made for ``key``; else None."""
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable sensitivity cache %s (%s); recomputing", path, err)
        return None
    return stored if stored.get("key") == json.loads(json.dumps(key, default=str)) else None


def cached_sensitivities(model: nn.Module, mr: MethodRun, inps: torch.Tensor, kwargs: list[dict[str, Any]],
                         key: dict[str, Any], cache_dir: Path | None, windows: torch.Tensor | None = None
                         ) -> dict[str, Any]:
    """Sensitivities from the cache, or computed by ``sensitivity_pass`` and cached (atomically).

    ``key`` must identify the model and the calibration windows; the method's
    ``sensitivity_key()`` is added here. Jobs that need the same entry at once compute it once
    (``cache_lock``): the others wait and read it. ``windows`` (n, T): the calibration token ids (the
    loss-based passes need the targets). Returns ``{"scores", "cached", "seconds", "key"}`` and, for a
    loss-based pass, all its ``tables``.
    """
    key = {**key, "method": mr.method.name, "options": mr.method.sensitivity_key()}
    if cache_dir is None:
        return compute_sensitivities(model, mr, inps, kwargs, key, None, windows)
    path = sensitivity_cache_path(cache_dir, key)
    if (stored := read_cached(path, key)) is None:
        with cache_lock(path):
            if (stored := read_cached(path, key)) is None:  # another job may have computed it meanwhile
                return compute_sensitivities(model, mr, inps, kwargs, key, path, windows)
    log.info("sensitivities from cache %s", path)
    return entry(mr, stored, cached=True, key=key)


def entry(mr: MethodRun, stored: dict[str, Any], cached: bool, key: dict[str, Any]) -> dict[str, Any]:
    """What callers get: the method's scores (its ``sensitivity_table`` of a loss-based pass's tables)."""
    out = {"cached": cached, "seconds": stored.get("seconds"), "key": key}
    if "tables" in stored:
        out["tables"] = stored["tables"]
        out["scores"] = stored["tables"][mr.method.sensitivity_table]
    else:
        out["scores"] = stored["scores"]
    return out


def compute_sensitivities(model: nn.Module, mr: MethodRun, inps: torch.Tensor, kwargs: list[dict[str, Any]],
                          key: dict[str, Any], path: Path | None, windows: torch.Tensor | None = None
                          ) -> dict[str, Any]:
    """Run the method's pass; store its result at ``path`` (atomically) unless it is None."""
    t0 = time.perf_counter()
    kind = mr.method.sensitivity_pass
    if kind == "blocks":
        stored: dict[str, Any] = {"scores": sensitivity_pass(model, mr, inps, kwargs)}
    else:
        if windows is None:
            raise ValueError(f"the {kind} sensitivity pass needs the calibration windows")
        stored = {"tables": loss_pass(model, mr, inps, kwargs, windows, kind)}
    stored = {"key": key, **stored, "seconds": time.perf_counter() - t0}
    if path is not None:
        write_atomic(path, stored)
    return entry(mr, stored, cached=False, key=key)


def loss_pass(model: nn.Module, mr: MethodRun, inps: torch.Tensor, kwargs: list[dict[str, Any]],
              windows: torch.Tensor, kind: str) -> dict[str, dict[str, float]]:
    """The ``gradient`` or ``truth`` pass of ``harness.quantize.loss_sensitivity`` at the method's
    ``low_bits``: ΔW from all calibration windows; the truth measured on the first
    ``method.sensitivity_windows`` of them (None: all)."""
    method, hook, run = mr.method, mr.hook, mr.run
    n = method.sensitivity_windows or windows.shape[0]
    total = len(linear_layers(model))
    hook.harness_phase_start(run=run, phase="sensitivity", total=total)
    t0 = time.perf_counter()

    def step() -> None:
        hook.harness_phase_advance(run=run, phase="sensitivity", advance=1)

    try:
        with on_device(model, inps.device):
            deltas = low_bit_deltas(method, model, inps, kwargs, method.config.low_bits)
            if kind == "gradient":
                tables = gradient_pass(model, inps[:n], kwargs, windows[:n], deltas)
                hook.harness_phase_advance(run=run, phase="sensitivity", advance=total)
            elif kind == "truth":
                tables = truth_pass(model, inps[:n], kwargs, windows[:n], deltas, progress=step)
            else:
                raise ValueError(f"unknown sensitivity pass {kind!r}")
    finally:
        hook.harness_phase_end(run=run, phase="sensitivity", seconds=time.perf_counter() - t0)
    return tables
