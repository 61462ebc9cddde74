"""Inline-PTX builders of the packed kernels' half2 paths (strings only: no Triton import).

The fp16-activation paths turn packed codes into exact fp16 integers q − z with one ``lop3`` per pair of
codes (two 16-bit lanes at once) and a fix-up FMA, then multiply by activation pairs in half2. Each
builder returns ``(asm, constraints)`` for ``tl.inline_asm_elementwise``; ``tests/test_kernel_asm.py``
runs these very strings in a small emulator, and ``harness.packed.common`` wraps them as constexprs.

Precision and range: the GEMV's ``dot_asm`` makes (q − z)·2^−S exactly (S = ``prescale_shift``, an exact
power of two folded into the fix-up FMA at no instruction cost) so that its fp16 products and partial sums
of n = 16 (4-bit) / 32 (2-bit) products can never overflow, whatever the fp16 activations: with
|x| ≤ 65504 (the largest finite fp16) and |q − z| ≤ 2^b − 1, every exact partial sum is at most
65504·(2^b − 1)·n·2^−S (4-bit: 61410, 2-bit: 49128), and the n roundings on the way add at most n half-ulps
(≤ 16 each below 65536), still short of 65520, where fp16 rounds to inf. The kernel multiplies the fp32
result by 2^S (exact). The price is an absolute floor: a product below 2^−14 (scaled) is subnormal, so each
product carries an absolute error ≤ 2^−25·2^S (≈ 7.6·10⁻⁶ at S = 8) beside the usual relative 2⁻¹¹;
``tests/test_kernel_asm.py`` measures both (spikes of 6·10⁴, and activations of order 10⁻³).
The GEMM's ``unpack_asm`` feeds ``tl.dot`` (fp32 accumulation) and is not prescaled.
"""
from __future__ import annotations

import struct

# (x[p], x[p + P/2]) pairs from two int32 words of activation halves: low lanes (0x5410), high lanes (0x7632).
PRMT_ASM = "prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $2, $3, 0x7632;"


def arrive_asm(count_bits: int) -> tuple[str, str]:
    """The split-K arrival of ``harness.packed.common.split_k_reduce`` in one call run by every thread of the CTA
    (a 1-D block): after a barrier (every thread's partial is stored), thread 0 alone raises the tile's counter
    to the launch's epoch (``red.max``, relaxed) and counts itself in (``atom.add``, acq_rel), and ``bar.red.or``
    hands every thread the answer: $0 = 1 for the last split of the tile to arrive (arrivals before it, the low
    ``count_bits`` bits, = $3), else 0; $1: the counter's address; $2: epoch << count_bits; $3: SPLIT_K − 1.

    Thread 0 is ``%tid.x == 0`` itself, so ptxas issues each atomic once; a predicate it cannot see as one lane
    (Triton 3.6's, from the layout) makes it aggregate the atomics over the warp (about 15 SASS instructions)."""
    asm = f"""{{
.reg .pred p, q;
.reg .b32 t, c;
mov.u32 t, %tid.x;
setp.eq.u32 p, t, 0;
mov.u32 c, 0;
bar.sync 0;
@p red.relaxed.gpu.global.max.s32 [$1], $2;
@p atom.acq_rel.gpu.global.add.u32 c, [$1], 1;
and.b32 c, c, {(1 << count_bits) - 1};
setp.eq.and.u32 q, c, $3, p;
bar.red.or.pred q, 0, q;
selp.u32 $0, 1, 0, q;
}}"""
    return asm, "=r,l,r,r"


def _f16x2(v: float) -> str:
    """A PTX b32 immediate holding ``v`` in both fp16 lanes."""
    h = struct.unpack("<H", struct.pack("<e", v))[0]
    return f"0x{h:04X}{h:04X}"


FP16_MAX = 65504.0
FP16_INF_EDGE = 65520.0  # round-to-nearest gives inf from here on


def prescale_shift(bits: int, rows: int = 2) -> int:
    """S of ``dot_asm``: the least power of two with (2^b − 1)·n ≤ 2^S for its n = rows·32/b products, so
    that |Σ x·(q − z)·2^−S| ≤ 65504 for any fp16 x (4-bit, 2 words: S = 8; 2-bit: S = 7). Checked with
    the rounding margin (module docstring)."""
    n = rows * 32 // bits
    S = ((2**bits - 1) * n - 1).bit_length()
    bound = FP16_MAX * (2**bits - 1) * n / 2**S
    assert bound + n * 16 < FP16_INF_EDGE, (bits, rows, bound)  # n roundings of ≤ half an ulp (16) each
    return S


