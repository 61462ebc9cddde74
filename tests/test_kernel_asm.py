"""The GEMV's inline PTX, checked on the CPU by a small emulator of the few instructions it uses.

The interpreter (``TRITON_INTERPRET=1``) cannot run inline assembly, so the kernel tests on CPU exercise
the pure-Triton fallback; this file runs the *same strings* the sm_90 build assembles (``dot_asm``,
``zero_asm``, the activation ``prmt``) instruction by instruction with numpy, per fp16 lane (every
instruction rounds to fp16 once, overflowing to inf as the hardware does), and compares ``Σ x·(q − z)``
over two packed words with the exact sum, including activation spikes up to the largest fp16 (issue 26:
the half2 partial sums must never overflow). GPU runs (``pytest -m gpu``) check the compiled kernel end to
end.
"""
import re

import numpy as np
import pytest

from harness.packed import ptx  # plain Python: no Triton needed
from harness.packed.packing import pack_codes

M32 = 0xFFFFFFFF


def _lanes(v: int) -> np.ndarray:
    return np.array([v & 0xFFFF, v >> 16], dtype=np.uint16).view(np.float16).astype(np.float64)


def _pack(lanes) -> int:
    with np.errstate(over="ignore"):  # fp16 overflow → inf, as the hardware rounds
        h = np.asarray(lanes, dtype=np.float64).astype(np.float16).view(np.uint16)
    return int(h[0]) | (int(h[1]) << 16)


