"""The GPU check's kernel steps (``scripts/gpu_check.py``): correctness with activation spikes, split-K
determinism, bandwidth against torch's fp16 and int4 kernels, and the ``ncu`` target.

    python benchmarks/gpu_kernels.py correctness|splitk|speed|ncu-target

Every launch goes through the production path (``harness.packed.ops.quant_matmul`` → ``launch`` with no
config), with ``HARNESS_AUTOTUNE=0`` set by the check: the shipped or default configurations, never a
tuning run. Each measurement is one JSON line (``benchmarks/_jsonl.py``). With ``GPU_CHECK_DRY_RUN=1``
the same code runs on the CPU at tiny shapes under the Triton interpreter (timings meaningless).
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _jsonl import dry_run, emit  # noqa: E402
from kernel_speed import copies_for_cold, peak_bandwidth, torch_int4  # noqa: E402

LLAMA7B = {"qkvo": (4096, 4096), "gate_up": (4096, 11008), "down": (11008, 4096)}  # name → (K, N)
MASKED = {"masked": (4096, 4000)}  # N not a multiple of any tile width: the masked edge at a real K
TINY = {"qkvo": (256, 256), "gate_up": (256, 320)}  # dry run (N = 320 masks a tile): the code paths, not coverage
SPIKE = 6.0e4  # |x| of the "massive activations" of LLaMA-family models (a few channels of down_proj's input)
SPIKE_CHANNELS = 3
TOL = 1e-2  # max |y − ref| / max |ref|: fp16 output rounding is ~5e-4; a wrong tile or an overflow is ≥ 1e-1


def shapes(masked: bool = False) -> dict[str, tuple[int, int]]:
    """The LLaMA-7B shapes (with ``masked``, also one whose N leaves a partial tile); tiny ones in the dry run."""
    return TINY if dry_run() else {**LLAMA7B, **(MASKED if masked else {})}


def device() -> str:
    return "cpu" if dry_run() else "cuda"


def make_layer(K: int, N: int, bits: int, group: int, seed: int = 0):
    """Random packed buffers (codes uniform, scales ~ 1e-2, zero at the middle code) on the check's device:
    (qweight (K/P, N) int32, scales (G, N) fp16, zeros (G, N) fp16)."""
    import torch

    from harness.packed.packing import pack_codes

    dev = device()
    g = torch.Generator(device=dev).manual_seed(seed)  # made on the device: 45M codes a layer at 11008×4096
    G = 1 if group == -1 else K // group
    codes = torch.randint(0, 2**bits, (N, K), generator=g, dtype=torch.uint8, device=dev)
    scales = (torch.rand(G, N, generator=g, device=dev) * 0.02 + 1e-3).to(torch.float16)
    zeros = torch.full((G, N), float(2 ** (bits - 1)), dtype=torch.float16, device=dev)
    return pack_codes(codes, bits), scales, zeros


def activations(M: int, K: int, spikes: bool, seed: int = 0):
    """x (M, K) fp16 ~ N(0, 1); with ``spikes``, ``SPIKE_CHANNELS`` channels at ±``SPIKE`` in every row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    if spikes:
        ch = torch.randperm(K, generator=g)[:SPIKE_CHANNELS]
        x[:, ch] = SPIKE * torch.sign(torch.randn(M, SPIKE_CHANNELS, generator=g))
    return x.to(device(), torch.float16)


def reference(x, layer, bits: int, group: int):
    """fp32 ``x @ Ŵᵀ`` from the same packed buffers (the kernels' contract; no fp16 partial sums)."""
    import torch

    from harness.packed.packing import dequantize_packed

    W = dequantize_packed(*layer, bits, group, torch.float32)  # (N, K)
    return x.float() @ W.t()


