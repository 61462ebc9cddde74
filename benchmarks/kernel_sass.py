"""Static performance check of the packed kernels: SASS instructions per weight, registers, spills.

    python benchmarks/kernel_sass.py                     # every kernel × bits × group × configuration
    python benchmarks/kernel_sass.py --kernels gemv --bits 4 --groups 128 --quick
    python benchmarks/kernel_sass.py --out reference/benchmarks/kernel_sass.json

No GPU is needed: every configuration is compiled for sm_90 (``triton.compile`` to
``GPUTarget("cuda", 90, 32)``; Triton's bundled ``ptxas``), disassembled with the bundled ``nvdisasm``
and its resources read with the bundled ``cuobjdump -res-usage``. The counts depend only on the Triton
and ptxas versions (recorded in the JSON), so they are deterministic for a given install.

Definitions
-----------
*Main loop*: the backward branch ``@P BRA .L`` whose body (the instructions from the label ``.L`` to
the branch, both included) contains a global load (``LDG``, ``LDGSTS`` or a TMA load) and no other such
loop (the innermost loading loop; among several, the longest). ``NOP`` padding is not counted; uniform
(``U*``) instructions are, since each one takes an issue slot of its warp.

*Instructions per weight*: main-loop instructions ÷ the weights one thread processes per iteration,
``BLOCK_N · K_STEP / (32 · num_warps)``, where ``K_STEP`` is the K range one iteration covers (the
kernel says which in ``loop_k_step``). Each warp instruction is 32 thread-instructions, so this is the
issue cost per weight in the units of the device's issue rate.

*Issue-bound ceiling*: an SM issues one warp instruction per scheduler per clock; an H200 (132 SMs × 4
schedulers × 32 lanes × 1.98 GHz) issues ≈ 33·10¹² thread-instructions/s. A kernel that needs ``I``
instructions per weight and moves ``B`` bytes per weight (packed codes plus the fp16 scale and zero of
its group) cannot stream weights faster than ``B · rate / I`` bytes/s; printed as a fraction of
``--bandwidth`` (default 4.3 TB/s, what an H200 reaches in a copy), capped at 1.

Pointers and the integer arguments N, K and the row strides are compiled as multiples of 16, as Triton
specializes a launch on 16-aligned buffers and shapes (every LLaMA layer); M is not.

*Paper time per weight*: ``max(B / bandwidth, I / rate)``, the bound the slower of the two sets; for
M ≥ 2 it is compared with the fp16 reference's (whose 2 bytes per weight make it memory-bound).

*Registers*, *stack* and *spills*: ``REG`` and ``STACK`` from ``cuobjdump -res-usage``; spills are the
local-memory instructions (``STL``/``LDL``) anywhere in the kernel.

An fp16 reference, a plain Triton ``tl.dot`` GEMM on fp16 weights (``_fp16_gemm``), is compiled the same
way for the M ≥ 2 comparison: it moves 2 bytes per weight. JSON goes to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.pop("TRITON_INTERPRET", None)  # compile for real (before triton is imported)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton ≥ 3.9 warns when unset; 1 is the default

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

ISSUE_RATE = 132 * 4 * 32 * 1.98e9  # thread-instructions / s, H200
BANDWIDTH = 4.3e12  # bytes / s
ALIGNED = ("N", "K", "stride_xm", "stride_om")  # integer arguments compiled as multiples of 16
LOAD_OPS = ("LDG", "LDGSTS", "UTMALDG", "UBLKCP")
INSTR_RE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\S*)\s*(.*?);")
LABEL_RE = re.compile(r"^(\.L_x_\d+):")
BRA_RE = re.compile(r"`\((\.L_x_\d+)\)")


@triton.jit
def _fp16_gemm(x_ptr, w_ptr, out_ptr, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Reference: out (M, N) = x (M, K) @ w (K, N), fp16 weights, fp32 accumulation."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(x_ptr + offs_m[:, None] * K + (k0 + rk)[None, :], mask=(offs_m < M)[:, None], other=0.0)
        w = tl.load(w_ptr + (k0 + rk)[:, None] * N + offs_n[None, :])
        acc = tl.dot(a, w, acc)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.float16), mask=(offs_m < M)[:, None])


@dataclass
class Row:
    kernel: str
    bits: int
    group: int  # 0: per-channel
    config: dict
    num_warps: int
    num_stages: int
    loop_instructions: int
    weights_per_thread_iter: float
    instr_per_weight: float
    registers: int
    stack_bytes: int
    spill_instructions: int
    bytes_per_weight: float
    ceiling: float  # fraction of the stated bandwidth the issue rate allows (≤ 1)
    paper_ps_per_weight: float  # max(bytes / bandwidth, instructions / issue rate) per weight, picoseconds
    breakdown: dict


def tool(name: str) -> str:
    """A bundled CUDA tool; ``ptxas`` is the one Triton itself runs for sm_90."""
    if name == "ptxas":
        try:
            from triton.backends.nvidia.compiler import get_ptxas  # triton ≥ 3.6

            return get_ptxas(90).path
        except (ImportError, TypeError):
            pass
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def parse_sass(text: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """nvdisasm text → (instructions [(opcode, full text)], label → index of its next instruction)."""
    instrs, labels = [], {}
    for line in text.splitlines():
        m = LABEL_RE.match(line.strip())
        if m:
            labels[m.group(1)] = len(instrs)
            continue
        m = INSTR_RE.match(line)
        if m:
            instrs.append((m.group(3), line.strip()))
    return instrs, labels


def main_loop(instrs: list[tuple[str, str]], labels: dict[str, int]) -> list[tuple[str, str]]:
    """The innermost loading loop (module docstring), NOPs dropped."""
    loops = []
    for i, (op, text) in enumerate(instrs):
        m = BRA_RE.search(text) if op == "BRA" else None
        if m and labels.get(m.group(1), i + 1) <= i:
            body = instrs[labels[m.group(1)]:i + 1]
            if any(o.startswith(LOAD_OPS) for o, _ in body):
                loops.append((labels[m.group(1)], i))
    inner = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    if not inner:
        raise RuntimeError("no loop with a global load found in the SASS")
    a, b = max(inner, key=lambda ab: ab[1] - ab[0])
    return [(o, t) for o, t in instrs[a:b + 1] if o != "NOP"]


CATEGORIES = {
    "unpack": ("LOP3", "SHF", "PRMT", "SGXT", "BMSK", "LOP", "SHL", "SHR", "I2F", "F2F", "I2FP", "F2FP"),
    "fma": ("FFMA", "FADD", "FMUL", "HFMA2", "HADD2", "HMUL2", "FMNMX"),
    "mma": ("HMMA", "HGMMA", "WARPGROUP", "WARPSYNC"),
    "load": ("LDG", "LDS", "LDSM", "LDGSTS", "LDGDEPBAR", "DEPBAR", "STS", "STSM", "UTMALDG", "SYNCS", "BAR"),
}


def breakdown(body: list[tuple[str, str]]) -> dict:
    out = dict.fromkeys([*CATEGORIES, "other"], 0)
    for op, _ in body:
        cat = next((c for c, ops in CATEGORIES.items() if op in ops), "other")
        out[cat] += 1
    return out


def resources(cubin: bytes) -> tuple[int, int, str]:
    """(registers, stack bytes, SASS text) of the one kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        res = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"REG:(\d+)", res.stdout).group(1))
    stack = int(re.search(r"STACK:(\d+)", res.stdout).group(1))
    return regs, stack, sass


