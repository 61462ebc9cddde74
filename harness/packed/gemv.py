"""The GEMV kernel (M = 1, decode): ``out (1, N) = x (1, K) @ Ŵᵀ`` from the packed format of
``harness.packed.packing``.

Memory-bound, so its budget is instructions per weight. Each program owns BLOCK_N columns (8 or 4
adjacent ones per thread, one 128-bit load per word row) and a contiguous run of K blocks (split-K over
grid axis 1). For fp16 activations (HALF2) one inline-PTX call (``harness.packed.ptx.dot_asm``) takes two
words of a column: ``lop3`` ORs two codes (k = p and k = p + P/2, one per 16-bit lane) into the mantissa
of fp16 1024 at once, one ``fma.f16x2`` makes the exact integers q − z, one more multiplies them by the
activation pair into a half2 sum of 16 (4-bit) / 32 (2-bit) products, converted to fp32 once per call.
The activation pairs (x[p], x[p + P/2]) are loaded with vector loads and ``prmt``-ed once per word row
and thread, shared by all of the thread's columns. A K block's sum is scaled by its group's scale in
fp32. bf16/fp32 activations run the fp32 path (``_dot_words_ref``). Under the interpreter (PTX = 0) the
same pairs are computed in pure Triton. Its instruction count per weight is measured statically by
``benchmarks/kernel_sass.py`` and bounded by ``tests/test_kernel_sass.py``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from harness.packed.common import (
    DOT2_ASM,
    DOT2_CON,
    DOT4_ASM,
    DOT4_CON,
    MAGIC,
    MAGIC_F,
    PRMT_ASM,
    RESCALE2,
    RESCALE4,
    codes_of_pair,
    split_k_reduce,
    zeros_for,
)


@triton.jit
def _xpairs(X_ptr, rows, KW, BITS: tl.constexpr, EVEN: tl.constexpr, PTX: tl.constexpr):
    """Activation pairs of word rows ``rows`` (R,) as half2 bit patterns, for ``dot_asm``.

    ``X_ptr`` views x as int32 words X[m] = (x[2m], x[2m+1]) (lo, hi). Pair p of word row j is
    (x[Pj + p], x[Pj + p + P/2]): from X[j·P/2 + a] and X[j·P/2 + a + P/4], a = p // 2, the low lanes
    for even p (``prmt`` 0x5410) and the high lanes for odd p (0x7632). Two vector loads per row (P/4
    words each), shared by every column of the thread. Returns (lo, hi), (R, P/4) int32: pairs 2a, 2a + 1."""
    P: tl.constexpr = 32 // BITS
    Q: tl.constexpr = P // 4
    offs = rows[:, None] * (P // 2) + tl.arange(0, Q)[None, :]  # (R, Q): words X[j·P/2 + a]
    if EVEN:
        xa = tl.load(X_ptr + offs)
        xb = tl.load(X_ptr + offs + Q)
    else:
        xa = tl.load(X_ptr + offs, mask=(rows < KW)[:, None], other=0)
        xb = tl.load(X_ptr + offs + Q, mask=(rows < KW)[:, None], other=0)
    if PTX:
        return tl.inline_asm_elementwise(PRMT_ASM, "=r,=r,r,r", [xa, xb], dtype=(tl.int32, tl.int32), is_pure=True,
                                         pack=1)
    else:  # the interpreter: the same bit patterns with integer ops
        return (xa & 0xFFFF) | (xb << 16), ((xa >> 16) & 0xFFFF) | (xb & -65536)


@triton.jit
def _pairs4(X_ptr, rows, KW, EVEN: tl.constexpr, PTX: tl.constexpr):
    """The 4 activation pairs of 4-bit word rows ``rows`` (R,), each (R, 1) int32 (half2), in pair order."""
    lo, hi = _xpairs(X_ptr, rows, KW, 4, EVEN, PTX)  # (R, 2): pairs 2a, 2a + 1
    p0, p2 = tl.split(lo)
    p1, p3 = tl.split(hi)
    return p0[:, None], p1[:, None], p2[:, None], p3[:, None]


@triton.jit
def _pairs2(X_ptr, rows, KW, EVEN: tl.constexpr, PTX: tl.constexpr):
    """The 8 activation pairs of 2-bit word rows ``rows`` (R,), each (R, 1) int32 (half2), in pair order."""
    R: tl.constexpr = rows.shape[0]
    lo, hi = _xpairs(X_ptr, rows, KW, 2, EVEN, PTX)  # (R, 4): pairs 2a, 2a + 1
    l0, l1 = tl.split(tl.reshape(lo, (R, 2, 2)))  # a = 2·a1 + a0; l0: a0 = 0 (a = 0, 2)
    h0, h1 = tl.split(tl.reshape(hi, (R, 2, 2)))
    p0, p4 = tl.split(l0)
    p2, p6 = tl.split(l1)
    p1, p5 = tl.split(h0)
    p3, p7 = tl.split(h1)
    return (p0[:, None], p1[:, None], p2[:, None], p3[:, None], p4[:, None], p5[:, None], p6[:, None],
            p7[:, None])

@triton.jit
def _half_lanes(h):
    """int32 half2 bit patterns → (lo, hi) lanes as fp32."""
    lo = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi

@triton.jit
def _pair_mac(w, xp, zf, p: tl.constexpr, BITS: tl.constexpr):
    """One pair of ``dot_asm`` in pure Triton, prescaled as it is (exact in fp32):
    (x[p]·(q[p] − z) + x[p + P/2]·(q[p + P/2] − z))·2^−S, so the interpreter runs the kernel's 2^S rescale."""
    q_lo, q_hi = codes_of_pair(w, p, BITS)
    x_lo, x_hi = _half_lanes(xp)
    return (x_lo * (q_lo - zf) + x_hi * (q_hi - zf)) / (RESCALE4 if BITS == 4 else RESCALE2)


