"""Triton helpers shared by the GEMV (``harness.packed.gemv``) and GEMM (``harness.packed.gemm``) kernels:
the fp32 magic number, the PTX of ``harness.packed.ptx`` as constexprs, zero-point constants, code
extraction and the deterministic split-K epilogue.
"""
from __future__ import annotations

import triton
import triton.language as tl

from harness.packed import ptx

MAGIC = tl.constexpr(0x4B000000)  # fp32 bits of 2^23: OR-ing an integer < 2^23 into the mantissa gives 2^23 + q
MAGIC_F = tl.constexpr(8388608.0)

UNPACK4_ASM, UNPACK4_CON = (tl.constexpr(v) for v in ptx.unpack_asm(4))
UNPACK2_ASM, UNPACK2_CON = (tl.constexpr(v) for v in ptx.unpack_asm(2))
DOT4_ASM, DOT4_CON = (tl.constexpr(v) for v in ptx.dot_asm(4))
DOT2_ASM, DOT2_CON = (tl.constexpr(v) for v in ptx.dot_asm(2))
ZERO4_ASM = tl.constexpr(ptx.zero_asm(4)[0])
ZERO2_ASM = tl.constexpr(ptx.zero_asm(2)[0])
# The GEMV's dot_asm works on (q − z)·2^−S (S = ptx.prescale_shift: no fp16 overflow for any activation);
# its zero constants carry the same 2^−S, and the kernel multiplies its fp32 sums by 2^S (exact).
RESCALE4 = tl.constexpr(float(2 ** ptx.prescale_shift(4)))  # 2^S: 256.0
RESCALE2 = tl.constexpr(float(2 ** ptx.prescale_shift(2)))  # 128.0
ZERO4S_ASM = tl.constexpr(ptx.zero_asm(4, ptx.prescale_shift(4))[0])
ZERO2S_ASM = tl.constexpr(ptx.zero_asm(2, ptx.prescale_shift(2))[0])
ZERO4_CON, ZERO2_CON = tl.constexpr(ptx.zero_asm(4)[1]), tl.constexpr(ptx.zero_asm(2)[1])
PRMT_ASM = tl.constexpr(ptx.PRMT_ASM)


@triton.jit
def _zero_consts(z, BITS: tl.constexpr, PRESCALED: tl.constexpr):
    """Zero points z (1, BLOCK_N) fp16 → the F = 8/b fix-up constants Zᵢ = −(1024·2^{−b·i} + z)·2^−S, each
    (1, BLOCK_N) int32 holding the fp16 value in both lanes (``dot_asm``; S = 0 unless PRESCALED, the
    GEMV). One ``prmt`` + F ``sub.f16x2`` / ``fma.f16x2``."""
    zb = z.to(tl.int16, bitcast=True)  # a 16-bit operand: ptxas packs it into both lanes with one prmt
    if BITS == 4:
        z0, z1 = tl.inline_asm_elementwise(ZERO4S_ASM if PRESCALED else ZERO4_ASM, ZERO4_CON, [zb],
                                           dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
        return z0, z1
    else:
        z0, z1, z2, z3 = tl.inline_asm_elementwise(ZERO2S_ASM if PRESCALED else ZERO2_ASM, ZERO2_CON, [zb],
                                                   dtype=(tl.int32,) * 4, is_pure=True, pack=1)
        return z0, z1, z2, z3


@triton.jit
def zeros_for(z, BITS: tl.constexpr, PTX: tl.constexpr, PRESCALED: tl.constexpr = False):
    """The zero constants the PTX needs (``_zero_consts``), or z itself for the pure-Triton paths."""
    if PTX:
        return _zero_consts(z, BITS, PRESCALED)
    else:
        return z


@triton.jit
def codes_of_pair(w, p: tl.constexpr, BITS: tl.constexpr):
    """The two codes of pair p of words w, (k = p, k = p + P/2), as fp32 (the interpreter's ``lop3``)."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    wu = w.to(tl.uint32, bitcast=True)
    return ((wu >> (BITS * p)) & MAXQ).to(tl.float32), ((wu >> (BITS * (p + P // 2))) & MAXQ).to(tl.float32)


COUNT_BITS = 8  # a split-K counter word: (epoch << 8) | arrivals (SPLIT_K ≤ 255)
EPOCH_UNIT = tl.constexpr(1 << COUNT_BITS)
COUNT_MASK = tl.constexpr((1 << COUNT_BITS) - 1)
ARRIVE_ASM, ARRIVE_CON = (tl.constexpr(v) for v in ptx.arrive_asm(COUNT_BITS))


@triton.jit
def split_k_reduce(acc, out_ptrs, part_ptrs, split_stride, mask, cnt_ptr, tile, pid_k, epoch, SPLIT_K: tl.constexpr,
                   PTX: tl.constexpr = False):
    """Deterministic split-K epilogue: store this split's fp32 partial ``acc`` at ``part_ptrs`` (split
    ``pid_k`` at ``pid_k · split_stride``); the last split of output tile ``tile`` to arrive sums all
    partials in split order, stores them at ``out_ptrs`` and resets the counter, so no memset precedes
    the next launch. The sum's order is fixed, so the result is bitwise the same whichever split arrives
    last.

    The counter ``cnt_ptr[tile]`` is epoch-tagged so that a launch that died half-way cannot poison a
    later one: it holds ``(epoch << COUNT_BITS) | arrivals``, and ``epoch`` (> 0) grows with every launch
    on the counters (``harness.packed.kernels``). Each split first raises the word to at least
    ``epoch << COUNT_BITS`` (``atomic_max``: a stale count left by an earlier, dead launch carries a
    smaller epoch and is wiped; an arrival of this launch is already above it and is kept), then counts
    itself in (acq_rel ``atomic_add``, same thread and address, so after the max). The arrivals are the
    low bits; the last one resets the word to 0 (relaxed: no other split touches it again in this launch).
    PTX (the GEMV's half2 path) does the max and the count in one inline-PTX call (``ptx.arrive_asm``): the same
    steps from thread 0 found by ``%tid.x`` itself. Triton 3.6 predicates scalar atomics on a "lane 0 of warp 0"
    test built from the layout, which ptxas cannot see as one lane, so it aggregates each atomic over the warp
    (vote, redux, popc, shfl: about 15 SASS instructions in every CTA)."""
    tl.store(part_ptrs + pid_k * split_stride, acc, mask=mask)
    if PTX:  # the same steps in one inline-PTX call (``ptx.arrive_asm``): no warp-aggregated atomics
        last = tl.inline_asm_elementwise(ARRIVE_ASM, ARRIVE_CON, [cnt_ptr + tile, epoch * EPOCH_UNIT, SPLIT_K - 1],
                                         dtype=tl.int32, is_pure=False, pack=1) != 0
    else:
        tl.debug_barrier()  # every thread's partial is written before the (single-thread) release below
        tl.atomic_max(cnt_ptr + tile, epoch * EPOCH_UNIT, sem="relaxed", scope="gpu")
        last = (tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu") & COUNT_MASK) == SPLIT_K - 1
    if last:
        y = tl.load(part_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        for k in tl.static_range(1, SPLIT_K):
            y += tl.load(part_ptrs + k * split_stride, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)
        # ready for the next launch. Relaxed: every split of this tile has counted itself in, so nothing else
        # touches the word in this launch, and the next launch is ordered after this one by the stream.
        tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")
