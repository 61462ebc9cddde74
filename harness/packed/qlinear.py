"""``QuantLinear``: a linear layer stored in the packed 2/4-bit format, and converting a model to it.

After a method has fake-quantized a model (weights rounded onto its integer grid, stored as floats),
``pack_model`` replaces every quantized ``nn.Linear`` by a ``QuantLinear`` holding ``qweight`` /
``scales`` / ``zeros`` (``harness.packed.packing``), each layer with its own bit width, so an APTQ 2/4 mix
dispatches per layer. The codes are re-derived from the fake-quant weights and the method's own
grid (``harness.quantize.primitives.Grid``) and checked to reproduce those weights: a grid that does not match
the weights is an error, never a silent re-quantization. A grid with a per-input-channel activation scale
``s`` (AWQ's ``input_scale``, not folded into the preceding layer) packs ``W·diag(s)`` and keeps ``s``: the
layer computes ``(x / s) Ŵᵀ``.

``measured_bits`` counts the bytes the packed buffers really take; ``parity`` compares the
fake-quant and the packed model's logits on the same windows.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError
from harness.packed.ops import quant_matmul
from harness.packed.packing import (
    PACK_BITS,
    check_packable,
    codes_per_word,
    pack_weight,
    packed_nbytes,
)
from harness.quantize.layers import set_module
from harness.quantize.primitives import Grid, dequantize, quantize_int

ON_GRID_TOL = 0.05  # max |Ŵ − W| in grid steps before packing refuses (float rounding is far below)


class QuantLinear(nn.Module):
    """``y = x Ŵᵀ + b`` with Ŵ (out_features, in_features) in the packed format of ``harness.packed.packing``.

    Buffers: ``qweight`` int32 (K/P, N), ``scales``/``zeros`` fp16 (G, N), optional ``bias`` (N,) and optional
    ``input_scale`` fp16 (K,): a per-input-channel activation scale ``s`` (AWQ's, ``Grid.input_scale``), with
    which the layer computes ``y = (x / s) Ŵᵀ + b``, Ŵ being the weights on the grid (``W·diag(s)``). It costs
    2·K bytes per layer, counted by ``packed_bytes``.

    ``forward`` divides ``x`` by ``s`` in torch before the ``harness::quant_matmul`` op (Triton on CUDA, the
    reference on CPU; the kernels are unchanged). Rounding: ``x / s`` with ``s`` in fp16 follows torch's type
    promotion, i.e. the quotient is computed in fp16 for fp16 ``x`` (correctly rounded) and in fp32 for bf16
    and fp32 ``x``, then cast once to ``x``'s dtype. A division, not a multiplication by a stored ``1/s``: the
    reciprocal of an fp16 scale is not an fp16 number, so storing it would add a rounding of the scale itself
    that the fake-quant weights ``Q / s`` do not have (as AutoAWQ's ``ScaledActivation``, which divides).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool = False,
                 dtype: torch.dtype = torch.float16, device: Any = None, input_scale: bool = False) -> None:
        super().__init__()
        check_packable(in_features, bits, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        G = 1 if group_size == -1 else in_features // group_size
        P = codes_per_word(bits)
        self.register_buffer("qweight", torch.zeros(in_features // P, out_features, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(G, out_features, dtype=torch.float16, device=device))
        self.register_buffer("zeros", torch.zeros(G, out_features, dtype=torch.float16, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.bias = None
        if input_scale:
            self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float16, device=device))
        else:
            self.input_scale = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, grid: Grid, bits: int, group_size: int, name: str = "") -> QuantLinear:
        """Pack a fake-quantized ``linear`` whose weights lie on ``grid`` (with ``grid.input_scale`` ``s``: whose
        weights times ``diag(s)`` lie on it; ``s`` as the layer stores it, in fp16)."""
        if grid.g_idx is not None:
            raise ConfigError(f"{name}: act-order with dynamic groups permutes the groups (g_idx), which the packed "
                              f"format does not store; use method.static_groups=true or group_size=-1 with pack=true")
        W = linear.weight.data.float()  # (N, K)
        N, K = W.shape
        s_in = None
        if grid.input_scale is not None:
            s_in = grid.input_scale.to(W.device).half()  # (K,): what the layer stores and divides by
            if s_in.shape != (K,) or not bool(torch.isfinite(s_in).all() and (s_in > 0).all()):
                raise ValueError(f"{name}: the input scale must be ({K},) positive and finite in fp16; got shape "
                                 f"{tuple(grid.input_scale.shape)}, range [{float(grid.input_scale.min()):.3g}, "
                                 f"{float(grid.input_scale.max()):.3g}]")
            W = W * s_in.float()  # (N, K): the weights on the grid, W·diag(s)
        G = grid.scale.shape[1]
        s = grid.scale.float().to(W.device).repeat_interleave(K // G, dim=1)  # (N, K)
        z = grid.zero.float().to(W.device).repeat_interleave(K // G, dim=1)
        codes = quantize_int(W, s, z, 2**bits - 1)  # zero points are integers: the method's rounding
        off = (dequantize(codes, s, z) - W).abs() / s
        if off.max() > ON_GRID_TOL:
            raise ValueError(f"{name}: weights are not on the method's {bits}-bit grid (up to {off.max():.3g} "
                             f"steps off); the grid returned with the layer does not match it")
        mod = cls(K, N, bits, group_size, bias=linear.bias is not None, dtype=linear.weight.dtype,
                  device=linear.weight.device, input_scale=s_in is not None)
        q, sc, ze = pack_weight(codes.to(torch.uint8), grid.scale, grid.zero, bits, group_size, name)
        mod.qweight.copy_(q)
        mod.scales.copy_(sc)
        mod.zeros.copy_(ze)
        if s_in is not None:
            mod.input_scale.copy_(s_in)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.data)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = (x / self.input_scale).to(x.dtype)  # (..., K): one rounding to x's dtype (class docstring)
        y = quant_matmul(x, self.qweight, self.scales, self.zeros, self.bits, self.group_size)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def input_scale_bytes(self) -> int:
        return 0 if self.input_scale is None else self.input_scale.numel() * self.input_scale.element_size()

    def packed_bytes(self) -> int:
        return packed_nbytes(self.qweight, self.scales, self.zeros) + self.input_scale_bytes()

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        s = ", input_scale" if self.input_scale is not None else ""
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, {g}, "
                f"bias={self.bias is not None}{s}")


def pack_model(model: nn.Module, grids: dict[str, Grid], layers_info: dict[str, dict[str, Any]]
               ) -> dict[str, nn.Linear]:
    """Replace each quantized linear (``layers_info``: name → {bits, group_size}) by a ``QuantLinear``.

    Returns the replaced fake-quant modules (for the parity check; drop them to free memory).
    """
    missing = sorted(set(layers_info) - set(grids))
    if missing:
        raise ConfigError(f"pack=true: the method returned no integer grid for {missing[0]} "
                          f"({len(missing)} layers); it cannot be packed")
    for name, info in layers_info.items():
        if info["bits"] not in PACK_BITS:
            raise ConfigError(f"pack=true stores 2- and 4-bit weights; {name} has {info['bits']} bits")
    old = {}
    for name, info in layers_info.items():
        linear = model.get_submodule(name)
        q = QuantLinear.from_linear(linear, grids[name], info["bits"], info["group_size"], name)
        old[name] = set_module(model, name, q)
    return old


def to_quant_linear(model: nn.Module, bit_map: dict[str, dict[str, Any]]) -> None:
    """Replace the named ``nn.Linear`` modules by empty ``QuantLinear`` ones (checkpoint loading)."""
    for name, spec in bit_map.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"checkpoint names layer {name!r}, which this model architecture does not have") from None
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"checkpoint layer {name!r} is a {type(linear).__name__}, not a linear layer")
        set_module(model, name, QuantLinear(linear.in_features, linear.out_features, spec["bits"],
                                            spec["group_size"], bias=linear.bias is not None,
                                            dtype=linear.weight.dtype, device=linear.weight.device,
                                            input_scale=bool(spec.get("input_scale", False))))


def measured_bits(model: nn.Module, linear_params: int) -> dict[str, Any]:
    """Bits per weight from the bytes the packed buffers take (weights + fp16 scales + fp16 zeros + the fp16
    per-input-channel scales of layers that keep one, 2·K bytes each).

    ``linear_params`` is the number of decoder linear weights; those not packed count at 16 bits,
    as in the nominal ``avg_bits``.
    """
    qls = [m for m in model.modules() if isinstance(m, QuantLinear)]
    n_packed = sum(m.in_features * m.out_features for m in qls)
    packed = sum(m.packed_bytes() for m in qls)
    weight_bytes = sum(m.qweight.numel() * 4 for m in qls)
    input_bytes = sum(m.input_scale_bytes() for m in qls)
    rest = linear_params - n_packed
    return {
        "measured_bits_per_packed_weight": 8 * packed / n_packed if n_packed else None,
        "measured_avg_bits": (8 * packed + 16 * rest) / linear_params if linear_params else None,
        "packed_bytes": packed,
        "packed_weight_bytes": weight_bytes,
        "packed_scale_zero_bytes": packed - weight_bytes - input_bytes,
        "packed_input_scale_bytes": input_bytes,
        "packed_layers": len(qls),
        "fp16_linear_bytes": 2 * linear_params,
    }


@torch.no_grad()
def parity(model: nn.Module, fake: dict[str, nn.Module], windows: torch.Tensor, device: str) -> dict[str, Any]:
    """Logits of the fake-quant model (modules ``fake`` swapped back in) vs the packed model on
    ``windows`` (n, T), one window at a time: max/mean |Δlogit| and the perplexity of both."""
    packed = {name: model.get_submodule(name) for name in fake}
    max_err, sum_err, count = 0.0, 0.0, 0
    nll = {"fake": 0.0, "packed": 0.0}
    for j in range(windows.shape[0]):
        ids = windows[j : j + 1].to(device)  # (1, T)
        logits = {}
        for which, mods in (("fake", fake), ("packed", packed)):
            for name, mod in mods.items():
                set_module(model, name, mod)
            logits[which] = model(input_ids=ids, use_cache=False).logits.float()  # (1, T, V)
            nll[which] += F.cross_entropy(logits[which][0, :-1], ids[0, 1:]).item()
        diff = (logits["fake"] - logits["packed"]).abs()
        max_err = max(max_err, diff.max().item())
        sum_err += diff.sum().item()
        count += diff.numel()
    n = windows.shape[0]
    ppl_fake, ppl_packed = math.exp(nll["fake"] / n), math.exp(nll["packed"] / n)
    return {"windows": n, "seqlen": windows.shape[1], "max_abs_logit_err": max_err,
            "mean_abs_logit_err": sum_err / max(count, 1), "ppl_fake_quant": ppl_fake, "ppl_packed": ppl_packed,
            "ppl_diff": ppl_packed - ppl_fake}
