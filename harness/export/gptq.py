"""Export to the GPTQ checkpoint format (read by vLLM, SGLang, and transformers through GPTQModel).

Per quantized linear layer ``<name>`` of shape (N = out_features, K = in_features), b bits, G groups:

- ``<name>.qweight`` int32 (K·b/32, N): codes packed along the input dimension K as a dense bit stream
  (``harness.export.bitstream``: value k at bit (k mod 32/b)·b of word k // (32/b) for b = 2, 4, 8; for b = 3,
  32 values in 3 words);
- ``<name>.qzeros`` int32 (G, N·b/32): zero points packed the same way along the output dimension N, storing
  **zero − 1**: the original ``checkpoint_format: "gptq"`` (v1), which every loader reads (they add the 1
  back). A zero point of 0 would be stored as −1 and read back as 2^b: v1 cannot hold it, and the export
  refuses it in one line rather than write a checkpoint that loads wrong;
- ``<name>.scales`` fp16 (G, N); ``<name>.g_idx`` int32 (K,): the group of each input column (k // group_size,
  or the permuted groups of act-order with dynamic groups, then ``desc_act: true``);
- ``<name>.bias`` when the layer has one.

``quantization_config`` carries ``quant_method: "gptq"``, the default ``bits`` / ``group_size`` (the grid of
most weights), ``desc_act``, ``sym``, ``checkpoint_format: "gptq"`` and, for a mixed plan, ``dynamic``:
GPTQModel's per-module rules, ``"+:<regex>": {"bits": b, "group_size": g}`` for modules off the default and
``"-:<regex>"`` for decoder linears left unquantized. Loaders (vLLM ``gptq_utils``) take the first rule whose
regex ``re.match``-es the module name; each rule here is anchored and names one module, or one fused layer with
all its shards (``q_proj|k_proj|v_proj|qkv_proj``), so the order never matters.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.export.bitstream import pack_last
from harness.export.common import LayerCodes, hf_folder, other_tensors, unquantized_linears
from harness.quantize.layers import FUSED_SHARDS, fused_unit

NAME = "gptq"
BITS = (2, 3, 4, 8)
DYNAMIC_GROUPS = True  # g_idx with desc_act: true
WEIGHTS_FILE = "model.safetensors"


def check_widths(widths: dict[str, int], bits_used: tuple[int, ...]) -> None:
    """GPTQ packs whole words: K·b and N·b must be multiples of 32 (3-bit: every width a multiple of 32)."""
    for b in bits_used:
        if b not in BITS:
            raise ConfigError(f"save_format=gptq stores {', '.join(map(str, BITS))}-bit weights, not {b}-bit")
        for what, width in widths.items():
            if width * b % 32:
                raise ConfigError(f"save_format=gptq cannot pack {b}-bit codes of {what}={width} into int32 words "
                                  f"({width}·{b} is not a multiple of 32); use save_format=compressed-tensors")


def pack_layer(name: str, lc: LayerCodes) -> dict[str, torch.Tensor]:
    """The GPTQ tensors of one layer (module docstring)."""
    if lc.zero.min() < 1:
        raise ConfigError(f"save_format=gptq: {name} has a zero point of 0, which GPTQ's v1 format (zero − 1) cannot "
                          f"store; export with sym=true or save_format=compressed-tensors")
    out = {
        f"{name}.qweight": pack_last(lc.codes, lc.bits).t().contiguous(),  # (N, K·b/32) → (K·b/32, N)
        f"{name}.qzeros": pack_last((lc.zero - 1).t(), lc.bits).contiguous(),  # (G, N) → (G, N·b/32)
        f"{name}.scales": lc.scale.t().contiguous(),  # (G, N) fp16
        f"{name}.g_idx": lc.group_index().contiguous(),  # (K,)
    }
    if lc.bias is not None:
        out[f"{name}.bias"] = lc.bias.contiguous()
    return out


def harness_version() -> str:
    """This package's version from its metadata (``harness/__init__`` is a layer above this module)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quant-harness")
    except PackageNotFoundError:
        return "unknown"


def unit_pattern(unit: str) -> str:
    """An anchored regex for one module, or for a fused layer and all its shards."""
    parent, _, local = unit.rpartition(".")
    shards = sorted(s for s, f in FUSED_SHARDS.items() if f == local)
    names = "|".join([*shards, local]) if shards else local
    return f"^{re.escape(parent)}\\.({names})$" if shards else f"^{re.escape(unit)}$"


def quantization_config(codes: dict[str, LayerCodes], skipped: list[str]) -> dict[str, Any]:
    """``quantization_config`` with the grid of most weights as default and ``dynamic`` rules for the rest."""
    weight = Counter()
    for lc in codes.values():
        weight[(lc.bits, lc.group_size)] += lc.codes.numel()
    (bits, group_size), _ = weight.most_common(1)[0]
    desc_act = any(lc.g_idx is not None for lc in codes.values())
    dynamic: dict[str, Any] = {}
    for name, lc in codes.items():
        if (lc.bits, lc.group_size) != (bits, group_size):
            dynamic[f"+:{unit_pattern(fused_unit(name))}"] = {"bits": lc.bits, "group_size": lc.group_size}
    for name in skipped:
        dynamic[f"-:{unit_pattern(fused_unit(name))}"] = {}
    sym = {lc.sym for lc in codes.values()}
    cfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act,
           "sym": sym.pop() if len(sym) == 1 else False, "checkpoint_format": "gptq", "pack_dtype": "int32",
           "lm_head": False, "meta": {"quantizer": [f"quant-harness:{harness_version()}"]}}
    if dynamic:
        cfg["dynamic"] = dynamic
    return cfg


def export(model: nn.Module, tokenizer: Any, codes: dict[str, LayerCodes], folder: Path) -> dict[str, Any]:
    """Write the GPTQ folder; returns its quantization config and size."""
    from safetensors.torch import save_file

    state = other_tensors(model, set(codes))
    for name, lc in codes.items():
        state.update(pack_layer(name, lc))
    qcfg = quantization_config(codes, unquantized_linears(model, codes))
    with hf_folder(folder, model, tokenizer, qcfg) as tmp:
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    return {"format": NAME, "quantization_config": qcfg, "bytes": (folder / WEIGHTS_FILE).stat().st_size}
