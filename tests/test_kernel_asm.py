"""The GEMV's inline PTX, checked on the CPU by a small emulator of the few instructions it uses.

The interpreter (``TRITON_INTERPRET=1``) cannot run inline assembly, so the kernel tests on CPU exercise
the pure-Triton fallback; this file runs the *same strings* the sm_90 build assembles (``dot_asm``,
``zero_asm``, the activation ``prmt``) instruction by instruction with numpy, per fp16 lane, and compares
``Σ x·(q − z)`` over two packed words with the exact sum. GPU runs (``pytest -m gpu``) check the compiled
kernel end to end.
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


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dot_asm_matches_exact_sum(bits, seed):
    rng = np.random.default_rng(seed)
    P = 32 // bits
    codes = rng.integers(0, 2**bits, size=(1, 2 * P))  # one column, two word rows
    z = int(rng.integers(0, 2**bits))
    x = rng.standard_normal(2 * P).astype(np.float16)
    import torch

    words = [int(w) & M32 for w in pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).flatten().tolist()]
    zbits = int(np.float16(z).view(np.uint16))
    zc = run_ptx(ptx.zero_asm(bits)[0], [zbits], 8 // bits)
    pairs = _pairs(_x_words(x[:P]), bits) + _pairs(_x_words(x[P:]), bits)
    (y,) = run_ptx(ptx.dot_asm(bits)[0], [*words, *zc, *pairs], 1)
    exact = float(np.sum(x.astype(np.float64) * (codes[0] - z)))
    scale = float(np.sum(np.abs(x.astype(np.float64) * (codes[0] - z))))
    assert abs(y - exact) <= 2e-3 * scale + 1e-6, (y, exact)


@pytest.mark.parametrize("bits", [4, 2])
def test_fixups_give_q_minus_z_exactly(bits):
    """Every code and zero point: the lop3 + fix-up of ``dot_asm`` yields q − z exactly (x = 1, one pair)."""
    P = 32 // bits
    for z in range(2**bits):
        zc = run_ptx(ptx.zero_asm(bits)[0], [int(np.float16(z).view(np.uint16))], 8 // bits)
        for q in range(2**bits):
            codes = np.full((1, 2 * P), q)
            import torch

            words = [int(w) & M32 for w in pack_codes(torch.tensor(codes, dtype=torch.uint8), bits).flatten().tolist()]
            one = _x_words(np.ones(P, dtype=np.float16))
            pairs = _pairs(one, bits) * 2
            (y,) = run_ptx(ptx.dot_asm(bits)[0], [*words, *zc, *pairs], 1)
            assert y == 2 * P * (q - z)


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