def compile_sm90(fn, types: dict, constexprs: dict, num_warps: int, num_stages: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}
    # What a launch on 16-aligned buffers and shapes (every LLaMA layer) specializes on: divisible by 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if a not in constexprs and (types[a].startswith("*") or a in ALIGNED)}
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


def measure(kernel: str, fn, types, constexprs, num_warps, num_stages, bits, group, k_step, block_n,
            bandwidth, issue_rate) -> Row:
    compiled = compile_sm90(fn, types, constexprs, num_warps, num_stages)
    regs, stack, sass = resources(compiled.asm["cubin"])
    instrs, labels = parse_sass(sass)
    body = main_loop(instrs, labels)
    weights = block_n * k_step / (32 * num_warps)
    ipw = len(body) / weights
    bpw = bits / 8 + (4 / group if group else 0.0)
    spills = sum(op in ("STL", "LDL") for op, _ in instrs)
    return Row(kernel, bits, group, {k: v for k, v in constexprs.items() if k.isupper()}, num_warps, num_stages,
               len(body), weights, round(ipw, 4), regs, stack, spills, bpw,
               round(min(1.0, bpw * issue_rate / ipw / bandwidth), 4),
               round(1e12 * max(bpw / bandwidth, ipw / issue_rate), 4), breakdown(body))