@triton.jit
def _dot4_emul(w_e, w_o, zf, e0, e1, e2, e3, o0, o1, o2, o3):
    acc = _pair_mac(w_e, e0, zf, 0, 4) + _pair_mac(w_e, e1, zf, 1, 4) + _pair_mac(w_e, e2, zf, 2, 4)
    acc += _pair_mac(w_e, e3, zf, 3, 4) + _pair_mac(w_o, o0, zf, 0, 4) + _pair_mac(w_o, o1, zf, 1, 4)
    return acc + _pair_mac(w_o, o2, zf, 2, 4) + _pair_mac(w_o, o3, zf, 3, 4)


@triton.jit
def _dot2_emul(w, zf, x0, x1, x2, x3, x4, x5, x6, x7):
    acc = _pair_mac(w, x0, zf, 0, 2) + _pair_mac(w, x1, zf, 1, 2) + _pair_mac(w, x2, zf, 2, 2)
    acc += _pair_mac(w, x3, zf, 3, 2) + _pair_mac(w, x4, zf, 4, 2) + _pair_mac(w, x5, zf, 5, 2)
    return acc + _pair_mac(w, x6, zf, 6, 2) + _pair_mac(w, x7, zf, 7, 2)


@triton.jit
def _dot_words_half2(X_ptr, w_e, w_o, rows_e, KW, zc, z, BITS: tl.constexpr, EVEN: tl.constexpr,
                     PTX: tl.constexpr):
    """Σ x·(q − z) over the word rows ``rows_e`` (R,) and ``rows_e + 1`` → (R, BLOCK_N) fp32 (``dot_asm``).

    PTX = 0 (the interpreter) computes the same pairs from the same activation-pair bit patterns in fp32
    (``_pair_mac``), so the CPU tests check the pairing and order that the PTX relies on."""
    if BITS == 4:
        e0, e1, e2, e3 = _pairs4(X_ptr, rows_e, KW, EVEN, PTX)
        o0, o1, o2, o3 = _pairs4(X_ptr, rows_e + 1, KW, EVEN, PTX)
        if PTX:
            z0, z1 = zc
            return tl.inline_asm_elementwise(DOT4_ASM, DOT4_CON, [w_e, w_o, z0, z1, e0, e1, e2, e3, o0, o1, o2, o3],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return _dot4_emul(w_e, w_o, z.to(tl.float32), e0, e1, e2, e3, o0, o1, o2, o3)
    else:
        e0, e1, e2, e3, e4, e5, e6, e7 = _pairs2(X_ptr, rows_e, KW, EVEN, PTX)
        o0, o1, o2, o3, o4, o5, o6, o7 = _pairs2(X_ptr, rows_e + 1, KW, EVEN, PTX)
        if PTX:
            z0, z1, z2, z3 = zc
            return tl.inline_asm_elementwise(
                DOT2_ASM, DOT2_CON, [w_e, w_o, z0, z1, z2, z3, e0, e1, e2, e3, e4, e5, e6, e7,
                                       o0, o1, o2, o3, o4, o5, o6, o7], dtype=tl.float32, is_pure=True, pack=1)
        else:
            zf = z.to(tl.float32)
            return (_dot2_emul(w_e, zf, e0, e1, e2, e3, e4, e5, e6, e7)
                    + _dot2_emul(w_o, zf, o0, o1, o2, o3, o4, o5, o6, o7))


@triton.jit
def _dot_words_ref(x_ptr, w, rows, K, z, BITS: tl.constexpr):
    """Pure-Triton Σₚ x·(q − z) of word rows ``rows`` (R,): (R, BLOCK_N) words → (R, BLOCK_N) fp32.
    The interpreter's path and the one for bf16/fp32 activations."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    k = rows[:, None] * P + tl.arange(0, P)[None, :]  # (R, P)
    x = tl.load(x_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    shifts = (tl.arange(0, P) * BITS)[None, :, None].to(tl.uint32)  # (1, P, 1)
    q = ((w.to(tl.uint32, bitcast=True)[:, None, :] >> shifts) & MAXQ) | MAGIC  # (R, P, BLOCK_N): 2^23 + q
    qz = q.to(tl.float32, bitcast=True) - (z.to(tl.float32) + MAGIC_F)[:, None, :]  # z (1, BLOCK_N); q − z exact
    return tl.sum(x[:, :, None] * qz, axis=1)


@triton.jit
def _block_words(qw_ptr, rows_e, offs_n, mask_n, N, KW, EVEN: tl.constexpr):
    """The even and the odd word rows of a block: two (R, BLOCK_N) int32 tiles, rows ``rows_e`` and + 1."""
    ptr_e = qw_ptr + rows_e[:, None] * N + offs_n[None, :]  # (R, BLOCK_N)
    if EVEN:
        return tl.load(ptr_e, eviction_policy="evict_first"), tl.load(ptr_e + N, eviction_policy="evict_first")
    else:
        m_e = (rows_e < KW)[:, None] & mask_n[None, :]
        m_o = (rows_e + 1 < KW)[:, None] & mask_n[None, :]
        return (tl.load(ptr_e, mask=m_e, other=0, eviction_policy="evict_first"),
                tl.load(ptr_e + N, mask=m_o, other=0, eviction_policy="evict_first"))


@triton.jit(do_not_specialize=["epoch"])  # a new value every launch: never a compile key
def gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, epoch, N, K, M_BUCKET,
                BITS: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                SPLIT_K: tl.constexpr, HALF2: tl.constexpr, PTX: tl.constexpr, EVEN: tl.constexpr,
                STAGES: tl.constexpr):
    """out (1, N) = x (1, K) @ Ŵᵀ. Grid: (cdiv(N, BLOCK_N), SPLIT_K). GROUP = 0: per-channel; GROUP % BLOCK_K == 0.

    Split ``pid_k`` owns a contiguous run of K blocks. A block's BLOCK_K/P word rows are read as two
    (BLOCK_K/2P, BLOCK_N) tiles, the even rows and the odd rows, so that one ``dot_asm`` call takes two
    words of a column (16 4-bit or 32 2-bit products in half2) and its activation pairs are loaded and
    permuted once per row for all the thread's columns (HALF2: fp16 activations; PTX = 0 under the
    interpreter runs the same pairs in pure Triton). HALF2 = 0 (bf16/fp32 activations) runs
    ``_dot_words_ref`` instead. A block's sum is scaled by its group's scale in fp32. EVEN (K a
    multiple of BLOCK_K, N of BLOCK_N: every LLaMA layer) drops the bounds masks from the loop. STAGES:
    the loop's software-pipelining depth (``tl.range(num_stages=…)``: Triton's pipeliner leaves loads
    that feed no ``tl.dot`` alone unless asked, and a register double buffer is undone by ptxas, which
    sinks the early loads to the end of the loop body).

    SPLIT_K > 1 is deterministic: each split writes its fp32 partial to ``part_ptr`` (SPLIT_K, N); the
    last split of a column block to arrive (an acq_rel counter in ``cnt_ptr``, one int32 per column block,
    tagged with the launch's ``epoch`` so that a dead launch's count cannot leak into this one, reset to
    zero by that split: ``split_k_reduce``) sums the partials in split order and stores y.
    """
    P: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // P
    HALF: tl.constexpr = BLOCK_KW // 2
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    KW = K // P
    X_ptr = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)  # x as (K/2,) int32: 2 halves per word
    n_blocks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(n_blocks, SPLIT_K)
    b0 = pid_k * per_split
    b1 = tl.minimum(b0 + per_split, n_blocks)
    r2 = 2 * tl.arange(0, HALF)  # (HALF,): even word rows of a block
    # (1, BLOCK_N), declared contiguous in runs of 4 only, so that the fp16 scales and zeros are read in the
    # packed tiles' layout (4 columns a thread, one 128-bit word load a row) and need no layout conversion.
    n2 = tl.max_contiguous(offs_n, 4)[None, :]
    m2 = mask_n[None, :]
    acc = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    if GROUP == 0:
        z = tl.load(z_ptr + n2, mask=m2, other=0.0)
        zc = zeros_for(z, BITS, HALF2 and PTX, True)
    # Software pipelining: with STAGES > 1 Triton copies the next blocks' words and activations into shared
    # memory asynchronously (cp.async) while this block is computed (a plain range(): the loads would be
    # issued where ptxas puts them, at best a few hundred instructions ahead).
    for b in tl.range(b0, b1, num_stages=STAGES):
        rows_e = b * BLOCK_KW + r2  # (HALF,)
        w_e, w_o = _block_words(qw_ptr, rows_e, offs_n, mask_n, N, KW, EVEN)
        if GROUP != 0:
            g = (b * BLOCK_K) // GROUP
            z = tl.load(z_ptr + g * N + n2, mask=m2, other=0.0)
            zc = zeros_for(z, BITS, HALF2 and PTX, True)
        if HALF2:
            part = _dot_words_half2(X_ptr, w_e, w_o, rows_e, KW, zc, z, BITS, EVEN, PTX)
        else:
            part = _dot_words_ref(x_ptr, w_e, rows_e, K, z, BITS) + _dot_words_ref(x_ptr, w_o, rows_e + 1, K, z, BITS)
        if GROUP != 0:
            s = tl.load(s_ptr + g * N + n2, mask=m2, other=0.0).to(tl.float32)
            acc += tl.sum(part, axis=0, keep_dims=True) * s
        else:
            acc += tl.sum(part, axis=0, keep_dims=True)
    if GROUP == 0:
        acc *= tl.load(s_ptr + n2, mask=m2, other=0.0).to(tl.float32)
    if HALF2:  # the half2 sums are of (q − z)·2^−S (harness.packed.ptx.prescale_shift): undo it, exactly
        acc *= RESCALE4 if BITS == 4 else RESCALE2
    if SPLIT_K == 1:
        tl.store(out_ptr + n2, acc.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        split_k_reduce(acc, out_ptr + n2, part_ptr + n2, N, m2, cnt_ptr, pid_n, pid_k, epoch, SPLIT_K, PTX)


def configs() -> list[triton.Config]:
    """The GEMV's autotuning space: BLOCK_N = 8 or 4 columns × 32 lanes × warps. Each thread owns every
    word row of the block and 4 adjacent columns per 128-bit load; with 8 columns each activation pair
    serves twice as many weights. ``harness.packed.tuning`` keeps the 4-column ones for 4-bit only (2-bit:
    > 2.0 instructions per weight) and BLOCK_K = 256 only where it does not spill
    (``benchmarks/kernel_sass.py``)."""
    out = []
    for bn, bk, w in [(256, 128, 1), (512, 128, 2), (512, 256, 2), (1024, 128, 4), (256, 128, 2), (512, 128, 4)]:
        for split_k in (1, 2, 4, 8, 16):
            out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k, "STAGES": 3}, num_warps=w,
                                     num_stages=3))
    return out


# EVEN: the loop runs without bounds masks when the blocks tile K and N exactly (decided per config).
gemv_even = triton.heuristics({"EVEN": lambda a: a["K"] % a["BLOCK_K"] == 0 and a["N"] % a["BLOCK_N"] == 0})(
    gemv_kernel)
