"""The tensor-core GEMM for 2 ≤ M ≤ 16 (issue 26): ``out (M, N) = x (M, K) @ Ŵᵀ`` from the packed format of
``harness.packed.packing``, fp16 activations, with no shared-memory round trip of the unpacked weights.

Design (no change to the packed format). A K block covers ``BLOCK_K = 16·P`` inputs, i.e. 16 rows of
packed words (BLOCK_KW = 16, the K of one ``mma.m16n8k16``). Code j of every word of the (16, BLOCK_N)
packed tile, ``W_j``, is an *elementwise* function of the tile and holds the weights of the inputs
k = r·P + j (r = 0 … 15) of the block, so

    x_block · Ŵ_blockᵀ = Σ_j x_j · W_j,   x_j = the activation columns k ≡ j (mod P) of the block,

P ``tl.dot`` of K = 16 each, with no reshape of the weights. Because W_j is elementwise, Triton's
dot-operand optimisation hoists the layout conversion onto the *packed* int32 load (the pipelined copy
lands in shared memory and is read once, straight into the mma operand registers); the unpack then runs
in the operand layout, where a thread holds the words of rows (2t, 2t + 1) of a column in one half2
register: ``field_asm`` (``harness.packed.ptx``) makes that pair with one ``prmt`` (the byte holding
code j of each of the two words) and one ``and`` per two weights. The activation block is loaded once
(contiguous) and split into its P strided tiles x_j in registers (``_split8``).

Dequantisation without a fix-up. The ``and`` leaves the field at its place in the byte, so each fp16
lane is the bit pattern ``q·2^(b·i)`` (i = j mod F, F = 8/b fields a byte): the subnormal value
``q·2^(b·i − 24)``, exact (fp16 subnormals are exact inputs to the tensor cores and their products are
far above fp32's range floor). Each field position i accumulates in its own fp32 accumulator ``acc_i``,
scaled once by 2^(24 − b·i); the zero point leaves the weights altogether:

    Σ_k x_k·s·(q_k − z) = s·(Σ_i 2^(24 − b·i)·acc_i − z·Σ_k x_k),

per group (GROUP a multiple of BLOCK_K) once per K block: −z·Σx is then one more ``tl.dot`` of the
activation block with the constant tile −z·2^−24 (an exact subnormal) into acc_0, and s·2^(24 − b·(F − 1))
multiplies the Horner sum of the field accumulators (one column vector a group); per channel (GROUP = 0)
Σ_k x_k is summed in fp32 and everything is combined once after the K loop. Precision: fp32 sums of exact
fp16 products (x·q exact), the zero term in fp32 — as accurate as the fp32 scale-after-dot of
``harness.packed.gemm``; a spike of 6·10⁴ stays finite (tested).

Cost (sm_90 SASS main loop, ``benchmarks/kernel_sass.py``): per weight ½ ``lop3`` + 1/(2F) ``prmt``
+ ¼ ``HMMA`` (M = 16: 128 weights per m16n8k16; + ¼ per group for the zero dot) + the packed load and
the x split: 1.7–2.4 at M = 16 against the reshaping GEMM's 3.1–4.3 (docs/kernels.md).

fp16 activations only (bf16, fp32 and ``HARNESS_HALF2=0`` run ``harness.packed.gemm``); PTX = 0 (the
interpreter) builds the same fp16 bit patterns in pure Triton.
"""
from __future__ import annotations

import triton
import triton.language as tl

from harness.packed import ptx
from harness.packed.common import split_k_reduce

FIELD4 = tl.constexpr(tuple(ptx.field_asm(4, j) for j in range(8)))
FIELD2 = tl.constexpr(tuple(ptx.field_asm(2, j) for j in range(16)))


