"""What every export format needs: each quantized layer's integer codes and grid, the model's other tensors,
the checks that need no model, and the atomic write of a Hugging Face folder.

The codes are re-derived from the fake-quant weights and the method's own grid (as ``QuantLinear.from_linear``
does) and checked to lie on it, so an export is never a silent re-quantization. Scales are rounded to fp16 once
here, as the harness's packed layer and the GPTQ format store them: the exported model computes the same weights
as the harness's packed model (2/4-bit), and within fp16 rounding of the scales of its fake-quant model.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.quantize.layers import fused_unit, linear_layers, qkv_split
from harness.quantize.primitives import Grid, QuantSpec, quantize_int
from harness.util import atomic_output

log = logging.getLogger(__name__)

ON_GRID_TOL = 0.05  # max |Ŵ − W| in grid steps (as harness.packed.qlinear): float rounding is far below


@dataclass
class LayerCodes:
    """One quantized linear layer ``y = x Ŵᵀ + b``, Ŵ[n, k] = scale[n, gi[k]] · (codes[n, k] − zero[n, gi[k]])
    with ``gi = g_idx`` when given, else ``k // group_size`` (``k // K`` = 0 per-channel).

    codes (N, K) int64 in [0, 2^bits); scale (N, G) fp16; zero (N, G) int64 in [0, 2^bits − 1];
    g_idx (K,) int32 or None; bias (N,) in the model's dtype or None."""

    bits: int
    group_size: int  # -1: per-channel
    sym: bool
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor | None
    bias: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # (N, K)

    def group_index(self) -> torch.Tensor:
        """g_idx (K,) int32: the group of every input column."""
        N, K = self.codes.shape
        if self.g_idx is not None:
            return self.g_idx.to(torch.int32)
        g = K if self.group_size == -1 else self.group_size
        return (torch.arange(K) // g).to(torch.int32)


def layer_codes(name: str, linear: nn.Linear, grid: Grid, bits: int, group_size: int, sym: bool) -> LayerCodes:
    """The integer codes of a fake-quantized ``linear`` on ``grid`` (one clear error if it is not on it, or if
    the grid has a per-input-channel activation scale, which the formats cannot hold)."""
    if grid.input_scale is not None:
        raise ConfigError(f"save: {name} keeps a per-input-channel activation scale (Grid.input_scale), which the "
                          f"export formats cannot hold; use save_format=packed")
    W = linear.weight.data.float().cpu()  # (N, K)
    N, K = W.shape
    G = grid.scale.shape[1]
    gi = grid.g_idx.long().cpu() if grid.g_idx is not None else torch.arange(K) // (K // G)  # (K,)
    s = grid.scale.float().cpu()[:, gi]  # (N, K)
    z = grid.zero.float().cpu()[:, gi]
    codes = quantize_int(W, s, z, 2**bits - 1)
    off = ((codes - z) * s - W).abs() / s
    if off.max() > ON_GRID_TOL:
        raise ValueError(f"{name}: weights are not on the method's {bits}-bit grid (up to {off.max():.3g} steps off)")
    zero = grid.zero.float().cpu()
    if not torch.equal(zero, zero.round()) or zero.min() < 0 or zero.max() > 2**bits - 1:
        raise ValueError(f"{name}: zero points are not integers in [0, {2**bits - 1}]")
    trivial = grid.g_idx is None or torch.equal(grid.g_idx.long().cpu(), torch.arange(K) // (K // G))
    return LayerCodes(bits=bits, group_size=group_size, sym=sym, codes=codes.long(),
                      scale=grid.scale.cpu().to(torch.float16), zero=zero.long(),
                      g_idx=None if trivial else grid.g_idx.cpu().to(torch.int32),
                      bias=None if linear.bias is None else linear.bias.data.detach().cpu().clone())


def collect_codes(model: nn.Module, grids: dict[str, Grid], layers_info: dict[str, dict[str, Any]],
                  sym: bool) -> dict[str, LayerCodes]:
    """``layer_codes`` of every quantized layer of the fake-quant ``model`` (before packing replaces them)."""
    missing = sorted(set(layers_info) - set(grids))
    if missing:
        raise ConfigError(f"save: the method returned no integer grid for {missing[0]} ({len(missing)} layers); "
                          f"it cannot be exported")
    out = {}
    for name, info in layers_info.items():
        if info.get("packable") is False:
            raise ConfigError(f"save: {name} is not one uniform grid ({info.get('packable_reason')}); "
                              f"it cannot be exported")
        out[name] = layer_codes(name, model.get_submodule(name), grids[name], info["bits"], info["group_size"], sym)
    return out


def other_tensors(model: nn.Module, quantized: set[str]) -> dict[str, torch.Tensor]:
    """The model's tensors outside the quantized layers (embeddings, norms, ``lm_head``), each stored once
    (a tied ``lm_head`` under the embedding's name, as ``save_pretrained`` stores it)."""
    drop = {f"{n}.{p}" for n in quantized for p in ("weight", "bias")}
    state, seen = {}, set()
    for k, v in model.state_dict().items():
        if k in drop or v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        state[k] = v.detach().cpu().contiguous()
    return state


def fused_mismatch(specs: dict[str, QuantSpec]) -> str | None:
    """The first fused layer (q/k/v, gate/up: ``harness.quantize.layers.FUSED_SHARDS``) whose shards the plan
    gives different grids, as a sentence; None when every fused layer has one."""
    units: dict[str, dict[str, QuantSpec]] = {}
    for name, spec in specs.items():
        units.setdefault(fused_unit(name), {})[name] = spec
    for unit, shards in units.items():
        if len({(s.bits, s.group_size) for s in shards.values()}) > 1:
            widths = ", ".join(f"{n.rsplit('.', 1)[-1]} {s.bits}-bit" for n, s in shards.items())
            return f"{unit} is one fused layer in vLLM/SGLang, but the plan gives its shards {widths}"
    return None


def layer_widths(config: Any) -> dict[str, int]:
    """Every input and output width of the decoder's linear layers, by what it is (for the formats' packing
    rules: GPTQ packs codes along the input and zero points along the output)."""
    text = getattr(config, "text_config", None) or config
    d_q, d_k, _ = qkv_split(text)
    inter = next((getattr(text, f) for f in ("intermediate_size", "ffn_dim") if getattr(text, f, None)), None)
    out = {"hidden_size": text.hidden_size, "attention width": d_q, "key/value width": d_k}
    if inter:
        out["intermediate size"] = inter
    return out


def is_moe(config: Any) -> bool:
    text = getattr(config, "text_config", None) or config
    return any(getattr(text, f, None) for f in ("num_local_experts", "num_experts", "n_routed_experts"))


def unquantized_linears(model: nn.Module, codes: dict[str, LayerCodes]) -> list[str]:
    """Decoder linear layers the plan left in full precision (the formats' skip rules name them)."""
    return [n for n in linear_layers(model) if n not in codes]


@contextmanager
def hf_folder(folder: Path, model: nn.Module, tokenizer: Any, quantization_config: dict[str, Any]
              ) -> Iterator[Path]:
    """Write a Hugging Face folder atomically: ``config.json`` with ``quantization_config``, the tokenizer,
    and whatever the caller writes into the yielded temporary folder (the weights), renamed at the end."""
    with atomic_output(folder) as tmp:
        tmp.mkdir()
        yield tmp
        model.config.save_pretrained(tmp)
        cfg_file = tmp / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["quantization_config"] = quantization_config
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
