"""Static performance check of the packed kernels: SASS instructions per weight, registers, spills.

    python benchmarks/kernel_sass.py                     # every kernel × bits × group × configuration
    python benchmarks/kernel_sass.py --kernels gemv --bits 4 --groups 128 --quick
    python benchmarks/kernel_sass.py --out reference/benchmarks/kernel_sass.json
    python benchmarks/kernel_sass.py --model             # + the occupancy/latency model of the shipped configs
    python benchmarks/kernel_sass.py --ship              # choose harness/packed/static_configs.json by the model
    python benchmarks/kernel_sass.py --ship --kernels gemm_tc   # ... re-choosing only the tensor-core GEMM's

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

Every ceiling, not one (``model``; issue 26)
--------------------------------------------
The issue ceiling above assumes every scheduler of every SM has a warp. For a launch of a configuration on
a shape (N, K, M, SPLIT_K) the model also counts what the grid and the resources allow:

*CTAs* = output tiles × SPLIT_K. *Resident CTAs per SM* r = min(32, 64 warps ÷ warps a CTA, 65 536
registers ÷ (registers a thread rounded up to 8 × 32 × warps), 228 KiB ÷ (shared memory a CTA + 1 KiB
reserved)) — sm_90's limits (CUDA occupancy rules); the limiter is printed. *Waves* = CTAs ÷ (132 · r);
*wave efficiency* = waves ÷ ⌈waves⌉ (below one wave: the fraction of the
resident slots the grid uses). Within a wave of n CTAs spread evenly over min(132, n) SMs, an SM
with w resident warps feeds min(4, w) of its 4 schedulers, each issuing at most one warp instruction per
clock (1.98 GHz boost; optimistic: a lone warp stalls on its own dependences), and the wave moves weights at

    min( issue:   busy SMs · min(4, w) · 1.98e9 · 32 · B / I_eff,
         latency: n · bytes in flight per CTA / L,                    (Little's law)
         DRAM:    4.3e12 · B / (B + partial bytes per weight) )

*I_eff* adds the instructions outside the main loop (prologue, split-K epilogue: the static count of the
whole kernel less the loop, compiled with SPLIT_K = 2 so that the epilogue is there) spread over the
loop iterations a CTA runs (⌈K blocks ÷ SPLIT_K⌉): the small CTAs that fill the GPU pay for it. *Bytes in
flight*: with the loads pipelined through shared memory (``LDGSTS`` in the loop) STAGES − 1 iterations'
packed words, else one iteration's, never more than the CTA's whole share. *Partial bytes*: the fp32
partials of SPLIT_K > 1 (4 · SPLIT_K · M bytes per output column, written once; they are read back from L2)
per K weights. The waves run back to back; the modelled ceiling is the weight bytes ÷ the summed time, as
a fraction of 4.3 TB/s (the first bytes' latency, one L per launch, is left out: it is a fixed cost of any
kernel, about 1 µs, not a rate).

*L* = 800 ns, the loaded DRAM latency: pointer-chasing microbenchmarks put Hopper's unloaded HBM latency at
about 500–600 ns (Chips and Cheese, "Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023; Luo et al.,
"Benchmarking and Dissecting the Nvidia Hopper GPU Architecture", IPDPS 2024), and queueing near full
bandwidth adds to it; 800 ns asks for 0.85 · 4.3 TB/s · 800 ns ≈ 2.9 MB in flight (22 KB an SM) to reach
85%, a conservative target (``--latency-ns`` changes it).
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

SMS, SCHEDULERS, CLOCK_HZ = 132, 4, 1.98e9  # H100/H200 SXM: SMs, schedulers an SM, boost clock
ISSUE_RATE = SMS * SCHEDULERS * 32 * CLOCK_HZ  # thread-instructions / s, H200
BANDWIDTH = 4.3e12  # bytes / s
MEM_LATENCY = 800e-9  # s, loaded DRAM latency (module docstring)
# sm_90 occupancy limits (CUDA C++ Programming Guide, compute capability 9.0)
MAX_WARPS_SM, MAX_CTAS_SM, REGS_SM, SMEM_SM, SMEM_RESERVED = 64, 32, 65536, 228 * 1024, 1024
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (N, K) of LLaMA-7B's layers: q/k/v/o, down, gate/up
SPLITS = (1, 2, 4, 8, 16, 32)
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
    shared_bytes: int = 0
    other_instructions: int = 0  # static count outside the main loop (prologue, epilogue)
    pipelined: bool = False  # the loop's loads go through shared memory (LDGSTS): STAGES − 1 in flight
    block_n: int = 0
    k_step: int = 0


def resident_ctas(regs: int, smem: int, warps: int) -> tuple[int, str]:
    """(CTAs an SM can hold, the limiting resource) under sm_90's limits."""
    regs_warp = -(-regs // 8) * 8 * 32  # allocation: 8 registers a thread (256 a warp) at a time
    lim = {"ctas": MAX_CTAS_SM, "warps": MAX_WARPS_SM // warps, "registers": REGS_SM // (regs_warp * warps),
           "shared": SMEM_SM // (smem + SMEM_RESERVED)}
    which = min(lim, key=lim.get)
    return lim[which], which


@dataclass
class Model:
    N: int
    K: int
    M: int
    split_k: int
    ctas: int
    resident_per_sm: int
    limiter: str
    warps_per_sm: float  # in the first wave, per busy SM
    warps_per_scheduler: float
    waves: float
    wave_efficiency: float
    instr_per_weight_eff: float
    issue_ceiling: float  # fractions of the bandwidth, first wave
    latency_ceiling: float
    dram_ceiling: float
    ceiling: float  # the modelled ceiling, all waves


def model(r: Row, N: int, K: int, split_k: int, M: int = 1, bandwidth: float = BANDWIDTH,
          latency: float = MEM_LATENCY) -> Model:
    """The occupancy/latency/issue model of the module docstring for one launch of configuration ``r``."""
    bm = r.config.get("BLOCK_M", 1)
    tiles = -(-M // bm) * -(-N // r.block_n)
    n_blocks = -(-K // r.k_step)
    iters = -(-n_blocks // split_k)
    ctas = tiles * split_k
    res, limiter = resident_ctas(r.registers, r.shared_bytes, r.num_warps)
    slots = SMS * res
    ipw_eff = (iters * r.loop_instructions + r.other_instructions) / (iters * r.weights_per_thread_iter)
    partial = 4 * split_k * M / K if split_k > 1 else 0.0
    dram = bandwidth * r.bytes_per_weight / (r.bytes_per_weight + partial)
    iter_bytes = r.block_n * r.k_step * r.bits / 8
    in_flight = min(max(r.num_stages - 1, 1) if r.pipelined else 1, iters) * iter_bytes

    def rate(n: int) -> tuple[float, float, float]:
        busy = min(SMS, n)
        warps = n / busy * r.num_warps
        issue = busy * min(SCHEDULERS, warps) * CLOCK_HZ * 32 * r.bytes_per_weight / ipw_eff
        return issue, n * in_flight / latency, warps

    total = N * K * r.bytes_per_weight
    per_cta = total / ctas
    time, left = 0.0, ctas
    while left > 0:
        n = min(slots, left)
        issue, lat, _ = rate(n)
        time += n * per_cta / min(issue, lat, dram)
        left -= n
    issue, lat, warps = rate(min(slots, ctas))
    waves = ctas / slots
    return Model(N, K, M, split_k, ctas, res, limiter, round(warps, 2), round(warps / SCHEDULERS, 2), round(waves, 3),
                 round(waves / -(-waves // 1), 3), round(ipw_eff, 4), round(min(1.0, issue / bandwidth), 4),
                 round(min(1.0, lat / bandwidth), 4), round(dram / bandwidth, 4), round(total / time / bandwidth, 4))


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
    if "SPLIT_K" in constexprs and kernel != "fp16_gemm":
        constexprs = {**constexprs, "SPLIT_K": 2}  # the split-K epilogue in the count of the code outside the loop
    compiled = compile_sm90(fn, types, constexprs, num_warps, num_stages)
    regs, stack, sass = resources(compiled.asm["cubin"])
    instrs, labels = parse_sass(sass)
    body = main_loop(instrs, labels)
    n_all = sum(op != "NOP" for op, _ in instrs)
    weights = block_n * k_step / (32 * num_warps)
    ipw = len(body) / weights
    bpw = bits / 8 + (4 / group if group else 0.0)
    spills = sum(op in ("STL", "LDL") for op, _ in instrs)
    return Row(kernel, bits, group, {k: v for k, v in constexprs.items() if k.isupper() and k != "SPLIT_K"},
               num_warps, num_stages,
               len(body), weights, round(ipw, 4), regs, stack, spills, bpw,
               round(min(1.0, bpw * issue_rate / ipw / bandwidth), 4),
               round(1e12 * max(bpw / bandwidth, ipw / issue_rate), 4), breakdown(body),
               shared_bytes=int(compiled.metadata.shared), other_instructions=n_all - len(body),
               pipelined=any(op.startswith("LDGSTS") for op, _ in body), block_n=block_n, k_step=k_step)


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
    cfg = " ".join(f"{k}={v}" for k, v in r.config.items() if k not in ("BITS", "GROUP", "GROUP_M", "DOT_F32", "XS_N"))
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


def best_launch(rows: list[Row], N: int, K: int, M: int, bandwidth: float, latency: float):
    """(Model, Row) with the highest modelled ceiling over ``rows`` × ``STATIC_SPLITS`` (no spills, every
    split at least one K block); ties within half a percent go to fewer splits, then fewer CTAs."""
    import harness.packed.tuning as T

    cands = [(model(r, N, K, sk, M, bandwidth, latency), r) for r in rows
             if r.spill_instructions == 0 and r.stack_bytes == 0 for sk in T.STATIC_SPLITS if sk <= -(-K // r.k_step)]
    return max(cands, key=lambda mr: (round(mr[0].ceiling / 0.005), -mr[0].split_k, -mr[0].ctas))


def static_rows(kernel: str, bits: int, group: int, space: list) -> list[Row]:
    import harness.packed.tuning as T

    return [measure(kernel, *spec, BANDWIDTH, ISSUE_RATE) for spec in T.sass_configs(kernel, bits, group, space=space)]


def config_of(r: Row, split_k: int) -> dict:
    return {"block_n": r.block_n, "block_k": r.k_step, "split_k": split_k, "block_m": r.config.get("BLOCK_M", 16),
            "num_warps": r.num_warps, "num_stages": r.num_stages}


MODEL_HEADER = (f"{'kernel':<5} {'b':>1} {'grp':>3} {'M':>2} {'N×K':>11} {'BN':>4} {'BK':>3} {'w':>1} {'st':>2} "
                f"{'sk':>2} {'CTAs':>4} {'r/SM':>4} {'lim':>9} {'warp/SM':>7} {'warp/sch':>8} {'waves':>5} "
                f"{'w.eff':>5} {'I/w':>5} {'issue':>6} {'lat':>6} {'dram':>6} {'model':>6}")


def fmt_model(kernel: str, r: Row, m: Model) -> str:
    return (f"{kernel:<5} {r.bits:>1} {r.group or 'pc':>3} {m.M:>2} {f'{m.N}×{m.K}':>11} {r.block_n:>4} {r.k_step:>3} "
            f"{r.num_warps:>1} {r.num_stages:>2} {m.split_k:>2} {m.ctas:>4} {m.resident_per_sm:>4} {m.limiter:>9} "
            f"{m.warps_per_sm:>7.2f} {m.warps_per_scheduler:>8.2f} {m.waves:>5.2f} {m.wave_efficiency:>5.2f} "
            f"{m.instr_per_weight_eff:>5.2f} {100 * m.issue_ceiling:>5.1f}% {100 * m.latency_ceiling:>5.1f}% "
            f"{100 * m.dram_ceiling:>5.1f}% {100 * m.ceiling:>5.1f}%")


def ship(args) -> int:
    """Choose the static table: per bits × group, compile the static spaces once, model every shape × M
    bucket × split, keep the best (``best_launch``); print the before (the fixed defaults) and after tables;
    write ``harness/packed/static_configs.json``. ``--kernels`` limits the families re-chosen (gemv: M = 1;
    gemm: the reshaping GEMM, M 2–16; gemm_tc: the tensor-core GEMM, M 2–16, where its K block fits the
    group); the other families' entries are kept."""
    import harness.packed.tuning as T

    entries, before, after = [], [], []
    bits_list, groups = [int(b) for b in args.bits.split(",")], [int(g) for g in args.groups.split(",")]
    kernels = [k for k in args.kernels.split(",") if k in ("gemv", "gemm", "gemm_tc")]
    for bits in bits_list:
        for group in groups:
            spaces = {"gemv": T.STATIC_GEMV_SPACE, "gemm": T.STATIC_GEMM_SPACE, "gemm_tc": T.gemm_tc_space(bits, group)}
            rows = {k: static_rows(k, bits, group, spaces[k]) for k in kernels}
            if "gemv" in rows:
                d = T.fit(T.DEFAULT_GEMV, group)
                (old,) = [r for r in rows["gemv"] if (r.block_n, r.k_step, r.num_warps, r.num_stages) ==
                          (d.block_n, d.block_k, d.num_warps, d.num_stages)]
            for N, K in SHAPES:
                if "gemv" in rows:
                    before.append(fmt_model("gemv", old, model(old, N, K, d.split_k, 1, args.bandwidth, args.latency)))
                for mb in T.STATIC_M_BUCKETS:
                    for kernel in kernels:
                        if (kernel == "gemv") != (mb == 1) or not rows[kernel]:
                            continue
                        m, r = best_launch(rows[kernel], N, K, mb, args.bandwidth, args.latency)
                        after.append(fmt_model(kernel[:5] if kernel != "gemm_tc" else "tc", r, m))
                        entries.append({"kernel": kernel, "m_bucket": mb, "N": N, "K": K, "bits": bits,
                                        "group": group, "config": config_of(r, m.split_k),
                                        "instr_per_weight": r.instr_per_weight, "model": asdict(m)})
    if before:
        print("before (the fixed default, M = 1):\n" + MODEL_HEADER + "\n" + "\n".join(before) + "\n")
    print("after (the static table):\n" + MODEL_HEADER + "\n" + "\n".join(after))
    import torch

    try:  # a run over some kernels × bits × groups keeps the others' entries
        kept = [e for e in json.loads(T.STATIC_TABLE.read_text())["configs"]
                if e["bits"] not in bits_list or e["group"] not in groups or e["kernel"] not in kernels]
    except (OSError, ValueError, KeyError):
        kept = []
    entries = sorted(kept + entries, key=lambda e: (-e["bits"], -e["group"], e["N"], e["K"], e["m_bucket"],
                                                    e["kernel"]))
    out = {"format": 1, "note": "chosen for sm_90 (132 SMs) by benchmarks/kernel_sass.py --ship (static model, no GPU)",
           "triton": triton.__version__, "torch": torch.__version__, "bandwidth": args.bandwidth,
           "latency_s": args.latency, "clock_hz": CLOCK_HZ, "sms": SMS, "configs": entries}
    T.STATIC_TABLE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {T.STATIC_TABLE}")
    return 0


def shipped_models(bandwidth: float = BANDWIDTH, latency: float = MEM_LATENCY, bits_list=(4, 2), groups=(128, 0)):
    """(kernel, Row, Model) for every M = 1 entry of the static table: its configuration compiled again
    and modelled (what ``tests/test_kernel_sass.py`` bounds)."""
    import harness.packed.tuning as T

    out = []
    for (kernel, mb, N, K, bits, group), c in sorted(T._static().items()):
        if kernel != "gemv" or mb != 1 or bits not in bits_list or group not in groups:
            continue
        space = [(1, c.block_n, c.block_k, c.num_warps, c.num_stages)]
        (r,) = static_rows("gemv", bits, group, space)
        out.append(("gemv", r, model(r, N, K, c.split_k, 1, bandwidth, latency)))
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", default="gemv,gemm,gemm_tc",
                   help="comma list of kernel families: harness.packed.gemv, .gemm, .gemm_tc")
    p.add_argument("--bits", default="4,2")
    p.add_argument("--groups", default="128,0", help="group sizes; 0 = per-channel")
    p.add_argument("--quick", action="store_true", help="the default launch configuration of each kernel only")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 tl.dot reference")
    p.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="bytes/s the ceiling is a fraction of")
    p.add_argument("--latency-ns", type=float, default=MEM_LATENCY * 1e9, help="loaded DRAM latency of the model")
    p.add_argument("--model", action="store_true", help="also model the static table's M = 1 configurations")
    p.add_argument("--ship", action="store_true", help="choose harness/packed/static_configs.json by the model")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "kernel_sass.json"))
    args = p.parse_args()
    args.latency = args.latency_ns * 1e-9
    return args


def main() -> int:
    args = parse()
    if not Path(tool("ptxas")).exists():
        print("triton's bundled ptxas is missing: nothing compiled")
        return 0
    if args.ship:
        return ship(args)
    if args.model:
        print(MODEL_HEADER)
        for kernel, r, m in shipped_models(args.bandwidth, args.latency):
            print(fmt_model(kernel, r, m))
        print(f"model: {SMS} SMs × {SCHEDULERS} schedulers at {CLOCK_HZ / 1e9:.2f} GHz, "
              f"{args.bandwidth / 1e12:.1f} TB/s, latency {args.latency * 1e9:.0f} ns (module docstring)\n")
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