def run_ptx(asm: str, inputs: list[int], n_out: int) -> list:
    """Run ``asm`` with ``$0 … $(n_out−1)`` outputs and the following operands bound to ``inputs``
    (32-bit integers; f32 results come back as Python floats)."""
    regs: dict[str, object] = {f"${n_out + i}": v & M32 for i, v in enumerate(inputs)}

    def val(tok: str):
        tok = tok.strip()
        return int(tok, 16) if tok.startswith("0x") else int(tok) if tok.isdigit() else regs[tok]

    for line in asm.split("\n"):
        line = line.strip().rstrip(";")
        if line in ("", "{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        if op == "mov.b32" and rest.startswith("{"):
            lo, hi, src = re.match(r"\{(\w+), (\w+)\}, (\S+)", rest).groups()
            regs[lo], regs[hi] = _lanes(val(src))
            continue
        if op == "mov.b32" and rest.endswith("}"):  # pack two 16-bit operands: {lo, hi}
            d, lo, hi = re.match(r"(\S+), \{(\S+), (\S+)\}", rest).groups()
            regs[d] = (val(lo) & 0xFFFF) | (val(hi) & 0xFFFF) << 16
            continue
        d, *a = [t.strip() for t in rest.split(",")]
        if op == "lop3.b32":
            x, y, z, lut = (val(t) for t in a)
            r = 0
            for idx in range(8):
                if lut >> idx & 1:
                    r |= (x if idx & 4 else ~x) & (y if idx & 2 else ~y) & (z if idx & 1 else ~z)
            regs[d] = r & M32
        elif op == "shr.u32":
            regs[d] = val(a[0]) >> val(a[1])
        elif op == "mov.b32":
            regs[d] = val(a[0])
        elif op == "and.b32":
            regs[d] = val(a[0]) & val(a[1])
        elif op == "prmt.b32":
            src = val(a[0]) | (val(a[1]) << 32)
            sel = val(a[2])
            regs[d] = sum(((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))
        elif op in ("add.f16x2", "sub.f16x2", "mul.f16x2", "fma.rn.f16x2"):
            x, y = _lanes(val(a[0])), _lanes(val(a[1]))
            if op == "add.f16x2":
                r = x + y
            elif op == "sub.f16x2":
                r = x - y
            elif op == "mul.f16x2":
                r = x * y
            else:
                r = x * y + _lanes(val(a[2]))
            regs[d] = _pack(r)  # one rounding to fp16 per instruction (fp16 products are exact in fp64)
        elif op == "cvt.f32.f16":
            regs[d] = np.float32(regs[a[0]])
        elif op == "add.f32":
            regs[d] = np.float32(regs[a[0]]) + np.float32(regs[a[1]])
        else:
            raise NotImplementedError(op)
    return [regs[f"${i}"] for i in range(n_out)]


def _x_words(x: np.ndarray) -> list[int]:
    h = x.astype(np.float16).view(np.uint16).astype(np.int64)
    return [int(h[2 * m] | (h[2 * m + 1] << 16)) for m in range(len(x) // 2)]


def _pairs(X: list[int], bits: int) -> list[int]:
    """Pairs of one word row as ``_xpairs`` builds them: prmt of X[a] and X[a + P/4], pair p = 2a + c."""
    P = 32 // bits
    Q = P // 4
    out = []
    for a in range(Q):
        lo, hi = run_ptx(ptx.PRMT_ASM, [X[a], X[a + Q]], 2)
        out += [lo, hi]
    return out


def dot(x: np.ndarray, codes: np.ndarray, z: int, bits: int, prescale: bool = True) -> float:
    """The GEMV's per-call sum as the kernel gets it: ``dot_asm`` over two words of one column (codes
    (2P,), activations x (2P,) fp16), times 2^S in fp32 as the kernel does after the loop."""
    import torch

    P = 32 // bits
    S = ptx.prescale_shift(bits) if prescale else 0
    words = [int(w) & M32 for w in pack_codes(torch.tensor(codes[None], dtype=torch.uint8), bits).flatten().tolist()]
    zc = run_ptx(ptx.zero_asm(bits, S)[0], [int(np.float16(z).view(np.uint16))], 8 // bits)
    pairs = _pairs(_x_words(x[:P]), bits) + _pairs(_x_words(x[P:]), bits)
    (y,) = run_ptx(ptx.dot_asm(bits, prescale=prescale)[0], [*words, *zc, *pairs], 1)
    return float(np.float32(y) * np.float32(2.0**S))


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dot_asm_matches_exact_sum(bits, seed):
    rng = np.random.default_rng(seed)
    P = 32 // bits
    codes = rng.integers(0, 2**bits, size=2 * P)  # one column, two word rows
    z = int(rng.integers(0, 2**bits))
    x = rng.standard_normal(2 * P).astype(np.float16)
    y = dot(x, codes, z, bits)
    exact = float(np.sum(x.astype(np.float64) * (codes - z)))
    scale = float(np.sum(np.abs(x.astype(np.float64) * (codes - z))))
    assert abs(y - exact) <= 2e-3 * scale + 1e-6, (y, exact)


def spiky(rng, n: int, spikes: int, size: float) -> np.ndarray:
    """n fp16 activations ~ N(0, 1) with ``spikes`` channels of magnitude ``size`` (random signs), the
    shape of LLaMA's down-projection inputs (a few channels of order 10³–10⁴)."""
    x = rng.standard_normal(n)
    idx = rng.choice(n, size=spikes, replace=False)
    x[idx] = size * rng.choice([-1.0, 1.0], size=spikes)
    return x.astype(np.float16)


# Spike sizes: 6·10⁴ (issue 26), and the largest finite fp16 (the prescale's bound is for any fp16 x).
@pytest.mark.parametrize("size", [6e4, 65504.0])
@pytest.mark.parametrize("spikes", [1, 3, 32])
@pytest.mark.parametrize("bits", [4, 2])
def test_dot_asm_never_overflows_with_spikes(bits, spikes, size):
    """Worst case first: every code at q − z = ±(2^b − 1) with spikes of the same sign, so the fp16 partial
    sums reach the bound of ``ptx.prescale_shift``; then random codes. The result is finite and within
    the fp16 rounding of the exact sum: relative 2⁻¹¹ per rounding over n roundings of partials no
    larger than Σ|x·(q − z)|, bounded by n·2⁻¹¹·Σ|x(q − z)| (4-bit: 0.8%, 2-bit: 1.6%, a loose bound;
    the measured error is printed and is far below)."""
    rng = np.random.default_rng(spikes)
    P = 32 // bits
    n = 2 * P
    maxq = 2**bits - 1
    spikes = min(spikes, n)
    cases = [(np.full(n, size, dtype=np.float16), np.full(n, maxq), 0),  # every product at the maximum
             (np.full(n, -size, dtype=np.float16), np.full(n, 0), maxq)]
    for _ in range(10):
        cases.append((spiky(rng, n, spikes, size), rng.integers(0, maxq + 1, size=n), int(rng.integers(0, maxq + 1))))
    worst = 0.0
    for x, codes, z in cases:
        y = dot(x, codes, z, bits)
        exact = float(np.sum(x.astype(np.float64) * (codes - z)))
        ref32 = float(np.sum(x.astype(np.float32) * (codes - z).astype(np.float32), dtype=np.float32))
        scale = float(np.sum(np.abs(x.astype(np.float64) * (codes - z))))
        assert np.isfinite(y), (bits, x, codes, z)
        assert abs(y - exact) <= n * 2.0**-11 * scale, (y, exact)
        worst = max(worst, abs(y - ref32) / max(scale, 1e-30))
    print(f"{bits}-bit, {spikes} spikes of {size:g}: max |y − fp32 ref| / Σ|x(q − z)| = {worst:.2e}")


@pytest.mark.parametrize("bits", [4, 2])
def test_unscaled_half2_sum_would_overflow(bits):
    """The test above can fail: without the prescale (S = 0, the kernel before issue 26) one spike of
    6·10⁴ against q − z = 2^b − 1 gives inf (4-bit: from |x| ≳ 4.4·10³)."""
    P = 32 // bits
    maxq = 2**bits - 1
    x = np.zeros(2 * P, dtype=np.float16)
    x[0] = 6e4 if bits == 4 else 3e4
    x[1] = x[0]
    y = dot(x, np.full(2 * P, maxq), 0, bits, prescale=False)
    assert not np.isfinite(y)
    assert np.isfinite(dot(x, np.full(2 * P, maxq), 0, bits))


@pytest.mark.parametrize("bits", [4, 2])
def test_prescale_keeps_small_activations_accurate(bits):
    """The prescale's price: products below 2⁻¹⁴·2^S are fp16 subnormals, with an absolute error of at most
    2⁻²⁵·2^S each (≈ 7.6·10⁻⁶ at S = 8). With activations of order 10⁻³ (a small-norm input) the call's
    error stays below n such floors plus the usual relative 2⁻¹¹ per rounding."""
    rng = np.random.default_rng(5)
    P = 32 // bits
    n = 2 * P
    S = ptx.prescale_shift(bits)
    for _ in range(20):
        x = (1e-3 * rng.standard_normal(n)).astype(np.float16)
        codes = rng.integers(0, 2**bits, size=n)
        z = int(rng.integers(0, 2**bits))
        y = dot(x, codes, z, bits)
        exact = float(np.sum(x.astype(np.float64) * (codes - z)))
        scale = float(np.sum(np.abs(x.astype(np.float64) * (codes - z))))
        assert abs(y - exact) <= n * (2.0 ** (-25 + S) + 2.0**-11 * scale / n) + 2e-3 * scale, (y, exact)


@pytest.mark.parametrize("bits", [4, 2])
def test_fixups_give_q_minus_z_exactly(bits):
    """Every code and zero point: the lop3 + prescaled fix-up of ``dot_asm`` yields (q − z)·2^−S exactly (x = 1)."""
    P = 32 // bits
    for z in range(2**bits):
        for q in range(2**bits):
            assert dot(np.ones(2 * P, dtype=np.float16), np.full(2 * P, q), z, bits) == 2 * P * (q - z)


@pytest.mark.parametrize("bits", [4, 2])
def test_unpack_asm_pairs_are_q_minus_z_in_lane_order(bits):
    """The GEMM's ``unpack_asm``: pair p holds (q[p] − z, q[p + P/2] − z) in its (lo, hi) fp16 lanes."""
    import torch

    rng = np.random.default_rng(7)
    P = 32 // bits
    for _ in range(20):
        codes = rng.integers(0, 2**bits, size=(1, P))
        z = int(rng.integers(0, 2**bits))
        (word,) = [int(w) & M32 for w in pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).flatten().tolist()]
        zc = run_ptx(ptx.zero_asm(bits)[0], [int(np.float16(z).view(np.uint16))], 8 // bits)
        pairs = run_ptx(ptx.unpack_asm(bits)[0], [word, *zc], P // 2)
        for p, h in enumerate(pairs):
            assert list(_lanes(h)) == [codes[0, p] - z, codes[0, p + P // 2] - z]


@pytest.mark.parametrize("bits", [4, 2])
def test_field_asm_gives_exact_subnormal_codes_of_two_words(bits):
    """The tensor-core GEMM's ``field_asm`` (issue 26): code j of word a in the lo lane, of word b in the hi lane,
    each the exact fp16 subnormal q·2^(b·i − 24), i = j mod 8/b (what ``harness.packed.gemm_tc`` scales back by
    2^(24 − b·i) in fp32), for every j."""
    import torch

    rng = np.random.default_rng(11)
    P, F = 32 // bits, 8 // bits
    for _ in range(20):
        codes = rng.integers(0, 2**bits, size=(2, P))
        a, b = [int(w) & M32 for w in pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).flatten().tolist()]
        for j in range(P):
            (h,) = run_ptx(ptx.field_asm(bits, j), [a, b], 1)
            scale = 2.0 ** (bits * (j % F) - 24)
            assert list(_lanes(h)) == [codes[0, j] * scale, codes[1, j] * scale]
