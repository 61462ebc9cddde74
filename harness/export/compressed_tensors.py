"""Export to compressed-tensors' ``pack-quantized`` format (llm-compressor's; read by vLLM, and by transformers
on CPU through the ``compressed-tensors`` package).

Per quantized linear layer ``<name>`` of shape (N = out_features, K = in_features), b bits, G groups:

- ``<name>.weight_packed`` int32 (N, ceil(K·b/32)): the codes packed along K as a dense bit stream
  (``harness.export.bitstream``; compressed-tensors stores signed values q − 2^(b−1) and packs them with that
  offset added back, so the packed fields are exactly the harness's unsigned codes);
- ``<name>.weight_scale`` (N, G) in the model's dtype, holding the fp16-rounded scales (so the dequantized
  weights are the harness's packed ones exactly; the format allows any float dtype);
- ``<name>.weight_zero_point`` int32 (ceil(N·b/32), G): asymmetric grids only, signed zero points z − 2^(b−1)
  packed along N the same way (a symmetric grid's zero point is 2^(b−1), compressed-tensors' 0, not stored);
- ``<name>.weight_shape`` int64 (2,) = (N, K); ``<name>.bias`` when the layer has one. Act-order with dynamic
  groups (``actorder: "group"``, ``weight_g_idx``) was removed in compressed-tensors 0.20: refused here.

``quantization_config``: ``quant_method: "compressed-tensors"``, ``format: "pack-quantized"``, one entry of
``config_groups`` per grid (bits, group size, symmetry, act-order) with its ``targets``: ``["Linear"]`` when
one grid covers every decoder linear, else the module names; ``ignore``: ``lm_head`` and any decoder linear the
plan left unquantized.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.export.bitstream import pack_last
from harness.export.common import LayerCodes, hf_folder, other_tensors, unquantized_linears

NAME = "compressed-tensors"
BITS = (2, 3, 4, 8)
DYNAMIC_GROUPS = False  # actorder="group" (weight_g_idx) was removed in compressed-tensors 0.20
WEIGHTS_FILE = "model.safetensors"


def check_widths(widths: dict[str, int], bits_used: tuple[int, ...]) -> None:
    for b in bits_used:
        if b not in BITS:
            raise ConfigError(f"save_format=compressed-tensors stores {', '.join(map(str, BITS))}-bit integer "
                              f"weights here, not {b}-bit")


def pack_layer(name: str, lc: LayerCodes, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The pack-quantized tensors of one layer (module docstring)."""
    if lc.g_idx is not None:
        raise ConfigError(f"save_format=compressed-tensors: {name} has act-order dynamic groups (a permuted g_idx), "
                          f"which compressed-tensors 0.20 no longer stores; use method.static_groups=true")
    N, K = lc.shape
    out = {
        f"{name}.weight_packed": pack_last(lc.codes, lc.bits).contiguous(),  # (N, ceil(K·b/32))
        f"{name}.weight_scale": lc.scale.to(dtype).contiguous(),  # (N, G): the fp16 values, exact in fp16/fp32
        f"{name}.weight_shape": torch.tensor([N, K], dtype=torch.int64),
    }
    if not lc.sym:  # (N, G) → packed along N: (ceil(N·b/32), G)
        out[f"{name}.weight_zero_point"] = pack_last(lc.zero.t(), lc.bits).t().contiguous()
    if lc.bias is not None:
        out[f"{name}.bias"] = lc.bias.contiguous()
    return out


def scheme_key(lc: LayerCodes) -> tuple:
    return lc.bits, lc.group_size, lc.sym, lc.g_idx is not None


def weights_args(lc: LayerCodes) -> dict[str, Any]:
    grouped = lc.group_size != -1
    return {"num_bits": lc.bits, "type": "int", "symmetric": lc.sym, "dynamic": False,
            "strategy": "group" if grouped else "channel", "group_size": lc.group_size if grouped else None,
            "actorder": None, "observer": "minmax", "block_structure": None}


def quantization_config(codes: dict[str, LayerCodes], skipped: list[str], version: str | None) -> dict[str, Any]:
    schemes: dict[tuple, list[str]] = {}
    for name, lc in codes.items():
        schemes.setdefault(scheme_key(lc), []).append(name)
    uniform = len(schemes) == 1 and not skipped
    groups = {}
    for i, names in enumerate(sorted(schemes.values(), key=len, reverse=True)):
        groups[f"group_{i}"] = {"targets": ["Linear"] if uniform else names, "weights": weights_args(codes[names[0]]),
                                "input_activations": None, "output_activations": None, "format": "pack-quantized"}
    cfg = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
           "config_groups": groups, "ignore": ["lm_head", *skipped], "kv_cache_scheme": None}
    if version:
        cfg["version"] = version
    return cfg


def export(model: nn.Module, tokenizer: Any, codes: dict[str, LayerCodes], folder: Path) -> dict[str, Any]:
    """Write the compressed-tensors folder; returns its quantization config and size."""
    from importlib.metadata import PackageNotFoundError, version

    from safetensors.torch import save_file

    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float16):  # bf16 cannot hold every fp16 scale exactly
        raise ConfigError(f"save_format=compressed-tensors: the model is {dtype}; export it from float32 or float16 "
                          f"(model.dtype=float32)")
    state = other_tensors(model, set(codes))
    for name, lc in codes.items():
        state.update(pack_layer(name, lc, dtype))
    try:
        ct_version = version("compressed-tensors")
    except PackageNotFoundError:
        ct_version = None
    qcfg = quantization_config(codes, unquantized_linears(model, codes), ct_version)
    with hf_folder(folder, model, tokenizer, qcfg) as tmp:
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
    return {"format": NAME, "quantization_config": qcfg, "bytes": (folder / WEIGHTS_FILE).stat().st_size}