def dot_asm(bits: int, rows: int = 2, prescale: bool = True) -> tuple[str, str]:
    """PTX for ``2^−S · Σ x·(q − z)`` over ``rows`` packed words of one column, in packed half2 arithmetic
    (S = ``prescale_shift(bits, rows)``, or 0 with ``prescale=False``, kept to show the overflow in tests).

    Operands: ``$0`` f32 result; ``$1 … $rows`` the words; then F = 8/b zero constants
    ``Zᵢ = −(1024·2^{−b·i} + z)·2^{−S}`` in both lanes (``zero_asm(bits, S)``); then, per word, P/2
    activation pairs ``xₚ`` (half2).
    Per word and per byte offset s ∈ {0, 1} (the word, then the word shifted right by 8) and field
    i < F, one ``lop3`` ORs the field of each 16-bit lane into the mantissa of fp16 1024::

        lane:            hi (bits 31-16)                  lo (bits 15-0)
        4-bit, s=0, i=0: q[p+4] at bits 16-19             q[p] at bits 0-3     → 1024 + q  (p = 2s + i)
        4-bit, s=0, i=1: q[p+4] at bits 20-23             q[p] at bits 4-7     → 1024 + 16q
        2-bit:           q[p+8] at bits 16+2i-17+2i       q[p] at bits 2i-2i+1 → 1024 + 4^i q  (p = 4s + i)

    one ``fma.f16x2`` with 2^{−b·i−S} and ``Zᵢ`` gives (q − z)·2^{−S} exactly (small integers times a power
    of two, all normal fp16), and one more multiplies by ``xₚ = (x[p], x[p + P/2])`` into a half2
    accumulator. The two lanes are summed in fp32. Per word: 1 shift + P/2 lop3 + P/2 fix-ups + P/2 FMA;
    per call 2 conversions and an add (the prescale adds none: S = 0 would only turn the i = 0 fix-up
    FMAs into adds).
    """
    P = 32 // bits
    F = 8 // bits
    pairs = P // 2
    S = prescale_shift(bits, rows) if prescale else 0
    lines = ["{", ".reg .b32 t, h, acc, sc;", ".reg .b16 l16, h16;", ".reg .f32 lo, hi;"]
    first = True
    for r in range(rows):
        for p, fixup in _pair_lines(bits, f"${1 + r}", "h", first_zero=1 + rows, shift=S):
            lines += fixup
            x = f"${1 + rows + F + r * pairs + p}"
            lines.append(f"mul.f16x2 acc, h, {x};" if first else f"fma.rn.f16x2 acc, h, {x}, acc;")
            first = False
    lines += ["mov.b32 {l16, h16}, acc;", "cvt.f32.f16 lo, l16;", "cvt.f32.f16 hi, h16;", "add.f32 $0, lo, hi;", "}"]
    constraints = ",".join(["=r"] + ["r"] * (rows + F + rows * pairs))
    return "\n".join(lines), constraints


def _pair_lines(bits: int, word: str, dest, first_zero: int, shift: int = 0):
    """The PTX that turns one packed word into its P/2 half2 pairs of (q − z)·2^−shift, pair by pair:
    yields ``(p, lines)``, the pair's lines leaving it in ``dest`` (a register name, or ``dest(p)``).

    Byte offset s ∈ {0, 1} (the word, then the word shifted right by 8 into ``t``), field i < F: one
    ``lop3`` ORs the two codes (one per 16-bit lane) into the mantissa of fp16 1024, then
    ``+ Zᵢ`` (i = 0, shift 0) or ``· 2^{−b·i−shift} + Zᵢ`` gives the exact (q − z)·2^−shift; ``Zᵢ`` is
    operand ``$(first_zero + i)``, made by ``zero_asm(bits, shift)``."""
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
            if i == 0 and shift == 0:
                lines.append(f"add.f16x2 {out}, h, {z};")
            else:
                lines += [f"mov.b32 sc, {_f16x2(2.0 ** (-bits * i - shift))};", f"fma.rn.f16x2 {out}, h, sc, {z};"]
            yield p, lines
            lines = []


def zero_asm(bits: int, shift: int = 0) -> tuple[str, str]:
    """PTX: zero point (its fp16 bits, a 16-bit operand) → the F = 8/b constants ``Zᵢ = −(1024·2^{−b·i} + z)·2^−shift``
    of ``dot_asm`` / ``unpack_asm``, each in both fp16 lanes (exact: an integer ≤ 1039 times a power of
    two; one FMA z·(−2^−shift) + c each, a subtraction when shift = 0)."""
    F = 8 // bits
    lines = ["{", ".reg .b32 zz, c, m;", f"mov.b32 zz, {{${F}, ${F}}};"]  # the fp16 bits ($F, 16-bit) in both lanes
    if shift:
        lines.append(f"mov.b32 m, {_f16x2(-(2.0 ** -shift))};")
    for i in range(F):
        lines.append(f"mov.b32 c, {_f16x2(-1024.0 * 2.0 ** (-bits * i - shift))};")
        lines.append(f"fma.rn.f16x2 ${i}, zz, m, c;" if shift else f"sub.f16x2 ${i}, c, zz;")
    lines.append("}")
    return "\n".join(lines), ",".join(["=r"] * F + ["h"])


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


def field_asm(bits: int, j: int) -> str:
    """PTX for the tensor-core GEMM (``harness.packed.gemm_tc``), ``pack=2``: code j of two words ``$1``
    (lo lane) and ``$2`` (hi lane) as an fp16 pair in ``$0``, each lane the field left in place in its byte
    and nothing else: the fp16 bit pattern ``q·2^(b·i)`` (i = j mod 8/b), i.e. the *subnormal* value
    ``q·2^(b·i − 24)``, exact. One ``prmt`` (byte j·b/8 of each word into the low byte of its lane) and one
    ``and`` (the field); no fix-up: the kernel multiplies each field's fp32 sum by 2^(24 − b·i) and
    subtracts ``z·Σx`` per group, so the zero point costs nothing per weight."""
    F = 8 // bits
    byte, i = divmod(j, F)
    sel = byte | (byte << 4) | ((4 + byte) << 8) | ((4 + byte) << 12)
    mask = (((1 << bits) - 1) << (bits * i)) * 0x00010001
    return f"{{\n.reg .b32 t;\nprmt.b32 t, $1, $2, 0x{sel:04X};\nand.b32 $0, t, 0x{mask:08X};\n}}"
