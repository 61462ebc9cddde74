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

2-bit groups of 128 (``PAIRED``, a K block of 8 words). A 16-word block spans 256 inputs, two groups, and one
m16n8k16 needs 16 K rows, so the block above cannot keep one scale and zero a block. Rather than mask the
activations into two half-empty dots a group (twice the mma and eight field accumulators), the K block is one
group, 8 words, whose rows are doubled in registers: ``_pair_rows`` joins each word w with w >> 4 into rows
2r + h of a (16, BLOCK_N) tile. Fields 0 and 1 (bits 0-3) of byte B of row 2r + h are codes 4B + 2h and
4B + 2h + 1 of word r, so 8 codes a row (J = 2B + i) at *two* field positions cover the word's 16 codes: each
register pair of the mma operand is the thread's own word and its shift (one ``shf`` a word), and the combine
has two accumulators, s·2^22·(4·acc_0 + acc_1), not four. The activation block is permuted to match
(x_J holds k = 16r + 4B + 2h + i at row 2r + h). The zero term is −(s·z)·Σx with Σ_k x_k from one narrow dot,
x (BLOCK_M, 128) · 1 (128, XS_N), XS_N = 8 · warps: its equal columns, tiled across BLOCK_N, are already in the
accumulator's layout (the mma layout repeats its 8 · warps columns along N in registers), so it costs one
mma a warp and K step instead of the per-group zero dot's one per 8 columns (whose broadcast operand pairs
ptxas also copies register by register). Σx is fp32 (exact products), as in the per-channel path.

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
def _pair_rows(w):
    """2-bit, K block of one 128-input group: (8, BLOCK_N) packed words → (16, BLOCK_N) with row 2r + h =
    word r shifted right by 4·h. Fields 0 and 1 (bits 0-3) of byte B of row 2r + h are codes 4B + 2h and
    4B + 2h + 1 of word r, so 8 codes a row at two field positions cover all 16 codes of the word. The new axis
    is innermost (join), so both rows of a thread's operand register come from the thread's own word."""
    t = tl.join(w, w >> 4)  # (8, BLOCK_N, 2): [..., h] = w >> 4h
    t = tl.permute(t, (0, 2, 1))  # (8, 2, BLOCK_N)
    return tl.reshape(t, (2 * w.shape[0], w.shape[1]))  # (16, BLOCK_N), row 2r + h


