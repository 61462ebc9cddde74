"""Layer-by-layer calibration driver (GPTQ's ``llama_sequential``), generic over decoder families.

1. Capture the inputs of the first decoder layer on the calibration windows, and the keyword
   arguments the model passes to *each* decoder layer (position embeddings, attention mask ...: they
   differ between layers in models that mix sliding-window and full attention, e.g. Gemma 3, whose
   two kinds of layers also use different RoPE tables). Every decoder layer is replaced by a
   ``Catcher`` that records its kwargs and passes the hidden states on unchanged; the last one stops
   the forward pass. The model runs with ``use_cache=False`` and any cache object is dropped from the
   captured kwargs: otherwise each window would attend to the previous ones (wrong statistics,
   wrong propagated inputs, and nothing fails).
2. For each decoder layer: register forward hooks that feed the inputs of its linear layers to
   ``method.add_batch``, run the calibration windows through it, quantize those layers, and
   (with ``true_sequential``) repeat per stage so later stages see the quantized earlier ones:
   q/k/v → o → MLP in → MLP out, under the family's names (``harness.quantize.layers.FAMILIES``).
   Finally re-run the layer to produce the (quantized) inputs of the next one. MoE experts (one
   ``nn.Linear`` each, ``harness.quantize.layers.unfuse_experts``) see only their routed tokens.

Only one decoder layer's activations (2 × nsamples × seqlen × hidden) and statistics are alive
at a time. The model may stay on the CPU (``offload=true``): each decoder layer moves to the
accelerator only while it is calibrated and quantized, so a 7B model quantizes on one 24 GB GPU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.quantize.driver import MethodRun, Quantized, plan_specs, quantize_one, summarize
from harness.quantize.layers import (
    LLAMA,
    Family,
    StopForward,
    block_linears,
    decoder_layers,
    family,
    linear_layers,
    local_name,
    on_device,
    run_block,
)
from harness.quantize.sensitivity import cached_sensitivities, windows_hash

DROP_KWARGS = ("past_key_value", "past_key_values", "use_cache", "layer_past", "cache")


class Catcher(nn.Module):
    """Stands in for decoder layer ``index``: records its kwargs (layer 0 also its input) and passes the
    hidden states on; the last one stops the forward."""

    def __init__(self, layer: nn.Module, index: int, last: bool, inps: list[torch.Tensor],
                 kwargs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.index, self.last = index, last
        self.inps, self.kwargs = inps, kwargs  # the layer itself is not kept: it must not move with us
        self.attention_type = getattr(layer, "attention_type", None)  # some models read it

    def forward(self, hidden_states, *args, **kwargs):
        if self.index == 0:
            self.inps.append(hidden_states.detach())
        self.kwargs[self.index] = {k: v for k, v in kwargs.items() if k not in DROP_KWARGS}
        if self.last:
            raise StopForward
        return hidden_states


@torch.no_grad()
def capture_inputs(model: nn.Module, windows: torch.Tensor, device: str) -> tuple[torch.Tensor, list[dict]]:
    """Inputs of decoder layer 0 for each window: (n, seqlen, hidden), and the kwargs of every layer
    (a list: ``kwargs[i]`` for layer ``i``; the same for every window of one length).

    If the model is not on ``device`` (offloaded: its layers stay on the CPU), everything but the
    decoder layers (embeddings, rotary tables, final norm, head) moves to ``device`` for the
    capture and back afterwards.
    """
    path, layers = decoder_layers(model)
    inps: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = [{} for _ in layers]
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    catchers = [Catcher(layer, i, i == len(layers) - 1, inps, kwargs) for i, layer in enumerate(layers)]
    setattr(parent, attr, nn.ModuleList(catchers))  # no decoder layer runs; the last catcher stops the forward
    try:
        with on_device(model, device):
            for j in range(windows.shape[0]):
                try:
                    model(input_ids=windows[j : j + 1].to(device), use_cache=False)
                except StopForward:
                    pass
    finally:
        setattr(parent, attr, layers)
    return torch.cat(inps), kwargs


def stages(names: list[str], true_sequential: bool, fam: Family | None = None) -> list[list[str]]:
    """Group the linear layers of one decoder layer (local paths) into quantization stages (the
    family's order; layers in no stage come last, together)."""
    if not true_sequential:
        return [names]
    out, seen = [], set()
    for stage in (fam or LLAMA).stages:
        group = [n for n in names if local_name(n) in stage]
        if group:
            out.append(group)
            seen.update(group)
    rest = [n for n in names if n not in seen]
    return out + ([rest] if rest else [])


@torch.no_grad()
def quantize_sequential(
    model: nn.Module, mr: MethodRun, windows: torch.Tensor, device: str, cache_dir: Path | None = None,
    model_key: Any = None,
) -> Quantized:
    """Quantize ``model`` in place, layer by layer, with calibration ``windows`` (n, seqlen).

    A method that ``needs_sensitivity`` first gets its per-layer scores from a full-precision pass
    (``harness.quantize.sensitivity``; cached under ``cache_dir`` by ``model_key``, the windows and the
    method's options), then plans its bits from them (``plan_bits(layers, scores)``).
    """
    method, hook, run = mr.method, mr.hook, mr.run
    path, layers = decoder_layers(model)
    all_linear = linear_layers(model)
    fam = family(model)
    true_seq = bool(getattr(method.config, "true_sequential", False))

    hook.harness_phase_start(run=run, phase="calibrate", total=None)
    t0 = time.perf_counter()
    inps, kwargs = capture_inputs(model, windows, device)  # (n, T, d); kwargs per layer
    hook.harness_phase_end(run=run, phase="calibrate", seconds=time.perf_counter() - t0)

    sensitivity = None
    if method.needs_sensitivity:
        key = {"model": model_key, "windows_sha256": windows_hash(windows)}
        sensitivity = cached_sensitivities(model, mr, inps, kwargs, key, cache_dir, windows)
    specs, allocation = plan_specs(method, all_linear, sensitivity["scores"] if sensitivity else None,
                                   mr.check_plan)

    per_layer: dict[str, dict[str, Any]] = {}
    grids: dict[str, Any] = {}
    hook.harness_phase_start(run=run, phase="quantize", total=len(specs))
    t0 = time.perf_counter()
    for i, layer in enumerate(layers):
        with on_device(layer, device):
            local = block_linears(layer)
            for group in stages(list(local), true_seq, fam):
                full = {f"{path}.{i}.{n}": local[n] for n in group if f"{path}.{i}.{n}" in specs}
                if not full:
                    continue
                method.collect(layer, full, inps, kwargs[i])
                for name, mod in full.items():
                    quantize_one(mr, name, mod, specs[name], per_layer, grids)
            inps = run_block(layer, inps, kwargs[i])  # the quantized layer's outputs feed the next one
    hook.harness_phase_end(run=run, phase="quantize", seconds=time.perf_counter() - t0)
    summary = summarize(all_linear, specs, per_layer)
    if sensitivity is not None:
        summary["sensitivity"] = {"cached": sensitivity["cached"], "seconds": sensitivity["seconds"],
                                  "scores": sensitivity["scores"],
                                  **({"tables": sensitivity["tables"]} if "tables" in sensitivity else {})}
    if allocation is not None:
        summary["allocation"] = allocation
    return Quantized(summary, grids)
