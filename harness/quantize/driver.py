"""Drives a method over the quantizable layers (``harness.quantize.layers``) and sums up the result:
the bit plan as specs, one layer at a time with its record info, the average bits."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from harness.quantize.layers import linear_layers
from harness.quantize.primitives import Grid, QuantSpec

log = logging.getLogger(__name__)


class Quantizer(Protocol):
    """What the layer-by-layer passes need of a quantization method. ``harness.plugins.method.Method`` (the
    base class every method plugin derives from) satisfies it; declaring it here keeps ``quantize/`` from
    importing the plugin layer above it."""

    name: str
    config: Any
    sensitivity_table: str | None
    sensitivity_windows: int | None

    @property
    def quantizes(self) -> bool: ...

    @property
    def needs_sensitivity(self) -> bool: ...

    @property
    def sensitivity_pass(self) -> str: ...

    def sensitivity_key(self) -> dict[str, Any]: ...

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan: ...

    def spec(self, bits: int) -> QuantSpec: ...

    def collect(self, block: nn.Module, modules: dict[str, nn.Linear], inps: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor | None: ...

    def layer_sensitivity(self, name: str, layer: nn.Linear) -> float: ...

    def solve(self, W: torch.Tensor, H: torch.Tensor, bits: int) -> torch.Tensor: ...

    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult: ...


@dataclass(frozen=True)
class BitPlan:
    """A method's bit plan (``Method.plan_bits``): the bits of every quantized layer and, for a budgeted
    mixed-precision plan, how it was reached (the record's ``quantization.allocation``)."""

    bits: dict[str, int]
    allocation: dict[str, Any] | None = None


@dataclass
class LayerResult:
    """What ``Method.quantize_layer`` returns: the layer's record info (at least ``err``), and the integer
    grid its weights now lie on when the packed format can store it (tensors: kept for packing, never recorded)."""

    info: dict[str, Any]
    grid: Grid | None = None


@dataclass
class Quantized:
    """What quantizing a model hands on along the data path: the record's ``quantization`` summary, and
    the methods' integer grids per layer (tensors for packing; never part of the record)."""

    summary: dict[str, Any]
    grids: dict[str, Grid]


#: a check of the whole plan before any layer is quantized (e.g. an export format's fused-shard rule); raises
PlanCheck = Callable[[dict[str, QuantSpec]], None]


def plan_specs(method: Quantizer, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None,
               check_plan: PlanCheck | None = None) -> tuple[dict[str, QuantSpec], dict[str, Any] | None]:
    """The method's bit plan as specs, and its allocation info; a bad group size fails here, before any
    work is done. ``scores``: the sensitivity pass's per-layer scores (methods that ``needs_sensitivity``);
    ``check_plan``: the run's check of the plan (it is known only now, after the sensitivity pass)."""
    plan = method.plan_bits(layers, scores) if method.quantizes else BitPlan({})
    specs = {name: method.spec(bits) for name, bits in plan.bits.items()}
    for name, spec in specs.items():
        spec.groups(layers[name].in_features, name)
    if check_plan is not None:
        check_plan(specs)
    return specs, plan.allocation


@dataclass(frozen=True)
class MethodRun:
    """A method with the run's observers: what every pass over the model's layers needs."""

    method: Quantizer
    hook: Any  # the plugin manager's hook relay
    run: Any  # the RunContext observers receive (None in benchmarks)
    check_plan: PlanCheck | None = None  # the run's check of the bit plan before quantizing (``plan_specs``)


def quantize_one(mr: MethodRun, name: str, layer: nn.Linear, spec: QuantSpec,
                 per_layer: dict[str, dict[str, Any]], grids: dict[str, Any] | None = None) -> None:
    """Quantize one layer, keep its info for the record (``per_layer``) and its grid for packing (``grids``),
    and tell the observers."""
    result = mr.method.quantize_layer(name, layer, spec)
    if grids is not None and result.grid is not None:
        grids[name] = result.grid
    info = {"bits": spec.bits, "group_size": spec.group_size, "numel": layer.weight.numel(), **result.info}
    per_layer[name] = info
    mr.hook.harness_layer_quantized(run=mr.run, name=name, info=info)
    mr.hook.harness_phase_advance(run=mr.run, phase="quantize", advance=1)


def quantize_model(model: nn.Module, method: Quantizer, hook: Any, run: Any,
                   check_plan: PlanCheck | None = None) -> Quantized:
    """Quantize ``model`` in place with a method that needs no calibration data.

    Emits ``harness_layer_quantized`` per layer and phase hooks for progress. Returns the summary
    that goes into the record (bit plan, average bits, per-layer info) and the integer grids.
    """
    layers = linear_layers(model)
    specs, _ = plan_specs(method, layers, check_plan=check_plan)
    per_layer: dict[str, dict[str, Any]] = {}
    grids: dict[str, Any] = {}
    hook.harness_phase_start(run=run, phase="quantize", total=len(specs))
    t0 = time.perf_counter()
    for name, spec in specs.items():
        quantize_one(MethodRun(method, hook, run), name, layers[name], spec, per_layer, grids)
    hook.harness_phase_end(run=run, phase="quantize", seconds=time.perf_counter() - t0)
    return Quantized(summarize(layers, specs, per_layer), grids)


def summarize(
    layers: dict[str, nn.Linear], specs: dict[str, QuantSpec], per_layer: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Average bits over the decoder's linear weights (unquantized ones count as 16 bits).

    A layer's info may carry its own ``bits_per_weight`` (see ``reported_bits``) and
    ``packable: false`` with a ``packable_reason``: then the summary says the evaluation used
    fake-quant weights.
    """
    shapes = [(layers[n].out_features, layers[n].in_features, s) for n, s in specs.items()]
    n_total = sum(m.weight.numel() for m in layers.values())
    n_quant = sum(o * i for o, i, _ in shapes)
    bits, bits_overhead = reported_bits(layers, specs, per_layer) if n_quant else (16.0, 16.0)
    # Weights left in fp16 (none for the uniform methods) count at 16 bits.
    frac = n_quant / n_total if n_total else 0.0
    out = {
        "avg_bits": bits * frac + 16.0 * (1 - frac),
        "avg_bits_with_overhead": bits_overhead * frac + 16.0 * (1 - frac),
        # storage of the decoder's linear weights: codes, scales, zeros, masks, width maps, fp16 columns and
        # indices, and unquantized layers at 16 bits (what equal-bit comparisons must also equalise)
        "bytes_per_weight": (bits_overhead * frac + 16.0 * (1 - frac)) / 8,
        "linear_bytes": (bits_overhead * frac + 16.0 * (1 - frac)) * n_total / 8,
        "quantized_params": n_quant,
        "linear_params": n_total,
        "bits_fraction": bits_fraction(layers, specs, per_layer) if n_quant else {},
        "bit_plan": {n: s.bits for n, s in specs.items()},
        "layers": per_layer,
    }
    reasons = sorted({i.get("packable_reason", "") for i in per_layer.values() if i.get("packable") is False})
    if reasons:  # the evaluation ran on dequantized ("fake-quant") weights; say so in the record
        out["packable"] = False
        out["evaluation_weights"] = "fake-quant"
        out["packable_reason"] = "; ".join(r for r in reasons if r) or "not representable by the packed kernels"
    return out


def bits_fraction(
    layers: dict[str, nn.Linear], specs: dict[str, QuantSpec], per_layer: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Fraction of the quantized weights at each width, widest first. A layer that mixes widths inside
    itself (``methods.slim``) reports its weights per width as ``width_numel`` ({bits: weights}); any
    other layer counts all its weights at ``spec.bits``."""
    numel: dict[int, int] = {}
    for name, spec in specs.items():
        n = layers[name].out_features * layers[name].in_features
        per_width = per_layer.get(name, {}).get("width_numel") or {str(spec.bits): n}
        for b, k in per_width.items():
            numel[int(b)] = numel.get(int(b), 0) + int(k)
    total = sum(numel.values())
    return {str(b): numel[b] / total for b in sorted(numel, reverse=True) if numel[b]}


def reported_bits(
    layers: dict[str, nn.Linear], specs: dict[str, QuantSpec], per_layer: dict[str, dict[str, Any]]
) -> tuple[float, float]:
    """Weight-averaged (bits, bits with overhead) when layers report their own ``bits_per_weight``.

    Methods whose layers are not one uniform grid (OWQ's fp16 columns, PB-LLM's binarized weights
    and mask) put ``bits_per_weight`` (and optionally ``bits_per_weight_with_overhead``) in the
    info ``quantize_layer`` returns; other layers count ``spec.bits`` and their grid's scale and zero point
    (``QuantSpec.overhead_bits``).
    """
    total = bits = bits_overhead = 0.0
    for name, spec in specs.items():
        d_out, d_in = layers[name].out_features, layers[name].in_features
        info = per_layer.get(name, {})
        b = float(info.get("bits_per_weight", spec.bits))
        bo = float(info.get("bits_per_weight_with_overhead", b + spec.overhead_bits(d_in)))
        total += d_out * d_in
        bits += d_out * d_in * b
        bits_overhead += d_out * d_in * bo
    return bits / total, bits_overhead / total