def rel_err(y, ref) -> float:
    y = y.float()
    if not bool(y.isfinite().all()):
        return math.inf
    return ((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def run_op(x, layer, bits: int, group: int, half2: bool):
    from harness.packed.ops import quant_matmul

    os.environ["HARNESS_HALF2"] = "1" if half2 else "0"  # read per launch (harness.packed.switches)
    return quant_matmul(x, *layer, bits, group)


def correctness() -> int:
    """Every (shape, bits, group, M, spikes, half2) against the fp32 reference; the overflow-prone spikes
    first for each layer (one random layer per shape × bits × group)."""
    Ms = (1, 16) if dry_run() else (1, 2, 4, 8, 16)
    bad = 0
    for name, (K, N) in shapes(masked=True).items():
        for bits in (4, 2):
            for group in (128, -1):
                layer = make_layer(K, N, bits, group, seed=bits)
                for spikes in (True, False):
                    for M in Ms:
                        x = activations(M, K, spikes, seed=M)
                        ref = reference(x, layer, bits, group)
                        for half2 in (True, False):
                            err = rel_err(run_op(x, layer, bits, group, half2), ref)
                            ok = err <= TOL
                            bad += not ok
                            emit("correct", shape=name, K=K, N=N, bits=bits, group=group, M=M, spikes=spikes,
                                 half2=half2, rel_err=err, ok=ok)
    emit("correct_summary", failures=bad)
    return 1 if bad else 0


def counters_at_zero() -> bool:
    """Every split-K arrival counter of ``harness.packed.kernels`` is back at zero after the launches."""
    from harness.packed import kernels

    return all(int(c.count_nonzero()) == 0 for c in kernels._COUNTERS.values())


def splitk(repeats: int | None = None) -> int:
    """Split-K configurations at the real shapes: 20 repeated calls (2 in the dry run) bitwise identical,
    counters back at zero."""
    import torch

    from harness.packed.kernels import DEFAULT_GEMM, DEFAULT_GEMV, KernelConfig, launch

    bad = 0
    for name, (K, N) in shapes().items():
        for bits in (4, 2):
            layer = make_layer(K, N, bits, 128, seed=bits)
            for M in (1, 16):
                base = DEFAULT_GEMV if M == 1 else DEFAULT_GEMM
                cfg = KernelConfig(base.block_n if M == 1 else 64, 64 if dry_run() else 128, split_k=4,
                                   block_m=16, num_warps=base.num_warps, num_stages=base.num_stages)
                x = activations(M, K, spikes=False, seed=7)
                first = launch(x, *layer, bits, 128, config=cfg)
                n = repeats if repeats is not None else 2 if dry_run() else 20
                same = all(torch.equal(first, launch(x, *layer, bits, 128, config=cfg)) for _ in range(n))
                if x.is_cuda:
                    torch.cuda.synchronize()
                zero = counters_at_zero()
                err = rel_err(first, reference(x, layer, bits, 128))
                ok = same and zero and err <= TOL
                bad += not ok
                emit("splitk", shape=name, K=K, N=N, bits=bits, M=M, split_k=cfg.split_k, bitwise_identical=same,
                     counters_zero=zero, rel_err=err, ok=ok)
    return 1 if bad else 0


def graph_timer(calls):
    """Seconds per call of ``calls`` (a list of zero-argument callables, one per weight copy): on a GPU one
    pass over all of them captured in a CUDA graph and replayed between CUDA events (GPU time, no launch
    overhead); on the CPU one timed pass."""
    import time

    import torch

    if not torch.cuda.is_available() or dry_run():
        t0 = time.perf_counter()
        for c in calls:
            c()
        return (time.perf_counter() - t0) / len(calls)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation) outside the graph
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    reps = max(5, 2000 // len(calls))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e-3 / (reps * len(calls))


def contenders(x, K: int, N: int, group: int):
    """(name, bytes moved per call, [call per weight copy], reference output) for fp16, ours 4/2-bit and
    torch int4, every one rotating over enough copies of its weights to read them from HBM (cold)."""
    import torch

    from harness.packed.ops import quant_matmul
    from harness.packed.packing import unpack_codes

    io = 2 * x.shape[0] * (K + N)
    out = []
    W16 = (torch.randn(N, K, device=x.device) * 0.02).to(torch.float16)
    n = copies_for_cold(W16.numel() * 2, dry_run())
    W16s = [W16] + [W16.clone() for _ in range(n - 1)]
    out.append(("fp16 torch", 2 * N * K + io, [lambda w=w: torch.nn.functional.linear(x, w) for w in W16s],
                x.float() @ W16.float().t()))
    for bits in (4, 2):
        layer = make_layer(K, N, bits, group, seed=bits)
        n = copies_for_cold(layer[0].numel() * 4, dry_run())
        copies = [layer] + [tuple(t.clone() for t in layer) for _ in range(n - 1)]
        nbytes = sum(t.numel() * t.element_size() for t in layer) + io
        out.append((f"int{bits} ours", nbytes, [lambda c=c, b=bits: quant_matmul(x, *c, b, group) for c in copies],
                    reference(x, layer, bits, group)))
        tiny = None if bits != 4 or dry_run() else \
            torch_int4(unpack_codes(layer[0], 4), layer[1], layer[2], group, x.device)  # None, the op, or why not
        if isinstance(tiny, str):  # the peer's op changed: report it, time the others
            emit("speed", kernel="int4 torch", ok=None, skipped=tiny)
        elif tiny is not None:
            xb = x.to(torch.bfloat16)
            copies = [tiny] + [tuple(t.clone() for t in tiny) for _ in range(n - 1)]
            nbytes = N * K // 2 + 4 * N * (K // group) + io
            out.append(("int4 torch", nbytes,
                        [lambda c=c, xb=xb: torch.ops.aten._weight_int4pack_mm(xb, c[0], group, c[1]) for c in copies],
                        reference(xb, layer, bits, group)))
    return out


def speed() -> int:
    """GB/s, cold and warm, and speed-up over fp16 at the three shapes for M ∈ {1, 4, 16}."""
    os.environ["HARNESS_HALF2"] = "1"
    peak = None if dry_run() else peak_bandwidth()
    emit("peak_bandwidth", copy_GB_s=peak / 1e9 if peak else None)
    Ms = (1, 4) if dry_run() else (1, 4, 16)
    bad = 0
    for name, (K, N) in shapes().items():
        for M in Ms:
            x = activations(M, K, spikes=False, seed=M)
            t16 = None
            for kernel, nbytes, calls, ref in contenders(x, K, N, 128):
                try:
                    err = rel_err(calls[0](), ref)
                except Exception as e:  # noqa: BLE001 - a contender that cannot run this shape
                    err = math.inf
                    emit("speed", shape=name, M=M, kernel=kernel, ok=False, error=f"{type(e).__name__}: {e}"[:300])
                    bad += kernel != "int4 torch"
                    continue
                if err > 2 * TOL:  # a wrong kernel is reported, not timed (tinygemm's bf16: 2 × TOL)
                    bad += 1
                    emit("speed", shape=name, M=M, kernel=kernel, rel_err=err, ok=False)
                    continue
                cold, warm = graph_timer(calls), graph_timer(calls[:1])
                t16 = cold if kernel == "fp16 torch" else t16
                emit("speed", shape=name, K=K, N=N, M=M, kernel=kernel, rel_err=err, ok=True, us_cold=cold * 1e6,
                     us_warm=warm * 1e6, copies=len(calls), GB_s=nbytes / cold / 1e9,
                     pct_copy_peak=100 * nbytes / cold / peak if peak else None,
                     speedup_vs_fp16=t16 / cold if t16 else None)
    return 1 if bad else 0


def ncu_target() -> int:
    """What ``ncu`` profiles: the default 4-bit g128 GEMV at 4096×4096, M = 1, a few launches."""
    import torch

    K, N = shapes()["qkvo"]
    layer = make_layer(K, N, 4, 128)
    x = activations(1, K, spikes=False)
    for _ in range(5):
        run_op(x, layer, 4, 128, half2=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    emit("ncu_target", K=K, N=N, launches=5)
    return 0


def warm_cases() -> list[tuple]:
    """Every (shape, bits, group, M, half2) that compiles a distinct kernel in the later steps: one M per
    Triton specialisation (M = 1 GEMV; 2–8 and 16 GEMM, 16 being divisible by 16), plus split-K."""
    return [(name, bits, group, M, half2) for name in shapes(masked=True) for bits in (4, 2) for group in (128, -1)
            for M in (1, 2, 4, 8, 16) for half2 in (True, False)]


def warm_worker(index: int, workers: int) -> int:
    """Compile (and run once) this worker's share of ``warm_cases``; Triton's cache keeps the binaries."""
    import torch

    mine = (warm_cases()[:4] if dry_run() else warm_cases())[index::workers]  # the dry run: the code path
    layers = {}
    for name, bits, group, M, half2 in mine:
        K, N = shapes(masked=True)[name]
        if (name, bits, group) not in layers:
            layers[(name, bits, group)] = make_layer(K, N, bits, group)
        run_op(activations(M, K, spikes=False), layers[(name, bits, group)], bits, group, half2)
    if index == 0:
        splitk(repeats=0)
    if torch.cuda.is_available() and not dry_run():
        torch.cuda.synchronize()
    return 0


def warm() -> int:
    """Compile every kernel the check runs in parallel processes (the GPU machine has 16 cores; one
    compile takes 1.5–4 s and the check needs about 30), so the timed steps find them in the cache."""
    import subprocess

    workers = 2 if dry_run() else min(12, max(1, (os.cpu_count() or 2) - 2))
    procs = [subprocess.Popen([sys.executable, __file__, "warm-worker", str(i), str(workers)],
                              env={**os.environ, "GPU_CHECK_JSONL": ""}) for i in range(workers)]
    rcs = [p.wait() for p in procs]
    emit("warm", workers=workers, cases=len(warm_cases()), failed_workers=sum(rc != 0 for rc in rcs),
         ok=not any(rcs))
    return 1 if any(rcs) else 0


STEPS = {"warm": warm, "correctness": correctness, "splitk": splitk, "speed": speed, "ncu-target": ncu_target}

if __name__ == "__main__":
    if sys.argv[1] == "warm-worker":
        sys.exit(warm_worker(int(sys.argv[2]), int(sys.argv[3])))
    sys.exit(STEPS[sys.argv[1]]())