@triton.jit
def _field(words, J: tl.constexpr, BITS: tl.constexpr, PTX: tl.constexpr):
    """(16, BLOCK_N) fp16 W_j: code j of each word as the subnormal ``q·2^(b·i − 24)`` (``ptx.field_asm``)."""
    if PTX:
        if BITS == 4:
            return tl.inline_asm_elementwise(FIELD4[J], "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
        else:
            return tl.inline_asm_elementwise(FIELD2[J], "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
    else:
        F: tl.constexpr = 8 // BITS
        MASK: tl.constexpr = ((1 << BITS) - 1) << (BITS * (J % F))
        v = (words >> (8 * (J // F))) & MASK
        return v.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _split8(t):
    """(…, 2, 2, 2) with index j = 4a + 2b + c over the last three axes → the 8 tiles, j = 0 … 7."""
    e, o = tl.split(t)  # c
    ee, eo = tl.split(e)  # b, c = 0
    oe, oo = tl.split(o)
    x0, x4 = tl.split(ee)
    x2, x6 = tl.split(eo)
    x1, x5 = tl.split(oe)
    x3, x7 = tl.split(oo)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _mac(a0, a1, a2, a3, x, words, J: tl.constexpr, BITS: tl.constexpr, PTX: tl.constexpr):
    """acc_i += x_j · W_j, i = j mod F."""
    w = _field(words, J, BITS, PTX)
    i: tl.constexpr = J % (8 // BITS)
    if i == 0:
        a0 = tl.dot(x, w, a0)
    elif i == 1:
        a1 = tl.dot(x, w, a1)
    elif i == 2:
        a2 = tl.dot(x, w, a2)
    else:
        a3 = tl.dot(x, w, a3)
    return a0, a1, a2, a3


@triton.jit
def _block(a0, a1, a2, a3, xa, words, BITS: tl.constexpr, PTX: tl.constexpr):
    """Σ_j x_j · W_j of one K block into the field accumulators: xa (BLOCK_M, 16·P) in natural k order."""
    BM: tl.constexpr = xa.shape[0]
    if BITS == 4:
        x0, x1, x2, x3, x4, x5, x6, x7 = _split8(tl.reshape(xa, (BM, 16, 2, 2, 2)))  # k = 8r + j
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x0, words, 0, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x1, words, 1, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x2, words, 2, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x3, words, 3, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x4, words, 4, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x5, words, 5, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x6, words, 6, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x7, words, 7, BITS, PTX)
    else:
        e, o = tl.split(tl.reshape(xa, (BM, 16, 2, 2, 2, 2)))  # k = 16r + j; j even / odd
        x0, x2, x4, x6, x8, x10, x12, x14 = _split8(e)
        x1, x3, x5, x7, x9, x11, x13, x15 = _split8(o)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x0, words, 0, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x1, words, 1, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x2, words, 2, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x3, words, 3, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x4, words, 4, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x5, words, 5, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x6, words, 6, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x7, words, 7, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x8, words, 8, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x9, words, 9, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x10, words, 10, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x11, words, 11, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x12, words, 12, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x13, words, 13, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x14, words, 14, BITS, PTX)
        a0, a1, a2, a3 = _mac(a0, a1, a2, a3, x15, words, 15, BITS, PTX)
    return a0, a1, a2, a3


@triton.jit
def _combine(acc, a0, a1, a2, a3, xs, s, z, BITS: tl.constexpr, ZDOT: tl.constexpr):
    """acc + s·(Σ_i 2^(24 − b·i)·acc_i − z·Σx): s, z (BLOCK_N,) fp32, xs (BLOCK_M,) fp32; with ZDOT the
    −z·Σx term is already in acc_0."""
    if BITS == 4:  # s·(2^24·a0 + 2^20·a1) = s·2^20·(16·a0 + a1): one scaled column vector
        acc = acc + (a0 * 16.0 + a1) * (s * 1048576.0)[None, :]
    else:  # s·2^18·(64·a0 + 16·a1 + 4·a2 + a3)
        acc = acc + (((a0 * 4.0 + a1) * 4.0 + a2) * 4.0 + a3) * (s * 262144.0)[None, :]
    if ZDOT:
        return acc
    else:
        return acc - xs[:, None] * (z * s)[None, :]


@triton.jit(do_not_specialize=["epoch"])
def gemm_tc_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, epoch, M, N, K, stride_xm, stride_om,
                   M_BUCKET, BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, PTX: tl.constexpr,
                   EVEN: tl.constexpr):
    """out (M, N) = x (M, K) @ Ŵᵀ, fp16 x; the module docstring. Grid: (cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N),
    SPLIT_K); BLOCK_K = 16·P (checked); GROUP = 0 or a multiple of BLOCK_K. Split-K: contiguous runs of K
    blocks per split and the deterministic epilogue ``split_k_reduce``, as ``harness.packed.gemm``. EVEN
    (``gemm_tc_even`` sets it): K and N are multiples of the blocks, so no K or N masks in the loop."""
    P: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // P
    ZDOT: tl.constexpr = GROUP != 0  # per group: −z·Σx by one more dot; per channel: Σx summed, applied once
    tl.static_assert(BLOCK_KW == 16, "gemm_tc: BLOCK_K must be 16 words (128 4-bit / 256 2-bit inputs)")
    tl.static_assert(GROUP % BLOCK_K == 0, "gemm_tc: a K block must not straddle a group")
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
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
    KW = K // P
    n_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(n_blocks, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, n_blocks)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xs = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for b in range(b0, b1):
        offs_k = b * BLOCK_K + rk
        rows = b * BLOCK_KW + rkw
        if EVEN:
            xa = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
            words = tl.load(qw_ptr + rows[:, None] * N + offs_n[None, :], eviction_policy="evict_first")
        else:
            xa = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                         mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)  # (BLOCK_M, BLOCK_K), once
            words = tl.load(qw_ptr + rows[:, None] * N + offs_n[None, :],
                            mask=(rows < KW)[:, None] & mask_n[None, :], other=0,
                            eviction_policy="evict_first")  # (16, BLOCK_N) int32, each word once
        if GROUP != 0:
            a0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            a1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            a2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            a3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        a0, a1, a2, a3 = _block(a0, a1, a2, a3, xa, words, BITS, PTX)
        if GROUP != 0:
            g = (b * BLOCK_K) // GROUP
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            zt = (z * -5.9604644775390625e-08).to(tl.float16)  # −z·2^−24, an exact subnormal
        if ZDOT:
            a0 = tl.dot(xa, tl.broadcast_to(zt[None, :], (BLOCK_K, BLOCK_N)), a0)  # −z·Σx, on the tensor cores
        else:
            xs += tl.sum(xa.to(tl.float32), axis=1)
        if GROUP != 0:
            acc = _combine(acc, a0, a1, a2, a3, xs, s, z, BITS, ZDOT)
    if GROUP == 0:
        s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = _combine(acc, a0, a1, a2, a3, xs, s, z, BITS, ZDOT)
    mask = mask_m[:, None] & mask_n[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        split_k_reduce(acc, out_ptrs, part_ptr + offs_m[:, None] * N + offs_n[None, :], M * N, mask, cnt_ptr,
                       pid, pid_k, epoch, SPLIT_K)


gemm_tc_even = triton.heuristics({"EVEN": lambda a: a["K"] % a["BLOCK_K"] == 0 and a["N"] % a["BLOCK_N"] == 0})(
    gemm_tc_kernel)


def block_k(bits: int) -> int:
    """The K block of ``gemm_tc_kernel``: 16 packed words."""
    return 16 * (32 // bits)


def fits(M: int, bits: int, group: int, fp16: bool) -> bool:
    """Whether ``gemm_tc_kernel`` serves this launch: 2 ≤ M ≤ 16, fp16 activations, and groups a whole number
    of K blocks (per channel, or 4-bit g ≥ 128, 2-bit g ≥ 256; 2-bit g128 runs ``harness.packed.gemm``)."""
    return fp16 and 2 <= M <= 16 and (group == 0 or group % block_k(bits) == 0)
