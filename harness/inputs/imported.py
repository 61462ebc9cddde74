"""Evaluating quantized checkpoints made elsewhere: a Hugging Face folder whose ``config.json`` carries a GPTQ or
compressed-tensors (``pack-quantized``) ``quantization_config`` (formats: ``harness.export``, docs/formats.md).

Each quantized layer is read into integer codes, fp scales and integer zero points, then mapped losslessly onto
the harness's ``QuantLinear`` where its grid fits the packed format (2/4-bit, per-channel or a power-of-two group
≥ 16, groups in column order, fp16-exact scales), so it runs on this project's kernels; otherwise (3/8-bit,
act-order with permuted groups, ...) it is dequantized once into an ``nn.Linear``. Nothing is re-quantized: an
exported run read back computes exactly what the run evaluated. Bad input is one ``ConfigError`` line: a
``quant_method`` neither format, a ``dynamic`` rule that matches no module, widths a tensor's shape contradicts,
an unreadable tensor file.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.export.bitstream import unpack_last

log = logging.getLogger(__name__)

GPTQ, CT = "gptq", "compressed-tensors"
FORMAT_NAMES = {GPTQ: "GPTQ", CT: "compressed-tensors"}


def quantization_config(folder: str | Path | None) -> dict[str, Any] | None:
    """The ``quantization_config`` of a local folder's ``config.json``, or None (a plain model, an HF id)."""
    if folder is None:
        return None
    cfg_file = Path(folder).expanduser() / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        return json.loads(cfg_file.read_text()).get("quantization_config")
    except json.JSONDecodeError as err:
        raise ConfigError(f"model.path={folder}: config.json is not valid JSON ({err})") from None


def source_format(folder: str | Path | None) -> str | None:
    """``gptq`` | ``compressed-tensors`` for a checkpoint in one of those formats; None for an unquantized model;
    one line for a quantized checkpoint in another format."""
    qcfg = quantization_config(folder)
    if qcfg is None:
        return None
    method = qcfg.get("quant_method")
    if method == GPTQ:
        return GPTQ
    if method == CT:
        if qcfg.get("format") != "pack-quantized":
            raise ConfigError(f"model.path={folder}: compressed-tensors format {qcfg.get('format')!r} is not "
                              f"read here; "
                              f"the harness reads pack-quantized (integer weights)")
        return CT
    raise ConfigError(f"model.path={folder} is quantized with quant_method={method!r}, which the harness does not "
                      f"read; it evaluates GPTQ and compressed-tensors (pack-quantized) checkpoints")


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"model.path={folder}: no *.safetensors file")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError) as err:
            raise ConfigError(f"model.path={folder}: cannot read {f.name} ({err})") from None
    return state


# ------------------------------------------------------------------------------------- the two formats
def gptq_rules(qcfg: dict[str, Any], names: list[str], folder: Path) -> dict[str, dict[str, Any] | None]:
    """name → {bits, group_size} per GPTQModel's ``dynamic`` (first matching rule wins; ``-:`` = unquantized)."""
    dynamic = qcfg.get("dynamic") or {}
    default = {"bits": qcfg.get("bits"), "group_size": qcfg.get("group_size", -1)}
    used: set[str] = set()
    out: dict[str, dict[str, Any] | None] = {}
    for name in names:
        out[name] = default
        for pattern, override in dynamic.items():
            negative = pattern.startswith("-:")
            regex = pattern[2:] if pattern[:2] in ("+:", "-:") else pattern
            if re.match(regex, name):
                used.add(pattern)
                out[name] = None if negative else {**default, **{k: v for k, v in override.items()
                                                                   if k in ("bits", "group_size")}}
                break
    unused = [p for p in dynamic if p not in used]
    if unused:
        raise ConfigError(f"model.path={folder}: the dynamic rule {unused[0]!r} matches no quantized module; "
                          f"fix or drop it in config.json")
    return out


