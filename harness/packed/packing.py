"""Packed 2/4-bit weight format, pure-PyTorch pack/unpack and the reference dequantize-matmul.

The Triton kernels (``harness.packed.kernels``) read exactly this format; the functions here are their
reference and the CPU path.

Layout of one linear layer ``y = x Wᵀ`` with ``W`` (N = out_features, K = in_features) and
integer codes ``q = clamp(round(W / s) + z, 0, 2^b − 1)`` (``harness.quantize.primitives``):

``qweight``: int32 (K / P, N), P = 32 / b codes per word (b = 4: P = 8; b = 2: P = 16).
Codes are packed along the input dimension K: word ``qweight[k // P, n]`` holds code
``q[n, k]`` in bits ``[(k % P)·b, (k % P)·b + b)``. For b = 4 (P = 8), one word covers
k = 8j … 8j+7 of column n::

    bit  31      28 27      24 23      20 19      16 15      12 11       8 7        4 3        0
        ┌─────────┬─────────┬─────────┬─────────┬─────────┬─────────┬─────────┬─────────┐
        │ q[8j+7] │ q[8j+6] │ q[8j+5] │ q[8j+4] │ q[8j+3] │ q[8j+2] │ q[8j+1] │ q[8j+0] │
        └─────────┴─────────┴─────────┴─────────┴─────────┴─────────┴─────────┴─────────┘

and for b = 2 (P = 16) word j holds q[16j+15] (bits 31-30) … q[16j+0] (bits 1-0). Words of one
row j are contiguous over n, so a tile of BLOCK_N output columns is one coalesced load.

``scales``, ``zeros``: fp16 (G, N), G = K / group_size (G = 1 per-channel). Column ``k`` of
output ``n`` dequantizes as ``ŵ[n, k] = scales[k // g, n] · (q[n, k] − zeros[k // g, n])``.
Zero points are integers in [0, 2^b − 1] (min-max grids always give integer zeros); they are
stored in fp16 as the format asks, so a per-group overhead is 32 bits.

Requirements: K divisible by P (and by the group size); group_size −1 or a power of two ≥ 16
(the kernels process blocks of K that never straddle a group). Groups follow the column order:
GPTQ's act-order with dynamic groups (a permuted ``g_idx``) is not representable and is rejected.
"""
from __future__ import annotations

import torch

from harness.errors import ConfigError

PACK_BITS = (2, 4)


def codes_per_word(bits: int) -> int:
    if bits not in PACK_BITS:
        raise ConfigError(f"packing supports 2- and 4-bit weights, not {bits}-bit; use bits=2 or bits=4 with pack=true")
    return 32 // bits


def check_packable(K: int, bits: int, group_size: int, layer: str = "") -> None:
    """One clear error if a (K, bits, group_size) layer cannot be stored in the packed format."""
    where = f" ({layer})" if layer else ""
    P = codes_per_word(bits)
    if K % P:
        raise ConfigError(f"in_features={K}{where} is not a multiple of {P}: cannot pack {bits}-bit codes into int32")
    check_group_size(group_size, where)


def check_group_size(group_size: int, where: str = "") -> None:
    """Packed groups are -1 (per-channel) or a power of two ≥ 16 (the kernels' K tiles)."""
    if group_size != -1 and (group_size < 16 or group_size & (group_size - 1)):
        raise ConfigError(f"group_size={group_size}{where} cannot be packed; "
                          f"use -1 or a power of two ≥ 16 with pack=true")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (N, K) in [0, 2^bits) → qweight int32 (K / P, N) (layout in the module docstring)."""
    N, K = codes.shape
    P = codes_per_word(bits)
    if K % P:
        raise ConfigError(f"in_features={K} is not a multiple of {P}: cannot pack {bits}-bit codes")
    q = codes.to(torch.int64).t().reshape(K // P, P, N)  # (K/P, P, N): code k = j·P + p
    shifts = (torch.arange(P, device=codes.device, dtype=torch.int64) * bits).view(1, P, 1)
    words = (q << shifts).sum(dim=1)  # (K/P, N), disjoint bit fields: sum == bitwise or, < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # reinterpret as signed


def unpack_codes(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """qweight int32 (K / P, N) → codes uint8 (N, K); the inverse of ``pack_codes``."""
    P = codes_per_word(bits)
    KP, N = qweight.shape
    shifts = (torch.arange(P, device=qweight.device, dtype=torch.int32) * bits).view(1, P, 1)
    q = (qweight.unsqueeze(1) >> shifts) & (2**bits - 1)  # (K/P, P, N); arithmetic shift, then mask
    return q.reshape(KP * P, N).t().to(torch.uint8).contiguous()


def dequantize_packed(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                      group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed buffers → dequantized W (N, K) in ``dtype`` (computed in fp32, then cast once)."""
    q = unpack_codes(qweight, bits).float()  # (N, K)
    N, K = q.shape
    g = K if group_size == -1 else group_size
    s = scales.float().t().repeat_interleave(g, dim=1)  # (N, K)
    z = zeros.float().t().repeat_interleave(g, dim=1)
    return ((q - z) * s).to(dtype)


def reference_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     bits: int, group_size: int) -> torch.Tensor:
    """``x @ Ŵᵀ`` for x (..., K): dequantize to x's dtype, then one matmul. Output (..., N), x's dtype."""
    W = dequantize_packed(qweight, scales, zeros, bits, group_size, x.dtype)  # (N, K)
    return torch.nn.functional.linear(x, W)


def pack_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int,
                layer: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (N, K) and the grid scale, zero (N, G) (as ``harness.quantize.primitives`` makes them) → packed buffers
    (qweight (K/P, N) int32, scales (G, N) fp16, zeros (G, N) fp16)."""
    N, K = codes.shape
    check_packable(K, bits, group_size, layer)
    G = 1 if group_size == -1 else K // group_size
    if scale.shape != (N, G) or zero.shape != (N, G):
        raise ValueError(f"grid of {layer or 'layer'} has shape {tuple(scale.shape)}, expected {(N, G)}")
    z = zero.float()
    if not torch.equal(z, z.round()) or z.min() < 0 or z.max() > 2**bits - 1:
        raise ValueError(f"zero points of {layer or 'layer'} are not integers in [0, {2**bits - 1}]")
    return pack_codes(codes, bits), scale.t().to(torch.float16).contiguous(), z.t().to(torch.float16).contiguous()


def packed_nbytes(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (qweight, scales, zeros))
