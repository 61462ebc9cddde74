"""Uniform min-max quantization primitives (GPTQ's ``Quantizer`` semantics) and bit accounting.

Grid: ``q = clamp(round(w / scale) + zero, 0, maxq)``, ``ŵ = scale · (q − zero)``, ``maxq = 2^bits − 1``.
As in GPTQ's reference ``quant.py`` (``find_params`` with ``perchannel=True, mse=False``) the
min-max range is widened to include 0, a row of zeros gets the range [−1, 1], and a symmetric
grid puts the zero point at ``(maxq + 1) / 2``. Groups run along the input dimension: a weight
``W`` of shape (d_out, d_in) with group size ``g`` has ``d_in / g`` (scale, zero) pairs per row;
``g = -1`` means one pair per output row ("per-channel").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.errors import ConfigError

SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_BITS = 16  # scales are stored as fp16


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is quantized."""

    bits: int
    group_size: int = -1  # -1: per output channel
    sym: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size != -1 and self.group_size <= 0:
            raise ConfigError(f"group_size={self.group_size} is invalid; use -1 (per-channel) or a positive size")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def groups(self, d_in: int, layer: str = "") -> int:
        """Number of groups per row; a group size that does not divide ``d_in`` is an error."""
        if self.group_size == -1:
            return 1
        if d_in % self.group_size:
            where = f" of {layer}" if layer else ""
            raise ConfigError(
                f"group_size={self.group_size} does not divide in_features={d_in}{where}; "
                f"use a divisor of every layer's width (e.g. 64 for SmolLM2) or -1 for per-channel"
            )
        return d_in // self.group_size

    def overhead_bits(self, d_in: int) -> float:
        """Extra bits per weight for the fp16 scale and the ``bits``-bit zero point of each group."""
        group = d_in if self.group_size == -1 else self.group_size
        zero_bits = 0 if self.sym else self.bits
        return (SCALE_BITS + zero_bits) / group


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits} is not supported; choose one of {', '.join(map(str, SUPPORTED_BITS))}")


def find_params(W: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point per row of ``W`` (rows, cols) → scale, zero: (rows, 1)."""
    maxq = 2**bits - 1
    zeros = torch.zeros(W.shape[0], device=W.device, dtype=W.dtype)
    xmin = torch.minimum(W.min(dim=1).values, zeros)
    xmax = torch.maximum(W.max(dim=1).values, zeros)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, -torch.ones_like(xmin), xmin)
    xmax = torch.where(dead, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize_int(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer codes in [0, maxq], same shape as ``W``; scale/zero broadcast against it."""
    return torch.clamp(torch.round(W / scale) + zero, 0, maxq)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def quantize(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Fake-quantize: round ``W`` to the grid and return the dequantized values."""
    return dequantize(quantize_int(W, scale, zero, maxq), scale, zero)


@dataclass
class QuantizedWeight:
    """Result of quantizing one matrix. Shapes for W: (d_out, d_in), G groups per row."""

    Q: torch.Tensor  # (d_out, d_in) dequantized values, W's dtype
    codes: torch.Tensor  # (d_out, d_in) uint8 integer codes in [0, 2^bits)
    scale: torch.Tensor  # (d_out, G)
    zero: torch.Tensor  # (d_out, G)
    spec: QuantSpec


GRID_KEY = "grid"  # stats key under which a solver (gptq_quantize) returns the Grid it used


@dataclass
class Grid:
    """The integer grid a method actually used for one layer, kept for packing (``harness.packed.qlinear``).

    ``scale``, ``zero``: (d_out, G), group ``j`` covering input columns ``j·g … (j+1)·g − 1``;
    ``g_idx``: (d_in,) group of each input column when that is not ``k // g`` (GPTQ act-order with
    dynamic groups), else None;
    ``input_scale``: (d_in,) a per-input-channel activation scale ``s`` (AWQ's, not folded into the preceding
    layer), else None. With it, the weights on the grid are ``W·diag(s)`` (``W`` the layer's fake-quant
    weights, (d_out, d_in)) and the layer computes ``(x / s) (W·diag(s))ᵀ``; ``s`` is stored in fp16, so a
    method returning it uses fp16-representable values (its fake-quant weights are then exactly ``Q / s``).
    """

    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None


def rtn(W: torch.Tensor, spec: QuantSpec, layer: str = "") -> QuantizedWeight:
    """Round-to-nearest min-max quantization of ``W`` (d_out, d_in), per-channel or grouped."""
    d_out, d_in = W.shape
    G = spec.groups(d_in, layer)
    Wf = W.float().reshape(d_out * G, d_in // G)  # (d_out·G, g): one row per (output row, group)
    scale, zero = find_params(Wf, spec.bits, spec.sym)  # (d_out·G, 1)
    codes = quantize_int(Wf, scale, zero, spec.maxq)
    Q = dequantize(codes, scale, zero).reshape(d_out, d_in).to(W.dtype)
    return QuantizedWeight(
        Q=Q,
        codes=codes.reshape(d_out, d_in).to(torch.uint8),
        scale=scale.reshape(d_out, G),
        zero=zero.reshape(d_out, G),
        spec=spec,
    )


def relative_error(W: torch.Tensor, Q: torch.Tensor) -> float:
    """‖W − Q‖_F / ‖W‖_F."""
    return float((W.float() - Q.float()).norm() / W.float().norm().clamp_min(1e-12))