def gptq_layer(name: str, state: dict[str, torch.Tensor], rule: dict[str, Any], v2: bool, folder: Path
               ) -> dict[str, Any]:
    """codes (N, K), scale (N, G) float, zero (N, G) integer-valued, g_idx (K,) of one GPTQ layer."""
    qweight, qzeros, scales = (state.pop(f"{name}.{k}") for k in ("qweight", "qzeros", "scales"))
    g_idx = state.pop(f"{name}.g_idx", None)
    bits, G, N = rule["bits"], scales.shape[0], scales.shape[1]
    K = qweight.shape[0] * 32 // bits if bits else 0
    if bits not in (2, 3, 4, 8) or qweight.shape[1] != N or qzeros.shape != (G, -(-N * bits // 32)) or \
            (g_idx is not None and g_idx.shape != (K,)):
        raise ConfigError(f"model.path={folder}: {name} has qweight {tuple(qweight.shape)}, qzeros "
                          f"{tuple(qzeros.shape)}, scales {tuple(scales.shape)}, which do not fit {bits}-bit GPTQ "
                          f"(corrupt tensor or wrong bits)")
    codes = unpack_last(qweight.t(), bits, K)  # (K·b/32, N) → (N, K)
    zero = unpack_last(qzeros, bits, N).t() + (0 if v2 else 1)  # (G, N) → (N, G); v1 stores zero − 1
    g = rule["group_size"]
    trivial = torch.arange(K) // (K if g in (-1, None) else g)
    if g_idx is None or torch.equal(g_idx.long(), trivial):
        g_idx = None
    return {"bits": bits, "group_size": -1 if g in (-1, None) else g, "codes": codes, "scale": scales.t(),
            "zero": zero.float(), "g_idx": g_idx}


def ct_scheme(name: str, qcfg: dict[str, Any]) -> dict[str, Any] | None:
    """The weights args of the first config group whose targets match ``name`` (a Linear), or None (ignored)."""
    def matches(target: str) -> bool:
        if target.startswith("re:"):
            return re.match(target[3:], name) is not None
        return target in (name, "Linear") or name.endswith(f".{target}")
    if any(matches(t) for t in qcfg.get("ignore") or []):
        return None
    for group in qcfg.get("config_groups", {}).values():
        if any(matches(t) for t in group.get("targets", [])):
            return group.get("weights")
    return None


def ct_layer(name: str, state: dict[str, torch.Tensor], args: dict[str, Any], folder: Path) -> dict[str, Any]:
    packed, scale = state.pop(f"{name}.weight_packed"), state.pop(f"{name}.weight_scale")
    shape = state.pop(f"{name}.weight_shape", None)
    zp, g_idx = state.pop(f"{name}.weight_zero_point", None), state.pop(f"{name}.weight_g_idx", None)
    bits = args.get("num_bits")
    N, K = (int(x) for x in shape) if shape is not None else (packed.shape[0], packed.shape[1] * 32 // bits)
    G = scale.shape[1] if scale.dim() == 2 else 1
    if args.get("type", "int") != "int" or bits not in (2, 3, 4, 8) or packed.shape != (N, -(-K * bits // 32)) \
            or scale.shape[0] != N or (not args.get("symmetric", True) and zp is None):
        raise ConfigError(f"model.path={folder}: {name} has weight_packed {tuple(packed.shape)} and weight_scale "
                          f"{tuple(scale.shape)}, which do not fit {bits}-bit pack-quantized of shape {(N, K)} "
                          f"(corrupt tensor or wrong num_bits)")
    codes = unpack_last(packed, bits, K)  # (N, K): the signed values + 2^(b−1)
    if args.get("symmetric", True):
        zero = torch.full((N, G), float(2 ** (bits - 1)))
    else:  # (ceil(N·b/32), G) packed along N → (N, G), also + 2^(b−1)
        zero = unpack_last(zp.t(), bits, N).t().float()
    g = args.get("group_size") if args.get("strategy") == "group" else -1
    trivial = torch.arange(K) // (K if g == -1 else g)
    if g_idx is None or torch.equal(g_idx.long(), trivial):
        g_idx = None
    return {"bits": bits, "group_size": g, "codes": codes, "scale": scale.reshape(N, G), "zero": zero,
            "g_idx": g_idx}


# ------------------------------------------------------------------------------------- building the model
def to_module(layer: dict[str, Any], bias: torch.Tensor | None, dtype: torch.dtype) -> tuple[nn.Module, bool]:
    """A ``QuantLinear`` when the grid fits the packed format losslessly, else a dequantized ``nn.Linear``;
    returns (module, packed?)."""
    from harness.packed.packing import PACK_BITS, pack_codes
    from harness.packed.qlinear import QuantLinear

    bits, g, codes, scale, zero = (layer[k] for k in ("bits", "group_size", "codes", "scale", "zero"))
    N, K = codes.shape
    fits = (bits in PACK_BITS and layer["g_idx"] is None and (g == -1 or (g >= 16 and g & (g - 1) == 0))
            and K % (32 // bits) == 0 and torch.equal(scale.to(torch.float16).to(scale.dtype), scale))
    if fits:
        q = QuantLinear(K, N, bits, g, bias=bias is not None, dtype=dtype)
        q.qweight.copy_(pack_codes(codes, bits))
        q.scales.copy_(scale.t().to(torch.float16))
        q.zeros.copy_(zero.t().to(torch.float16))
        if bias is not None:
            q.bias.copy_(bias)
        return q, True
    gi = layer["g_idx"].long() if layer["g_idx"] is not None else torch.arange(K) // (K // scale.shape[1])
    W = (codes.float() - zero.float()[:, gi]) * scale.float()[:, gi]  # (N, K), computed in fp32
    lin = nn.Linear(K, N, bias=bias is not None, dtype=dtype)
    lin.weight.data.copy_(W.to(dtype))
    if bias is not None:
        lin.bias.data.copy_(bias)
    return lin, False


def label(fmt: str, layers: dict[str, dict[str, Any]]) -> str:
    """``GPTQ-4 g128 (imported)``; a mixed checkpoint: ``GPTQ 3.50-bit mix (imported)`` (weight-averaged bits)."""
    grids = {(v["bits"], v["group_size"]) for v in layers.values()}
    n = sum(v["codes"].numel() for v in layers.values())
    if len(grids) == 1:
        bits, g = grids.pop()
        return f"{FORMAT_NAMES[fmt]}-{bits}{'' if g == -1 else f' g{g}'} (imported)"
    avg = sum(v["bits"] * v["codes"].numel() for v in layers.values()) / n
    return f"{FORMAT_NAMES[fmt]} {avg:.2f}-bit mix (imported)"


def load_imported(folder: str | Path, fmt: str, dtype: torch.dtype) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint at ``folder`` as a model (CPU, eval mode) and the record's ``imported_checkpoint`` entry."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.quantize.layers import set_module

    folder = Path(folder).expanduser()
    qcfg = quantization_config(folder)
    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # built plain; the quantized layers are put in below
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = read_tensors(folder)
    suffix = ".qweight" if fmt == GPTQ else ".weight_packed"
    names = [k[: -len(suffix)] for k in state if k.endswith(suffix)]
    if not names:
        raise ConfigError(f"model.path={folder}: its {fmt} quantization_config names no quantized tensor "
                          f"(no *{suffix}); the file is not a {fmt} checkpoint")
    layers: dict[str, dict[str, Any]] = {}
    if fmt == GPTQ:
        rules = gptq_rules(qcfg, names, folder)
        v2 = qcfg.get("checkpoint_format", "gptq") == "gptq_v2"
        for name in names:
            if rules[name] is None:
                raise ConfigError(f"model.path={folder}: {name} has packed tensors but a '-:' dynamic rule says it "
                                  f"is unquantized")
            layers[name] = gptq_layer(name, state, rules[name], v2, folder)
    else:
        for name in names:
            args = ct_scheme(name, qcfg)
            if args is None:
                raise ConfigError(f"model.path={folder}: {name} has packed tensors but no config group targets it")
            layers[name] = ct_layer(name, state, args, folder)
    n_packed = 0
    for name, layer in layers.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"model.path={folder}: the checkpoint quantizes {name!r}, which "
                              f"{type(model).__name__} does not have") from None
        if linear.weight.shape != layer["codes"].shape:
            raise ConfigError(f"model.path={folder}: {name} unpacks to {tuple(layer['codes'].shape)}, the model "
                              f"needs {tuple(linear.weight.shape)} (corrupt tensor or wrong bits)")
        module, packed = to_module(layer, state.pop(f"{name}.bias", None), dtype)
        set_module(model, name, module)
        n_packed += packed
    missing, unexpected = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                                                 for k, v in state.items()}, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in layers and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(f"model.path={folder}: the tensors do not fit {type(model).__name__}: {what}")
    model.tie_weights()
    info = {"format": fmt, "quantization_config": qcfg, "label": label(fmt, layers), "layers": len(layers),
            "packed_layers": n_packed, "dequantized_layers": len(layers) - n_packed,
            "bit_map": {n: {"bits": v["bits"], "group_size": v["group_size"]} for n, v in layers.items()}}
    log.info("imported %s checkpoint %s: %d layers on the packed kernels, %d dequantized", fmt, folder, n_packed,
             len(layers) - n_packed)
    return model.eval(), info