@triton.jit
def _mac_paired(a0, a1, x, words, J: tl.constexpr, PTX: tl.constexpr):
    """acc_i += x_J · W_J of the paired tile (``_pair_rows``): J = 2B + i is field i < 2 of byte B."""
    w = _field(words, 4 * (J // 2) + J % 2, 2, PTX)
    if J % 2 == 0:
        a0 = tl.dot(x, w, a0)
    else:
        a1 = tl.dot(x, w, a1)
    return a0, a1


@triton.jit
def _block_paired(a0, a1, xa, words, PTX: tl.constexpr):
    """Σ_J x_J · W_J of one paired K block: xa (BLOCK_M, 128) in natural k order, words (16, BLOCK_N) from
    ``_pair_rows``; x_J holds k = 16r + 4B + 2h + i at row 2r + h (J = 2B + i)."""
    BM: tl.constexpr = xa.shape[0]
    t = tl.permute(tl.reshape(xa, (BM, 8, 4, 2, 2)), (0, 1, 3, 2, 4))  # (BM, r, h, B, i)
    x0, x1, x2, x3, x4, x5, x6, x7 = _split8(tl.reshape(t, (BM, 16, 2, 2, 2)))  # x_J, J = 2B + i
    a0, a1 = _mac_paired(a0, a1, x0, words, 0, PTX)
    a0, a1 = _mac_paired(a0, a1, x1, words, 1, PTX)
    a0, a1 = _mac_paired(a0, a1, x2, words, 2, PTX)
    a0, a1 = _mac_paired(a0, a1, x3, words, 3, PTX)
    a0, a1 = _mac_paired(a0, a1, x4, words, 4, PTX)
    a0, a1 = _mac_paired(a0, a1, x5, words, 5, PTX)
    a0, a1 = _mac_paired(a0, a1, x6, words, 6, PTX)
    a0, a1 = _mac_paired(a0, a1, x7, words, 7, PTX)
    return a0, a1


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
    −z·Σx term is already in acc_0 (the paired 2-bit g128 block: ``_combine_paired``)."""
    if BITS == 4:  # s·(2^24·a0 + 2^20·a1) = s·2^20·(16·a0 + a1): one scaled column vector
        acc = acc + (a0 * 16.0 + a1) * (s * 1048576.0)[None, :]
    else:  # s·2^18·(64·a0 + 16·a1 + 4·a2 + a3)
        acc = acc + (((a0 * 4.0 + a1) * 4.0 + a2) * 4.0 + a3) * (s * 262144.0)[None, :]
    if ZDOT:
        return acc
    else:
        return acc - xs[:, None] * (z * s)[None, :]


@triton.jit
def _combine_paired(acc, a0, a1, xa, s, z, XS_N: tl.constexpr):
    """acc + s·2^22·(4·a0 + a1) − (s·z)·Σx for one paired K block (one group). Σ_k x_k (BLOCK_M,) comes from
    one narrow dot with a ones tile, xa (BLOCK_M, BLOCK_K) · 1 (BLOCK_K, XS_N), whose XS_N = 8 · warps columns
    (one mma tile a warp) are equal; tiled across BLOCK_N it lands in the accumulator's own layout (the mma
    layout repeats its 8 · warps columns along N in registers), so no data moves."""
    BM: tl.constexpr = acc.shape[0]
    BN: tl.constexpr = acc.shape[1]
    xs = tl.dot(xa, tl.full((xa.shape[1], XS_N), 1.0, tl.float16))  # (BM, XS_N) fp32, every column Σ_k x_k
    xs = tl.reshape(tl.broadcast_to(xs[:, None, :], (BM, BN // XS_N, XS_N)), (BM, BN))
    return acc + (a0 * 4.0 + a1) * (s * 4194304.0)[None, :] - xs * (s * z)[None, :]


@triton.jit(do_not_specialize=["epoch"])
def gemm_tc_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, epoch, M, N, K, stride_xm, stride_om,
                   M_BUCKET, BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, PTX: tl.constexpr,
                   EVEN: tl.constexpr, XS_N: tl.constexpr = 32):
    """out (M, N) = x (M, K) @ Ŵᵀ, fp16 x; the module docstring. Grid: (cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N),
    SPLIT_K); BLOCK_K = 16·P, or 8·P = 128 for 2-bit (PAIRED; checked); GROUP = 0 or a multiple of BLOCK_K;
    XS_N: ``xs_width`` (the paired Σx dot). Split-K: contiguous runs of K
    blocks per split and the deterministic epilogue ``split_k_reduce``, as ``harness.packed.gemm``. EVEN
    (``gemm_tc_even`` sets it): K and N are multiples of the blocks, so no K or N masks in the loop."""
    P: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // P
    PAIRED: tl.constexpr = BLOCK_KW == 8  # 2-bit, one 128-input group a K block: rows doubled by _pair_rows
    ZDOT: tl.constexpr = GROUP != 0  # per group: −z·Σx by one more dot; per channel: Σx summed, applied once
    tl.static_assert(BLOCK_KW == 16 or (BITS == 2 and BLOCK_KW == 8),
                     "gemm_tc: BLOCK_K must be 16 words (128 4-bit / 256 2-bit inputs), or 8 (2-bit, 128)")
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
        if PAIRED:
            a0, a1 = _block_paired(a0, a1, xa, _pair_rows(words), PTX)  # two field positions: a2, a3 stay 0
        else:
            a0, a1, a2, a3 = _block(a0, a1, a2, a3, xa, words, BITS, PTX)
        if GROUP != 0:
            g = (b * BLOCK_K) // GROUP
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if PAIRED:
            acc = _combine_paired(acc, a0, a1, xa, s, z, XS_N)
        elif ZDOT:
            zt = (z * -5.9604644775390625e-08).to(tl.float16)  # −z·2^−24, an exact subnormal
            a0 = tl.dot(xa, tl.broadcast_to(zt[None, :], (BLOCK_K, BLOCK_N)), a0)  # −z·Σx, on the tensor cores
        else:
            xs += tl.sum(xa.to(tl.float32), axis=1)
        if GROUP != 0 and not PAIRED:
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


def block_k(bits: int, group: int = 0) -> int:
    """The K block of ``gemm_tc_kernel``: 16 packed words, or 8 for 2-bit groups of 128 (``_pair_rows``)."""
    if bits == 2 and group and group % 256:
        return 128
    return 16 * (32 // bits)


def xs_width(block_n: int, num_warps: int) -> int:
    """XS_N of ``_combine_paired``: one mma tile (8 columns) a warp, at least the 16 ``tl.dot`` needs."""
    return min(block_n, max(16, 8 * num_warps))


def fits(M: int, bits: int, group: int, fp16: bool) -> bool:
    """Whether ``gemm_tc_kernel`` serves this launch: 2 ≤ M ≤ 16, fp16 activations, and groups a whole number
    of K blocks (per channel, or g ≥ 128: 4-bit g128 and 2-bit g256 in blocks of 16 words, 2-bit g128 of 8)."""
    return fp16 and 2 <= M <= 16 and (group == 0 or group % block_k(bits, group) == 0)
