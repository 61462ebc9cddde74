"""Triton fused dequantize + matmul for the packed 2/4-bit format of ``harness.packed.packing``.

``y (M, N) = x (M, K) @ Ŵᵀ`` with Ŵ (N, K) dequantized on the fly from ``qweight`` (K/P, N) int32,
``scales``/``zeros`` (G, N) fp16. Two kernels:

- ``_gemv_kernel`` (M = 1, decode): memory-bound, so its budget is instructions per weight. Each program
  owns BLOCK_N columns (8 or 4 adjacent ones per thread, one 128-bit load per word row) and a
  contiguous run of K blocks (split-K over grid axis 1). For fp16 activations (HALF2) one inline-PTX
  call (``dot_asm``) takes two words of a column: ``lop3`` ORs two codes (k = p and k = p + P/2, one per
  16-bit lane) into the mantissa of fp16 1024 at once, one ``fma.f16x2`` makes the exact integers q − z,
  one more multiplies them by the activation pair into a half2 sum of 16 (4-bit) / 32 (2-bit) products,
  converted to fp32 once per call. The activation pairs (x[p], x[p + P/2]) are loaded with vector loads
  and ``prmt``-ed once per word row and thread, shared by all of the thread's columns. A K block's sum
  is scaled by its group's scale in fp32. bf16/fp32 activations run the fp32 path (``_dot_words_ref``).
- ``_gemm_kernel`` (M ≥ 2): tiles (BLOCK_M, BLOCK_N) with ``tl.dot`` (tensor cores); each packed tile
  is loaded once and unpacked per register (fp16: ``unpack_asm``, the same lop3 + fix-up pairs, joined
  into natural k order; else shifts by per-register constants and the fp32 magic number); the scale
  multiplies each block's fp32 product; grouped program order for L2 reuse of the activation rows.

Split-K is deterministic in both: each split stores an fp32 partial, and the last split of an output
tile to arrive (an acq_rel counter per tile) sums the partials in split order, writes y and resets its
counter, so no memset kernel runs and repeated calls are bitwise identical. The counters live in a
per-(device, stream) cache (``_counters``), zeroed once.

Precision of the half2 paths: q − z is exact; products and partial sums of 16 / 32 products are fp16
(|partial| < 65504, relative rounding ≈ 2⁻¹¹ per add), then fp32. ``HARNESS_HALF2=0`` switches them off.

Static cost (``benchmarks/kernel_sass.py``: sm_90 SASS without a GPU, triton 3.9): the GEMV's main
loop costs 2.1–2.3 instructions per 4-bit weight and 1.85–1.98 per 2-bit weight over the configuration
space (was 5.6–7.7; 8.5–9.8 at the old default), with no spills; ``tests/test_kernel_sass.py`` holds
the default to ≤ 3.5 / ≤ 2.0. Speed on a GPU is measured by ``benchmarks/kernels.py``
(``scripts/gpu_check.sh``).

Autotuning (``triton.autotune``, results cached on disk by Triton, no pre-hooks) covers a pruned space
(``_prune``) keyed on (M bucket, N, K, bits, group size); a configuration shipped in
``tuned_configs.json`` for this GPU and shape is used without tuning. Tuning is skipped under
``TRITON_INTERPRET=1`` (CPU tests, where the PTX is replaced by the same arithmetic in pure Triton:
PTX = 0) and with ``HARNESS_AUTOTUNE=0``, where a fixed default configuration runs.

This is the only module that imports Triton. The public entry is the ``torch.library`` op
``harness::quant_matmul`` in ``harness.packed.ops``, which imports this module only when a kernel
runs (CUDA tensors, or the interpreter on CPU).
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from harness.packed.ops import interpreting
from harness.packed.packing import codes_per_word

MAGIC = tl.constexpr(0x4B000000)  # fp32 bits of 2^23: OR-ing an integer < 2^23 into the mantissa gives 2^23 + q
MAGIC_F = tl.constexpr(8388608.0)


def autotune_enabled() -> bool:
    return not interpreting() and os.environ.get("HARNESS_AUTOTUNE", "1") != "0"


def _f16x2(v: float) -> str:
    """A PTX b32 immediate holding ``v`` in both fp16 lanes."""
    h = struct.unpack("<H", struct.pack("<e", v))[0]
    return f"0x{h:04X}{h:04X}"


def dot_asm(bits: int, rows: int = 2) -> tuple[str, str]:
    """PTX for ``Σ x·(q − z)`` over ``rows`` packed words of one column, in packed half2 arithmetic.

    Operands: ``$0`` f32 result; ``$1 … $rows`` the words; then F = 8/b zero constants
    ``Zᵢ = −(1024·2^{−b·i} + z)`` in both lanes; then, per word, P/2 activation pairs ``xₚ`` (half2).
    Per word and per byte offset s ∈ {0, 1} (the word, then the word shifted right by 8) and field
    i < F, one ``lop3`` ORs the field of each 16-bit lane into the mantissa of fp16 1024::

        lane:            hi (bits 31-16)                  lo (bits 15-0)
        4-bit, s=0, i=0: q[p+4] at bits 16-19             q[p] at bits 0-3     → 1024 + q  (p = 2s + i)
        4-bit, s=0, i=1: q[p+4] at bits 20-23             q[p] at bits 4-7     → 1024 + 16q
        2-bit:           q[p+8] at bits 16+2i-17+2i       q[p] at bits 2i-2i+1 → 1024 + 4^i q  (p = 4s + i)

    one ``fma.f16x2`` with 2^{−b·i} and ``Zᵢ`` gives q − z exactly (small integers), and one more
    multiplies by ``xₚ = (x[p], x[p + P/2])`` into a half2 accumulator. The two lanes are summed in fp32.
    Per word: 1 shift + P/2 lop3 + P/2 fix-ups + P/2 FMA; per call 2 conversions and an add.
    """
    P = 32 // bits
    F = 8 // bits
    pairs = P // 2
    lines = ["{", ".reg .b32 t, h, acc, sc;", ".reg .b16 l16, h16;", ".reg .f32 lo, hi;"]
    first = True
    for r in range(rows):
        for p, fixup in _pair_lines(bits, f"${1 + r}", "h", first_zero=1 + rows):
            lines += fixup
            x = f"${1 + rows + F + r * pairs + p}"
            lines.append(f"mul.f16x2 acc, h, {x};" if first else f"fma.rn.f16x2 acc, h, {x}, acc;")
            first = False
    lines += ["mov.b32 {l16, h16}, acc;", "cvt.f32.f16 lo, l16;", "cvt.f32.f16 hi, h16;", "add.f32 $0, lo, hi;", "}"]
    constraints = ",".join(["=r"] + ["r"] * (rows + F + rows * pairs))
    return "\n".join(lines), constraints


def _pair_lines(bits: int, word: str, dest, first_zero: int):
    """The PTX that turns one packed word into its P/2 half2 pairs of q − z, pair by pair: yields
    ``(p, lines)``, the pair's lines leaving it in ``dest`` (a register name, or ``dest(p)``).

    Byte offset s ∈ {0, 1} (the word, then the word shifted right by 8 into ``t``), field i < F: one
    ``lop3`` ORs the two codes (one per 16-bit lane) into the mantissa of fp16 1024, then
    ``+ Zᵢ`` (i = 0) or ``· 2^{−b·i} + Zᵢ`` gives the exact q − z; ``Zᵢ`` is operand ``$(first_zero + i)``."""
    F = 8 // bits
    field = (1 << bits) - 1
    for s in range(2):
        src = word
        lines: list[str] = []
        if s:
            lines.append(f"shr.u32 t, {word}, 8;")
            src = "t"
        for i in range(F):
            p = F * s + i
            out = dest(p) if callable(dest) else dest
            mask = (field << (bits * i)) * 0x00010001
            z = f"${first_zero + i}"
            lines.append(f"lop3.b32 h, {src}, 0x{mask:08X}, 0x64006400, 0xEA;")
            if i == 0:
                lines.append(f"add.f16x2 {out}, h, {z};")
            else:
                lines += [f"mov.b32 sc, {_f16x2(2.0 ** (-bits * i))};", f"fma.rn.f16x2 {out}, h, sc, {z};"]
            yield p, lines
            lines = []


def zero_asm(bits: int) -> tuple[str, str]:
    """PTX: zero point (fp16 bits in an int32) → the F = 8/b constants ``Zᵢ = −(1024·2^{−b·i} + z)`` of
    ``dot_asm``, each in both fp16 lanes (exact: small integers and powers of two)."""
    F = 8 // bits
    lines = ["{", ".reg .b32 zz, c;", f"prmt.b32 zz, ${F}, ${F}, 0x1010;"]
    for i in range(F):
        lines += [f"mov.b32 c, {_f16x2(-1024.0 * 2.0 ** (-bits * i))};", f"sub.f16x2 ${i}, c, zz;"]
    lines.append("}")
    return "\n".join(lines), ",".join(["=r"] * F + ["r"])


def unpack_asm(bits: int) -> tuple[str, str]:
    """PTX: one packed word → its P/2 pairs of q − z as half2 (``$0 … $(P/2 − 1)``), from ``$(P/2)`` = the
    word and the F zero constants of ``zero_asm``: ``dot_asm``'s lop3 + fix-up without the multiply.
    Pair p holds (k = p, k = p + P/2) of the word in its (lo, hi) lanes."""
    P = 32 // bits
    F = 8 // bits
    lines = ["{", ".reg .b32 t, h, sc;"]
    for _, fixup in _pair_lines(bits, f"${P // 2}", lambda p: f"${p}", first_zero=P // 2 + 1):
        lines += fixup
    lines.append("}")
    return "\n".join(lines), ",".join(["=r"] * (P // 2) + ["r"] * (1 + F))


_UNPACK4_ASM, _UNPACK4_CON = (tl.constexpr(v) for v in unpack_asm(4))
_UNPACK2_ASM, _UNPACK2_CON = (tl.constexpr(v) for v in unpack_asm(2))
_DOT4_ASM, _DOT4_CON = (tl.constexpr(v) for v in dot_asm(4))
_DOT2_ASM, _DOT2_CON = (tl.constexpr(v) for v in dot_asm(2))
_ZERO4_ASM = tl.constexpr(zero_asm(4)[0])
_ZERO2_ASM = tl.constexpr(zero_asm(2)[0])


_PRMT_ASM = tl.constexpr("prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $2, $3, 0x7632;")


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
        return tl.inline_asm_elementwise(_PRMT_ASM, "=r,=r,r,r", [xa, xb], dtype=(tl.int32, tl.int32), is_pure=True,
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
def _zero_consts(z, BITS: tl.constexpr):
    """Zero points z (1, BLOCK_N) fp16 → the F = 8/b fix-up constants Zᵢ = −(1024·2^{−b·i} + z), each
    (1, BLOCK_N) int32 holding the fp16 value in both lanes (``dot_asm``). One ``prmt`` + F ``sub.f16x2``."""
    zb = z.to(tl.int16, bitcast=True).to(tl.int32)
    if BITS == 4:
        z0, z1 = tl.inline_asm_elementwise(_ZERO4_ASM, "=r,=r,r", [zb], dtype=(tl.int32, tl.int32), is_pure=True,
                                           pack=1)
        return z0, z1
    else:
        z0, z1, z2, z3 = tl.inline_asm_elementwise(_ZERO2_ASM, "=r,=r,=r,=r,r", [zb], dtype=(tl.int32,) * 4,
                                                   is_pure=True, pack=1)
        return z0, z1, z2, z3


@triton.jit
def _zeros_for(z, BITS: tl.constexpr, PTX: tl.constexpr):
    """The zero constants the PTX needs (``_zero_consts``), or z itself for the pure-Triton paths."""
    if PTX:
        return _zero_consts(z, BITS)
    else:
        return z


@triton.jit
def _half_lanes(h):
    """int32 half2 bit patterns → (lo, hi) lanes as fp32."""
    lo = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    hi = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _codes_of_pair(w, p: tl.constexpr, BITS: tl.constexpr):
    """The two codes of pair p of words w, (k = p, k = p + P/2), as fp32 (the interpreter's ``lop3``)."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    wu = w.to(tl.uint32, bitcast=True)
    return ((wu >> (BITS * p)) & MAXQ).to(tl.float32), ((wu >> (BITS * (p + P // 2))) & MAXQ).to(tl.float32)


@triton.jit
def _pair_mac(w, xp, zf, p: tl.constexpr, BITS: tl.constexpr):
    """One pair of ``dot_asm`` in pure Triton: x[p]·(q[p] − z) + x[p + P/2]·(q[p + P/2] − z), fp32."""
    q_lo, q_hi = _codes_of_pair(w, p, BITS)
    x_lo, x_hi = _half_lanes(xp)
    return x_lo * (q_lo - zf) + x_hi * (q_hi - zf)


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
            return tl.inline_asm_elementwise(_DOT4_ASM, _DOT4_CON, [w_e, w_o, z0, z1, e0, e1, e2, e3, o0, o1, o2, o3],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            return _dot4_emul(w_e, w_o, z.to(tl.float32), e0, e1, e2, e3, o0, o1, o2, o3)
    else:
        e0, e1, e2, e3, e4, e5, e6, e7 = _pairs2(X_ptr, rows_e, KW, EVEN, PTX)
        o0, o1, o2, o3, o4, o5, o6, o7 = _pairs2(X_ptr, rows_e + 1, KW, EVEN, PTX)
        if PTX:
            z0, z1, z2, z3 = zc
            return tl.inline_asm_elementwise(
                _DOT2_ASM, _DOT2_CON, [w_e, w_o, z0, z1, z2, z3, e0, e1, e2, e3, e4, e5, e6, e7,
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


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, N, K, M_BUCKET,
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
    zero before the launch and reset to zero by that split) sums the partials in split order and stores y.
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
        zc = _zeros_for(z, BITS, HALF2 and PTX)
    # Software pipelining: with STAGES > 1 Triton copies the next blocks' words and activations into shared
    # memory asynchronously (cp.async) while this block is computed (a plain range(): the loads would be
    # issued where ptxas puts them, at best a few hundred instructions ahead).
    for b in tl.range(b0, b1, num_stages=STAGES):
        rows_e = b * BLOCK_KW + r2  # (HALF,)
        w_e, w_o = _block_words(qw_ptr, rows_e, offs_n, mask_n, N, KW, EVEN)
        if GROUP != 0:
            g = (b * BLOCK_K) // GROUP
            z = tl.load(z_ptr + g * N + n2, mask=m2, other=0.0)
            zc = _zeros_for(z, BITS, HALF2 and PTX)
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
    if SPLIT_K == 1:
        tl.store(out_ptr + n2, acc.to(out_ptr.dtype.element_ty), mask=m2)
    else:
        _split_k_reduce(acc, out_ptr + n2, part_ptr + n2, N, m2, cnt_ptr, pid_n, pid_k, SPLIT_K)


@triton.jit
def _split_k_reduce(acc, out_ptrs, part_ptrs, split_stride, mask, cnt_ptr, tile, pid_k, SPLIT_K: tl.constexpr):
    """Deterministic split-K epilogue: store this split's fp32 partial ``acc`` at ``part_ptrs`` (split
    ``pid_k`` at ``pid_k · split_stride``); the last split of output tile ``tile`` to arrive (an acq_rel
    counter ``cnt_ptr[tile]``, zero before the launch) sums all partials in split order, stores them at
    ``out_ptrs`` and resets the counter to zero, so no memset precedes the next launch. The sum's order
    is fixed, so the result is bitwise the same whichever split arrives last."""
    tl.store(part_ptrs + pid_k * split_stride, acc, mask=mask)
    tl.debug_barrier()  # every thread's partial is written before the (single-thread) release below
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLIT_K - 1:
        y = tl.load(part_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        for k in tl.static_range(1, SPLIT_K):
            y += tl.load(part_ptrs + k * split_stride, mask=mask, other=0.0, cache_modifier=".cg")
        tl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)
        tl.atomic_xchg(cnt_ptr + tile, 0)  # ready for the next launch


@triton.jit
def _lanes(h):
    """int32 half2 bit patterns → (lo, hi) fp16 tensors of the same shape."""
    lo = h.to(tl.int16).to(tl.float16, bitcast=True)
    hi = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return tl.join(lo, hi)  # (..., 2): [a] = lane a


@triton.jit
def _pair_bits(w, zf, p: tl.constexpr, BITS: tl.constexpr):
    """Pure Triton: ``unpack_asm``'s pair p of words w, fp16 (q − z) of k = p (lo) and k = p + P/2 (hi)."""
    q_lo, q_hi = _codes_of_pair(w, p, BITS)
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
            h0, h1, h2, h3 = tl.inline_asm_elementwise(_UNPACK4_ASM, _UNPACK4_CON, [words, z0, z1],
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
                _UNPACK2_ASM, _UNPACK2_CON, [words, z0, z1, z2, z3], dtype=(tl.int32,) * 8, is_pure=True, pack=1)
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


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, part_ptr, cnt_ptr, M, N, K, stride_xm, stride_om, M_BUCKET,
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
    K blocks per split) uses the deterministic epilogue ``_split_k_reduce``.

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
        zc = _zeros_for(z, BITS, HALF2 and PTX)
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
            zc = _zeros_for(z, BITS, HALF2 and PTX)
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
        _split_k_reduce(acc, out_ptrs, part_ptr + offs_m[:, None] * N + offs_n[None, :], M * N, mask, cnt_ptr,
                        pid, pid_k, SPLIT_K)


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration (``block_m`` is ignored by the GEMV kernel)."""

    block_n: int
    block_k: int
    split_k: int = 1
    block_m: int = 16
    num_warps: int = 4
    num_stages: int = 2

    def meta(self, gemv: bool) -> dict:
        out = {"BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "SPLIT_K": self.split_k}
        if gemv:
            out["STAGES"] = self.num_stages
        else:
            out.update(BLOCK_M=self.block_m, GROUP_M=8)
        return out


DEFAULT_GEMV = KernelConfig(block_n=512, block_k=128, split_k=8, num_warps=2, num_stages=3)
DEFAULT_GEMM = KernelConfig(block_n=64, block_k=64, split_k=1, block_m=32, num_warps=4, num_stages=2)
MAX_SPLIT_K = 16  # the largest split of the configuration spaces: sizes the fp32 partials


def _gemv_configs() -> list[triton.Config]:
    """GEMV space: BLOCK_N = 8 or 4 columns × 32 lanes × warps. Each thread owns every word row of the
    block and 4 adjacent columns per 128-bit load; with 8 columns each activation pair serves twice as
    many weights. ``_prune`` keeps the 4-column ones for 4-bit only (2-bit: > 2.0 instructions per
    weight) and BLOCK_K = 256 only where it does not spill (``benchmarks/kernel_sass.py``)."""
    out = []
    for bn, bk, w in [(256, 128, 1), (512, 128, 2), (512, 256, 2), (1024, 128, 4), (256, 128, 2), (512, 128, 4)]:
        for split_k in (1, 2, 4, 8, 16):
            out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k, "STAGES": 3}, num_warps=w,
                                     num_stages=3))
    return out


def _gemm_configs() -> list[triton.Config]:
    out = []
    for bm, bn, bk, w, stages in [(16, 64, 64, 4, 3), (16, 128, 64, 4, 4), (32, 64, 64, 4, 4), (32, 128, 64, 4, 3),
                                  (64, 128, 64, 4, 3), (64, 256, 32, 8, 3), (128, 128, 32, 8, 3),
                                  (128, 128, 64, 8, 3)]:  # (128, 256, 32, 8, 3) spills (kernel_sass.py)
        for split_k in (1, 2, 4):
            out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k,
                                      "GROUP_M": 8}, num_warps=w, num_stages=stages))
    return out


def _prune(configs, named_args, **kwargs):
    """Fit the configs to the problem: BLOCK_K clamped to the group size (a K block never straddles a
    group), no tile far wider than N, split-K only while each split keeps at least two K blocks and
    the grid without it would not fill a GPU of 132 SMs, BLOCK_M near M (no split-K for large M).
    Duplicates after clamping are dropped."""
    K, N, group = named_args["K"], named_args["N"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    m_bucket = named_args["M_BUCKET"]
    keep, seen = [], set()
    for c in configs:
        kw = dict(c.kwargs)
        if "BLOCK_M" not in kw and kwargs.get("BITS") == 2 and kw["BLOCK_N"] == 128 * c.num_warps:
            continue  # 4 columns a thread: the 2-bit GEMV would exceed 2.0 instructions per weight
        if group and kw["BLOCK_K"] > group:
            kw["BLOCK_K"] = group
        bk, bn, sk, bm = kw["BLOCK_K"], kw["BLOCK_N"], kw["SPLIT_K"], kw.get("BLOCK_M", 1)
        tiles = triton.cdiv(N, bn) * triton.cdiv(m_bucket, bm)
        if bn > max(32, triton.next_power_of_2(N)) or (sk > 1 and (sk * bk * 2 > K or tiles >= 264)):
            continue
        if "BLOCK_M" in kw and (bm > max(16, m_bucket) or (m_bucket >= 128 and (bm < 64 or sk > 1))):
            continue
        key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            keep.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    if not keep:  # a tiny problem: the smallest tile, no split
        c = min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs.get("BLOCK_M", 1), c.kwargs["SPLIT_K"]))
        kw = {**c.kwargs, "SPLIT_K": 1, "BLOCK_K": min(c.kwargs["BLOCK_K"], group or c.kwargs["BLOCK_K"])}
        keep = [triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages)]
    return keep


_KEY = ["M_BUCKET", "N", "K", "BITS", "GROUP"]
_PRUNE = {"early_config_prune": _prune}
# Best configs cached on disk by Triton (per triton version, GPU architecture, kernel source and key), so a
# process does not re-tune a shape another one tuned; ``cache_results`` exists from triton 3.2 on.
_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
# EVEN: the loop runs without bounds masks when the blocks tile K and N exactly (decided per config).
_gemv_even = triton.heuristics({"EVEN": lambda a: a["K"] % a["BLOCK_K"] == 0 and a["N"] % a["BLOCK_N"] == 0})(
    _gemv_kernel)
_gemv_tuned = triton.autotune(configs=_gemv_configs(), key=_KEY, prune_configs_by=_PRUNE, **_CACHE)(_gemv_even)
_gemm_tuned = triton.autotune(configs=_gemm_configs(), key=_KEY, prune_configs_by=_PRUNE, **_CACHE)(_gemm_kernel)


def m_bucket(M: int) -> int:
    """Autotune bucket of the row count: 1, 2, 4, ..., 256 (one tuning per bucket, not per M)."""
    return min(triton.next_power_of_2(max(M, 1)), 256)


def _fit(config: KernelConfig, group: int) -> KernelConfig:
    """A fixed config adjusted so that a K block stays inside one group."""
    if group and config.block_k > group:
        return KernelConfig(config.block_n, group, config.split_k, config.block_m, config.num_warps,
                            config.num_stages)
    return config


TUNED_TABLE = Path(__file__).with_name("tuned_configs.json")  # shipped best configs, measured on GPUs


@functools.cache
def _shipped(path: str = str(TUNED_TABLE)) -> dict:
    """The shipped table: (device name, kernel, M bucket, N, K, bits, group, dtype) → KernelConfig."""
    try:
        entries = json.loads(Path(path).read_text()).get("configs", [])
    except (OSError, ValueError):
        return {}
    return {(e["device"], e["kernel"], e["m_bucket"], e["N"], e["K"], e["bits"], e["group"], e["dtype"]):
            KernelConfig(**e["config"]) for e in entries}


def shipped_config(gemv: bool, x: torch.Tensor, N: int, K: int, bits: int, group: int) -> KernelConfig | None:
    """A configuration tuned on this GPU model and shipped in ``tuned_configs.json``, if there is one."""
    if x.device.type != "cuda":
        return None
    key = (torch.cuda.get_device_name(x.device), "gemv" if gemv else "gemm", m_bucket(x.shape[0]), N, K, bits,
           group, str(x.dtype).removeprefix("torch."))
    return _shipped().get(key)


def export_tuned(device_name: str) -> list[dict]:
    """The autotuners' choices of this process as ``tuned_configs.json`` entries (to ship once measured)."""
    out = []
    for kernel, tuner in (("gemv", _gemv_tuned), ("gemm", _gemm_tuned)):
        for key, cfg in getattr(tuner, "cache", {}).items():
            mb, N, K, bits, group, x_dtype = key[0], key[1], key[2], key[3], key[4], key[5]
            kw = cfg.kwargs
            out.append({"device": device_name, "kernel": kernel, "m_bucket": mb, "N": N, "K": K, "bits": bits,
                        "group": group, "dtype": str(x_dtype).removeprefix("torch."),
                        "config": {"block_n": kw["BLOCK_N"], "block_k": kw["BLOCK_K"], "split_k": kw["SPLIT_K"],
                                   "block_m": kw.get("BLOCK_M", 16), "num_warps": cfg.num_warps,
                                   "num_stages": cfg.num_stages}})
    return out


_COUNTERS: dict[tuple, torch.Tensor] = {}  # (device, stream) → zeroed int32 split-K arrival counters


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """At least ``n`` int32 split-K counters for the current stream of ``device``, zero between launches
    (each launch leaves them at zero): allocated and zeroed once, not per call. One set per stream, so
    concurrent launches on two streams never share a counter."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (str(device), stream)
    cnt = _COUNTERS.get(key)
    if cnt is None or cnt.numel() < n:
        cnt = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return cnt


def half2_enabled(x: torch.Tensor) -> bool:
    """The packed-half2 paths (fp16 pairs of codes; inline PTX when compiled): fp16 activations whose
    int32 view is aligned, unless switched off with ``HARNESS_HALF2=0`` (then the fp32 paths run)."""
    return x.dtype == torch.float16 and x.data_ptr() % 4 == 0 and os.environ.get("HARNESS_HALF2", "1") != "0"


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
           group_size: int, config: KernelConfig | None = None) -> torch.Tensor:
    """Run the Triton kernel: x (M, K) fp16/bf16/fp32 → (M, N) in x's dtype.

    ``config=None`` autotunes (unless disabled, see the module docstring); a given config runs as is
    (tests use it to cover split-K, masking and several block shapes). Split-K partials go to an fp32
    workspace (SPLIT_K, M, N), uninitialised: every split writes its part before the last one reads.
    """
    M, K = x.shape
    N = qweight.shape[1]
    P = codes_per_word(bits)
    if qweight.shape[0] * P != K:
        raise ValueError(f"qweight {tuple(qweight.shape)} holds {qweight.shape[0] * P} inputs, x has {K}")
    group = 0 if group_size == -1 or group_size == K else group_size
    x = x.contiguous()
    gemv = M == 1 and (group == 0 or group >= 2 * P)  # a GEMV block holds two words a column (2-bit g16: GEMM)
    if config is None and autotune_enabled():
        config = shipped_config(gemv, x, N, K, bits, group)  # a shipped tuning beats tuning here
    tuned = config is None and autotune_enabled()
    cfg = _fit(config or (DEFAULT_GEMV if gemv else DEFAULT_GEMM), group)
    split = MAX_SPLIT_K if tuned else cfg.split_k
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    part = torch.empty((split, M, N) if split > 1 else (1,), device=x.device, dtype=torch.float32)
    cnt = _counters(x.device, triton.cdiv(M, 16) * triton.cdiv(N, 16))  # ≥ the tiles of any config
    common = dict(BITS=bits, GROUP=group)
    if gemv:
        common.update(HALF2=half2_enabled(x), PTX=not interpreting())
        if tuned:
            _gemv_tuned[lambda m: (triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, part, cnt, N, K, 1, **common)
        else:
            grid = (triton.cdiv(N, cfg.block_n), cfg.split_k)
            _gemv_even[grid](x, qweight, scales, zeros, out, part, cnt, N, K, 1, **common, **cfg.meta(True),
                               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        mb = m_bucket(M)
        common["DOT_F32"] = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreting())
        common.update(HALF2=half2_enabled(x), PTX=not interpreting())
        if tuned:
            _gemm_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, part, cnt, M, N, K, x.stride(0), out.stride(0), mb, **common)
        else:
            grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), cfg.split_k)
            _gemm_kernel[grid](x, qweight, scales, zeros, out, part, cnt, M, N, K, x.stride(0), out.stride(0), mb,
                               **common, **cfg.meta(False), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


_PTRS = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", out_ptr="*fp16")


def sass_configs(kernel: str, bits: int, group: int, quick: bool = False):
    """Configurations for ``benchmarks/kernel_sass.py``: (jit fn, arg types, constexprs, warps, stages, bits,
    group, K step of one main-loop iteration, BLOCK_N) for fp16 activations. ``quick``: the launch default only.
    Split-K changes only the epilogue, so the main loop is compiled at SPLIT_K = 1."""
    gemv = kernel == "gemv"
    if quick:
        d = _fit(DEFAULT_GEMV if gemv else DEFAULT_GEMM, group)
        space = [(d.block_m, d.block_n, d.block_k, d.num_warps, d.num_stages)]
    else:
        space = []
        for c in _gemv_configs() if gemv else _gemm_configs():
            kw = c.kwargs
            bk = min(kw["BLOCK_K"], group) if group else kw["BLOCK_K"]
            key = (kw.get("BLOCK_M", 1), kw["BLOCK_N"], bk, c.num_warps, c.num_stages)
            if key not in space:
                space.append(key)
    for bm, bn, bk, w, stages in space:
        ce = dict(BITS=bits, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1)
        if gemv:
            types = {**_PTRS, "part_ptr": "*fp32", "cnt_ptr": "*i32", "N": "i32", "K": "i32", "M_BUCKET": "i32"}
            ce.update(HALF2=True, PTX=True, EVEN=True, STAGES=stages)
            yield _gemv_kernel, types, ce, w, stages, bits, group, bk, bn
        else:
            types = {**_PTRS, "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32",
                     "M_BUCKET": "i32"}
            types.update(part_ptr="*fp32", cnt_ptr="*i32")
            ce.update(BLOCK_M=bm, GROUP_M=8, DOT_F32=False, HALF2=True, PTX=True)
            yield _gemm_kernel, types, ce, w, stages, bits, group, bk, bn
