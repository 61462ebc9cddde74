"""The GEMM kernel (M ≥ 2): ``out (M, N) = x (M, K) @ Ŵᵀ`` with ``tl.dot`` (tensor cores), from the
packed format of ``harness.packed.packing``.

Tiles (BLOCK_M, BLOCK_N); each packed tile is loaded once and unpacked per register (fp16:
``harness.packed.ptx.unpack_asm``, the GEMV's lop3 + fix-up pairs, joined into natural k order; else
shifts by per-register constants and the fp32 magic number); the scale multiplies each block's fp32
product; grouped program order for L2 reuse of the activation rows.
"""
from __future__ import annotations

import triton
import triton.language as tl

from harness.packed.common import (
    MAGIC,
    MAGIC_F,
    UNPACK2_ASM,
    UNPACK2_CON,
    UNPACK4_ASM,
    UNPACK4_CON,
    codes_of_pair,
    split_k_reduce,
    zeros_for,
)


@triton.jit
def _lanes(h):
    """int32 half2 bit patterns → (lo, hi) fp16 tensors of the same shape."""
    lo = h.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return tl.join(lo, hi)  # (..., 2): [a] = lane a


@triton.jit
def _pair_bits(w, zf, p: tl.constexpr, BITS: tl.constexpr):
    """Pure Triton: ``unpack_asm``'s pair p of words w, fp16 (q − z) of k = p (lo) and k = p + P/2 (hi)."""
    q_lo, q_hi = codes_of_pair(w, p, BITS)
    lo = (q_lo - zf).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi = (q_hi - zf).to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return lo | (hi << 16)


