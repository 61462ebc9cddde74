"""Layer-by-layer calibration driver (GPTQ's ``llama_sequential``), generic over LLaMA-like decoders.

1. Capture the inputs of the first decoder layer on the calibration windows (a ``Catcher``
   replaces layer 0 and stops the forward pass), with the keyword arguments the model passes
   (position embeddings, attention mask ...). The model runs with ``use_cache=False`` and any
   cache object is dropped from the captured kwargs: otherwise each window would attend to the
   previous ones (wrong statistics, wrong propagated inputs, and nothing fails).
2. For each decoder layer: register forward hooks that feed the inputs of its linear layers to
   ``method.add_batch``, run the calibration windows through it, quantize those layers, and
   (with ``true_sequential``) repeat per stage so later stages see the quantized earlier ones:
   q/k/v → o → gate/up → down. Finally re-run the layer to produce the (quantized) inputs of the
   next one.

Only one decoder layer's activations (2 × nsamples × seqlen × hidden) and statistics are alive
at a time.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from harness.driver import decoder_layers, linear_layers, plan_specs, quantize_one, summarize
from harness.method import Method

STAGES = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
DROP_KWARGS = ("past_key_value", "past_key_values", "use_cache", "layer_past")


class _Stop(Exception):
    pass


class Catcher(nn.Module):
    """Stands in for decoder layer 0: records its input and kwargs, then stops the forward."""

    def __init__(self, layer: nn.Module, inps: list[torch.Tensor], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.layer, self.inps, self.kwargs = layer, inps, kwargs
        self.attention_type = getattr(layer, "attention_type", None)  # some models read it

    def forward(self, hidden_states, *args, **kwargs):
        self.inps.append(hidden_states.detach())
        self.kwargs.clear()
        self.kwargs.update({k: v for k, v in kwargs.items() if k not in DROP_KWARGS})
        raise _Stop


@torch.no_grad()
def capture_inputs(model: nn.Module, windows: torch.Tensor, device: str) -> tuple[torch.Tensor, dict]:
    """Inputs of decoder layer 0 for each window: (n, seqlen, hidden), plus the layer kwargs."""
    _, layers = decoder_layers(model)
    inps: list[torch.Tensor] = []
    kwargs: dict[str, Any] = {}
    first = layers[0]
    layers[0] = Catcher(first, inps, kwargs)
    try:
        for j in range(windows.shape[0]):
            try:
                model(input_ids=windows[j : j + 1].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = first
    return torch.cat(inps), kwargs


def stages(names: list[str], true_sequential: bool) -> list[list[str]]:
    """Group the linear layers of one decoder layer (local names) into quantization stages."""
    if not true_sequential:
        return [names]
    out, seen = [], set()
    for stage in STAGES:
        group = [n for n in names if n.rsplit(".", 1)[-1] in stage]
        if group:
            out.append(group)
            seen.update(group)
    rest = [n for n in names if n not in seen]
    return out + ([rest] if rest else [])


def _run_layer(layer: nn.Module, inps: torch.Tensor, kwargs: dict) -> torch.Tensor:
    outs = torch.empty_like(inps)
    for j in range(inps.shape[0]):
        out = layer(inps[j : j + 1], **kwargs)
        outs[j] = out[0] if isinstance(out, tuple) else out
    return outs


@torch.no_grad()
def quantize_sequential(
    model: nn.Module, method: Method, windows: torch.Tensor, device: str, hook: Any, run: Any
) -> dict[str, Any]:
    """Quantize ``model`` in place, layer by layer, with calibration ``windows`` (n, seqlen)."""
    path, layers = decoder_layers(model)
    all_linear = linear_layers(model)
    specs = plan_specs(method, all_linear)
    true_seq = bool(getattr(method.config, "true_sequential", False))

    hook.harness_phase_start(run=run, phase="calibrate", total=None)
    t0 = time.perf_counter()
    inps, kwargs = capture_inputs(model, windows, device)  # (n, T, d)
    hook.harness_phase_end(run=run, phase="calibrate", seconds=time.perf_counter() - t0)

    per_layer: dict[str, dict[str, Any]] = {}
    grids: dict[str, Any] = {}
    hook.harness_phase_start(run=run, phase="quantize", total=len(specs))
    t0 = time.perf_counter()
    for i, layer in enumerate(layers):
        local = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
        for group in stages(list(local), true_seq):
            full = {f"{path}.{i}.{n}": local[n] for n in group if f"{path}.{i}.{n}" in specs}
            if not full:
                continue
            handles = [
                mod.register_forward_hook(lambda _m, inp, _out, name=name: method.add_batch(name, inp[0].data))
                for name, mod in full.items()
            ]
            try:
                _run_layer(layer, inps, kwargs)
            finally:
                for h in handles:
                    h.remove()
            for name, mod in full.items():
                quantize_one(method, name, mod, specs[name], per_layer, hook, run, grids)
        inps = _run_layer(layer, inps, kwargs)  # the quantized layer's outputs feed the next one
    hook.harness_phase_end(run=run, phase="quantize", seconds=time.perf_counter() - t0)
    return {**summarize(all_linear, specs, per_layer), "grids": grids}  # grids: popped before the record
