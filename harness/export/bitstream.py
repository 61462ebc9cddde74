"""Dense bit-stream packing of b-bit integers into int32 words: the layout GPTQ and compressed-tensors share.

Along the packed dimension, runs of 32 values become b words read as one little-endian 32·b-bit stream:
value j of a run occupies stream bits ``[j·b, j·b + b)``, so for b ∈ {2, 4, 8} value k sits at bits
``(k mod 32/b)·b`` of word ``k // (32/b)`` (the harness's own packed layout), and for b = 3 values straddle
words (32 values in 3 words; GPTQ's 10 + 1 + 10 + 1 + 10 pattern is exactly this stream)::

    word 0: v0 … v9 (bits 0-29), v10 bits 0-1 (bits 30-31)
    word 1: v10 bit 2 (bit 0), v11 … v20 (bits 1-30), v21 bit 0 (bit 31)
    word 2: v21 bits 1-2 (bits 0-1), v22 … v31 (bits 2-31)

A length that is not a multiple of 32 is padded with zeros to one, and only the ``ceil(L·b / 32)`` words
that hold values are kept (compressed-tensors' rule; GPTQ's shapes always divide exactly).
"""
from __future__ import annotations

import math

import torch


def packed_length(length: int, bits: int) -> int:
    return math.ceil(length * bits / 32)


def pack_last(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers (..., L) in [0, 2^bits) → int32 words (..., ceil(L·bits/32)), packed along the last dimension."""
    *lead, L = values.shape
    pad = -L % 32
    v = torch.nn.functional.pad(values.to(torch.int64), (0, pad)).reshape(*lead, (L + pad) // 32, 32)
    words = torch.zeros(*lead, (L + pad) // 32, bits, dtype=torch.int64, device=values.device)
    for j in range(32):
        w, shift = divmod(j * bits, 32)
        words[..., w] |= (v[..., j] << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # the value straddles into the next word (3-bit)
            words[..., w + 1] |= v[..., j] >> (32 - shift)
    words = words.reshape(*lead, -1)[..., : packed_length(L, bits)]
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # reinterpret as signed


def unpack_last(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """The inverse of ``pack_last``: int32 words (..., W) → integers (..., length) int64 in [0, 2^bits)."""
    *lead, W = words.shape
    n_runs = math.ceil(length / 32)
    w = torch.nn.functional.pad(words.to(torch.int64) & 0xFFFFFFFF, (0, n_runs * bits - W))
    w = w.reshape(*lead, n_runs, bits)
    out = torch.empty(*lead, n_runs, 32, dtype=torch.int64, device=words.device)
    mask = 2**bits - 1
    for j in range(32):
        k, shift = divmod(j * bits, 32)
        v = w[..., k] >> shift
        if shift + bits > 32:
            v = v | (w[..., k + 1] << (32 - shift))
        out[..., j] = v & mask
    return out.reshape(*lead, n_runs * 32)[..., :length]