@triton.jit
def _unpack_tile_half2(words, zc, BITS: tl.constexpr, PTX: tl.constexpr):
    """(BLOCK_KW, BLOCK_N) packed words → (BLOCK_K, BLOCK_N) fp16 q − z in natural k order (``unpack_asm``).

    Pair p's lanes are k = p and k = p + P/2 of the word, so joining the lanes innermost and then the
    pairs by the bits of p (most significant first) lays the codes out as k = (P/2)·lane + p. PTX = 0
    (the interpreter; zc is then z) makes the same pairs with ``_pair_bits``."""
    BLOCK_KW: tl.constexpr = words.shape[0]
    BLOCK_N: tl.constexpr = words.shape[1]
    if BITS == 4:
        if PTX:
            z0, z1 = zc
            h0, h1, h2, h3 = tl.inline_asm_elementwise(UNPACK4_ASM, UNPACK4_CON, [words, z0, z1],
                                                       dtype=(tl.int32,) * 4, is_pure=True, pack=1)
        else:
            zf = zc.to(tl.float32)
            h0, h1, h2, h3 = (_pair_bits(words, zf, 0, 4), _pair_bits(words, zf, 1, 4), _pair_bits(words, zf, 2, 4),
                              _pair_bits(words, zf, 3, 4))
        t = tl.join(tl.join(_lanes(h0), _lanes(h2)), tl.join(_lanes(h1), _lanes(h3)))  # (KW, N, lane, b, c)
        t = tl.permute(t, (0, 2, 3, 4, 1))  # k = 4·lane + 2b + c
    else:
        if PTX:
            z0, z1, z2, z3 = zc
            h0, h1, h2, h3, h4, h5, h6, h7 = tl.inline_asm_elementwise(
                UNPACK2_ASM, UNPACK2_CON, [words, z0, z1, z2, z3], dtype=(tl.int32,) * 8, is_pure=True, pack=1)
        else:
            zf = zc.to(tl.float32)
            h0, h1, h2, h3 = (_pair_bits(words, zf, 0, 2), _pair_bits(words, zf, 1, 2), _pair_bits(words, zf, 2, 2),
                              _pair_bits(words, zf, 3, 2))
            h4, h5, h6, h7 = (_pair_bits(words, zf, 4, 2), _pair_bits(words, zf, 5, 2), _pair_bits(words, zf, 6, 2),
                              _pair_bits(words, zf, 7, 2))
        t = tl.join(tl.join(tl.join(_lanes(h0), _lanes(h4)), tl.join(_lanes(h2), _lanes(h6))),
                    tl.join(tl.join(_lanes(h1), _lanes(h5)), tl.join(_lanes(h3), _lanes(h7))))
        t = tl.permute(t, (0, 2, 3, 4, 5, 1))  # k = 8·lane + 4b + 2c + d
    return tl.reshape(t, (BLOCK_KW * (32 // BITS), BLOCK_N))


@triton.jit(do_not_specialize=["epoch"])  # a new value every launch: never a compile key
def gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, epoch, M, N, K, stride_xm, stride_om, M_BUCKET,
                BITS: tl.constexpr, GROUP: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_F32: tl.constexpr, HALF2: tl.constexpr,
                PTX: tl.constexpr):
    """out (M, N) = x (M, K) @ Ŵᵀ with tl.dot. Grid: (cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N), SPLIT_K).

    Each K block loads its (BLOCK_K/P, BLOCK_N) packed tile once and expands every word in registers
    along a middle axis of P codes (the P shifts are per-register constants, not per-element ``k % P``),
    to the exact integers q − z in the activation dtype (HALF2, fp16 activations: ``unpack_asm``'s lop3
    to fp16 pairs, 5/8 + 1/2 instruction per 4-bit weight; PTX = 0, the interpreter, makes the same bit
    patterns in pure Triton); the group's scale multiplies the block's fp32
    product ``x · (q − z)`` (BLOCK_M·BLOCK_N per block, not per weight). Split-K (contiguous runs of
    K blocks per split) uses the deterministic epilogue ``split_k_reduce``.

    DOT_F32: multiply in fp32 with IEEE precision (fp32 activations, where tf32 would lose bits, and
    bf16 under the interpreter, whose numpy ``dot`` misreads bf16)."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    BLOCK_KW: tl.constexpr = BLOCK_K // P
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles sweep the N tiles together, so their x rows stay in L2.
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rk = tl.arange(0, BLOCK_K)
    rkw = tl.arange(0, BLOCK_KW)
    shifts = (tl.arange(0, P) * BITS)[None, :, None].to(tl.uint32)  # (1, P, 1)
    KW = K // P
    n_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(n_blocks, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, n_blocks)
    if GROUP == 0:
        z = tl.load(z_ptr + offs_n[None, :], mask=mask_n[None, :], other=0.0)  # (1, BLOCK_N)
        zc = zeros_for(z, BITS, HALF2 and PTX)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for b in range(b0, b1):
        offs_k = b * BLOCK_K + rk
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        rows = b * BLOCK_KW + rkw
        words = tl.load(qw_ptr + rows[:, None] * N + offs_n[None, :], mask=(rows < KW)[:, None] & mask_n[None, :],
                        other=0, eviction_policy="evict_first")  # (BLOCK_KW, BLOCK_N) int32, each word once
        if GROUP != 0:
            g = (b * BLOCK_K) // GROUP
            z = tl.load(z_ptr + g * N + offs_n[None, :], mask=mask_n[None, :], other=0.0)
            zc = zeros_for(z, BITS, HALF2 and PTX)
        if HALF2:
            w = _unpack_tile_half2(words, zc, BITS, PTX)  # (BLOCK_K, BLOCK_N) fp16
        else:
            q = ((words.to(tl.uint32, bitcast=True)[:, None, :] >> shifts) & MAXQ) | MAGIC  # (BLOCK_KW, P, BLOCK_N)
            mz = z.to(tl.float32) + MAGIC_F  # (1, BLOCK_N)
            w = tl.reshape(q.to(tl.float32, bitcast=True) - mz[:, None, :], (BLOCK_K, BLOCK_N))  # q − z, exact
        if DOT_F32:
            blk = tl.dot(a.to(tl.float32), w, input_precision="ieee")
        else:
            blk = tl.dot(a, w.to(a.dtype))
        if GROUP != 0:
            acc += blk * tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        else:
            acc += blk
    if GROUP == 0:
        acc *= tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        split_k_reduce(acc, out_ptrs, part_ptr + offs_m[:, None] * N + offs_n[None, :], M * N, mask, cnt_ptr,
                       pid, pid_k, epoch, SPLIT_K)


def configs() -> list[triton.Config]:
    """The GEMM's autotuning space, pruned per problem by ``harness.packed.tuning``."""
    out = []
    for bm, bn, bk, w, stages in [(16, 64, 64, 4, 3), (16, 128, 64, 4, 4), (32, 64, 64, 4, 4), (32, 128, 64, 4, 3),
                                  (64, 128, 64, 4, 3), (64, 256, 32, 8, 3), (128, 128, 32, 8, 3),
                                  (128, 128, 64, 8, 3)]:  # (128, 256, 32, 8, 3) spills (kernel_sass.py)
        for split_k in (1, 2, 4):
            out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k,
                                      "GROUP_M": 8}, num_warps=w, num_stages=stages))
    return out