def quant_jobs(kernels: list[str], bits_list: list[int], groups: list[int], quick: bool):
    """(kernel name, jit fn, arg types, constexprs, warps, stages, bits, group, K step, BLOCK_N) per config."""
    import harness.packed.tuning as T

    for name in kernels:
        for bits in bits_list:
            for group in groups:
                for spec in T.sass_configs(name, bits, group, quick=quick):
                    yield (name, *spec)


def fp16_jobs(quick: bool):
    types = {"x_ptr": "*fp16", "w_ptr": "*fp16", "out_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32"}
    for bm, bn, bk, w, s in [(16, 128, 64, 4, 3)] + ([] if quick else [(16, 64, 64, 4, 4), (64, 128, 64, 4, 3)]):
        yield ("fp16_gemm", _fp16_gemm, types, dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), w, s, 16, 0, bk, bn)


def fmt(r: Row) -> str:
    cfg = " ".join(f"{k}={v}" for k, v in r.config.items() if k not in ("BITS", "GROUP", "GROUP_M", "DOT_F32"))
    return (f"{r.kernel:<10} {r.bits:>4} {r.group or 'pc':>5} {cfg:<44} {r.num_warps:>2} {r.num_stages:>2} "
            f"{r.instr_per_weight:>8.2f} {r.registers:>4} {r.spill_instructions:>5} {100 * r.ceiling:>7.1f}% "
            f"{r.paper_ps_per_weight:>7.3f}")


HEADER = (f"{'kernel':<10} {'bits':>4} {'group':>5} {'config':<44} {'w':>2} {'st':>2} {'instr/w':>8} {'regs':>4} "
          f"{'spill':>5} {'ceiling':>8} {'ps/w':>7}")


def print_table(rows: list[Row], bandwidth: float) -> None:
    print(HEADER)
    for r in rows:
        print(fmt(r))
    print(f"ceiling: fraction of {bandwidth / 1e12:.1f} TB/s the issue rate ({ISSUE_RATE / 1e12:.1f}e12 thread-instr/s)"
          f" allows; group pc = per-channel")


def best(rows: list[Row]) -> list[dict]:
    """Per kernel × bits × group: the configuration with the fewest instructions per weight (no spills)."""
    out = {}
    for r in rows:
        key = (r.kernel, r.bits, r.group)
        ok = r.spill_instructions == 0
        cur = out.get(key)
        if cur is None or (ok, -r.instr_per_weight) > (cur.spill_instructions == 0, -cur.instr_per_weight):
            out[key] = r
    return [asdict(r) for r in out.values()]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", default="gemv,gemm", help="comma list of kernel families: harness.packed.gemv, .gemm")
    p.add_argument("--bits", default="4,2")
    p.add_argument("--groups", default="128,0", help="group sizes; 0 = per-channel")
    p.add_argument("--quick", action="store_true", help="the default launch configuration of each kernel only")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 tl.dot reference")
    p.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="bytes/s the ceiling is a fraction of")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "kernel_sass.json"))
    return p.parse_args()


def main() -> int:
    args = parse()
    if not Path(tool("ptxas")).exists():
        print("triton's bundled ptxas is missing: nothing compiled")
        return 0
    jobs = list(quant_jobs(args.kernels.split(","), [int(b) for b in args.bits.split(",")],
                           [int(g) for g in args.groups.split(",")], args.quick))
    if not args.no_fp16:
        jobs += list(fp16_jobs(args.quick))
    rows = []
    print(HEADER)
    for name, fn, types, ce, w, s, bits, group, k_step, bn in jobs:
        rows.append(measure(name, fn, types, ce, w, s, bits, group, k_step, bn, args.bandwidth, ISSUE_RATE))
        print(fmt(rows[-1]), flush=True)
    print("\nbest configuration per kernel × bits × group:")
    print_table([Row(**d) for d in best(rows)], args.bandwidth)
    import torch

    out = {"triton": triton.__version__, "torch": torch.__version__, "target": "sm_90 (GPUTarget cuda 90)",
           "ptxas": subprocess.run([tool("ptxas"), "--version"], capture_output=True, text=True).stdout.split("\n")[-2],
           "issue_rate": ISSUE_RATE, "bandwidth": args.bandwidth, "rows": [asdict(r) for r in rows],
           "best": best(rows)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
