"""Inline-PTX builders of the packed kernels' half2 paths (strings only: no Triton import).

The fp16-activation paths turn packed codes into exact fp16 integers q − z with one ``lop3`` per pair of
codes (two 16-bit lanes at once) and a fix-up FMA, then multiply by activation pairs in half2. Each
builder returns ``(asm, constraints)`` for ``tl.inline_asm_elementwise``; ``tests/test_kernel_asm.py``
runs these very strings in a small emulator, and ``harness.packed.common`` wraps them as constexprs.

Precision: q − z is exact; products and partial sums of 16 (4-bit) / 32 (2-bit) products are fp16
(|partial| < 65504, relative rounding ≈ 2⁻¹¹ per add), then fp32.
"""
from __future__ import annotations

import struct

# (x[p], x[p + P/2]) pairs from two int32 words of activation halves: low lanes (0x5410), high lanes (0x7632).
PRMT_ASM = "prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $2, $3, 0x7632;"


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
