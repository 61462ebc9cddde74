"""Kernel benchmark: packed 2/4-bit dequant-matmul vs torch fp16 matmul on LLaMA-7B shapes.

    python benchmarks/kernels.py                 # on a CUDA machine: the full table (a few minutes: autotuning)
    python benchmarks/kernels.py --quick         # fewer shapes / M values
    python benchmarks/kernels.py --smoke         # CPU: tiny shapes through the Triton interpreter (checks the
                                                 # script and the kernels, timings meaningless)

For each (K, N) of LLaMA-7B (4096×4096 q/k/v/o, 4096→11008 gate/up, 11008→4096 down) and
M ∈ {1, 4, 16, 64}: time (CUDA graphs, ``triton.testing.do_bench_cudagraph``, median), achieved
GB/s = bytes that must move (packed weights + fp16 scales/zeros + x + y) / time, percent of the
*measured* peak bandwidth (a device-to-device copy timed in the same run), and speedup over
``torch.nn.functional.linear`` in fp16. Rows: fp16, 4-bit, 2-bit, and GemLite 4/2-bit side by side
when ``gemlite`` is importable (install its wheel with ``pip install --no-deps gemlite-*.whl``).
A last table times one LLaMA-7B decoder block's seven linears with an APTQ-style 2/4 mix (up_proj at
2 bits, the rest at 4: 77.7 % of the weights at 4 bits) against all-4, all-2 and fp16.

Without CUDA (and without ``--smoke``) it prints a "no GPU" line and exits 0. Results are also
written as JSON to ``results/benchmarks/kernels-<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"qkvo 4096x4096": (4096, 4096), "gate/up 4096x11008": (4096, 11008), "down 11008x4096": (11008, 4096)}
BLOCK = [("q_proj", 4096, 4096), ("k_proj", 4096, 4096), ("v_proj", 4096, 4096), ("o_proj", 4096, 4096),
         ("gate_proj", 4096, 11008), ("up_proj", 4096, 11008), ("down_proj", 11008, 4096)]  # (name, K, N)
APTQ_2BIT = {"up_proj"}  # 2-bit layers of the mix: 1 − 45.1M / 202.4M = 77.7 % of weights at 4 bits
GROUP = 128


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="M ∈ {1, 16} and the 4096×4096 shape only")
    p.add_argument("--smoke", action="store_true", help="CPU: tiny shapes through the Triton interpreter")
    p.add_argument("--group-size", type=int, default=GROUP)
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    return p.parse_args()


def make_layer(K: int, N: int, bits: int, group: int, device, seed: int = 0):
    """Random packed buffers (codes uniform, scales ~ 1e-2) and the equivalent fp16 weight (N, K)."""
    import torch

    from harness.packed.packing import pack_codes

    g = torch.Generator(device="cpu").manual_seed(seed)
    G = K // group
    codes = torch.randint(0, 2**bits, (N, K), generator=g, dtype=torch.uint8)
    qweight = pack_codes(codes, bits).to(device)
    scales = (torch.rand(G, N, generator=g) * 0.02 + 1e-3).to(device, torch.float16)
    zeros = torch.full((G, N), float(2 ** (bits - 1)), dtype=torch.float16, device=device)
    return qweight, scales, zeros, codes


def timer(fn, smoke: bool) -> float:
    """Median seconds of ``fn``: CUDA-graph replay on a GPU, wall clock in smoke mode."""
    if smoke:
        fn()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    import triton

    fn()  # compile / autotune outside the graph
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e-3


def peak_bandwidth() -> float:
    """Measured device-to-device copy bandwidth (bytes/s: read + write of a 1 GiB buffer)."""
    import torch
    import triton

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(lambda: dst.copy_(src), rep=200, return_mode="median") * 1e-3
    return 2 * 2**30 / t  # the buffers are freed on return


def gemlite_linear(bits: int, group: int, K: int, N: int, codes, scales, zeros):
    """A GemLite layer holding the same weights (HQQ format: (W_q − zeros)·scales), or the error text."""
    try:
        import torch
        from gemlite.core import DType
        try:
            from gemlite.core import GemLiteLinearTriton as Linear
        except ImportError:
            from gemlite.core import GemLiteLinear as Linear
        lin = Linear(bits, group_size=group, in_features=K, out_features=N, input_dtype=DType.FP16,
                     output_dtype=DType.FP16)
        lin.pack(codes.cuda(), scales.t().contiguous().cuda(), zeros.t().contiguous().cuda(), bias=None)
        x = torch.randn(1, K, dtype=torch.float16, device="cuda")
        lin(x)
        return lin
    except Exception as err:  # noqa: BLE001 - report and go on without the peer
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"


def main() -> int:
    args = parse()
    import torch

    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("no GPU: benchmarks/kernels.py times CUDA kernels and there is no CUDA device here; nothing measured "
              "(run it on a GPU machine, or --smoke to exercise the script on CPU)")
        return 0
    from harness.packed.ops import quant_matmul  # after TRITON_INTERPRET is set

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float16
    shapes = {"smoke 256x384": (256, 384)} if args.smoke else SHAPES
    if args.quick and not args.smoke:
        shapes = {"qkvo 4096x4096": SHAPES["qkvo 4096x4096"]}
    Ms = [1, 4] if args.smoke else [1, 16] if args.quick else [1, 4, 16, 64]
    group = 64 if args.smoke else args.group_size
    peak = None if args.smoke else peak_bandwidth()
    name = "cpu-interpreter" if args.smoke else torch.cuda.get_device_name()
    print(f"device: {name}; measured copy bandwidth: {peak / 1e9:.0f} GB/s" if peak else f"device: {name}")

    rows = []
    for label, (K, N) in shapes.items():
        W16 = torch.randn(N, K, dtype=dtype, device=device) * 0.02
        layers = {bits: make_layer(K, N, bits, group, device, seed=bits) for bits in (4, 2)}
        peers = {} if args.smoke else {bits: gemlite_linear(bits, group, K, N, *[layers[bits][i] for i in (3, 1, 2)])
                                       for bits in (4, 2)}
        for M in Ms:
            x = torch.randn(M, K, dtype=dtype, device=device)
            io = 2 * M * (K + N)
            t16 = timer(lambda x=x, W16=W16: torch.nn.functional.linear(x, W16), args.smoke)
            cands = [("fp16 torch", t16, 2 * N * K + io)]
            for bits, (q, s, z, _) in layers.items():
                t = timer(lambda x=x, q=q, s=s, z=z, bits=bits: quant_matmul(x, q, s, z, bits, group), args.smoke)
                cands.append((f"int{bits} ours", t, q.numel() * 4 + 4 * s.numel() + io))
                peer = peers.get(bits)
                if peer is not None and not isinstance(peer, str):
                    tp = timer(lambda x=x, peer=peer: peer(x), args.smoke)
                    cands.append((f"int{bits} gemlite", tp, q.numel() * 4 + 4 * s.numel() + io))
            for kernel, t, nbytes in cands:
                rows.append({"shape": label, "K": K, "N": N, "M": M, "kernel": kernel, "us": t * 1e6,
                             "GB_s": nbytes / t / 1e9, "pct_peak": 100 * nbytes / t / peak if peak else None,
                             "speedup_vs_fp16": t16 / t})
        for bits, peer in peers.items():
            if isinstance(peer, str):
                print(f"gemlite int{bits} on {label}: not run ({peer})")

    print_table(rows)
    block = block_mix(Ms, group, device, dtype, args.smoke)
    out = {"device": name, "peak_copy_GB_s": peak / 1e9 if peak else None, "group_size": group, "dtype": "float16",
           "torch": torch.__version__, "triton": __import__("triton").__version__, "rows": rows, "block": block}
    path = Path(args.out) / f"kernels-{'smoke' if args.smoke else name.replace(' ', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


def block_mix(Ms, group, device, dtype, smoke) -> list[dict]:
    """One LLaMA-7B decoder block's seven linears: fp16 vs all-4 vs all-2 vs the APTQ mix, per M."""
    import torch

    from harness.packed.ops import quant_matmul

    block = BLOCK if not smoke else [(n, 128, 192) for n, _, _ in BLOCK]
    weights = {n: torch.randn(N, K, dtype=dtype, device=device) * 0.02 for n, K, N in block}
    packed = {(n, b): make_layer(K, N, b, group, device, seed=i)[:3] for i, (n, K, N) in enumerate(block)
              for b in (4, 2)}
    plans = {"int4": dict.fromkeys(weights, 4), "int2": dict.fromkeys(weights, 2),
             "aptq-mix": {n: 2 if n in APTQ_2BIT else 4 for n in weights}}
    n_total = sum(K * N for _, K, N in block)
    ratio = sum(K * N for n, K, N in block if n not in APTQ_2BIT) / n_total
    out = []
    for M in Ms:
        xs = {n: torch.randn(M, K, dtype=dtype, device=device) for n, K, _ in block}

        def fp16(xs=xs):
            return [torch.nn.functional.linear(xs[n], weights[n]) for n in weights]

        t16 = timer(fp16, smoke)
        out.append({"M": M, "plan": "fp16", "us": t16 * 1e6, "speedup_vs_fp16": 1.0, "avg_bits": 16})
        for plan, bits in plans.items():
            def run(xs=xs, bits=bits):
                return [quant_matmul(xs[n], *packed[(n, bits[n])], bits[n], group) for n in weights]

            t = timer(run, smoke)
            avg = sum(K * N * bits[n] for n, K, N in block) / n_total
            out.append({"M": M, "plan": plan, "us": t * 1e6, "speedup_vs_fp16": t16 / t, "avg_bits": avg})
    print(f"\nLLaMA-7B decoder block (7 linears), APTQ mix: {100 * ratio:.1f}% of weights at 4 bits")
    print(f"{'M':>4} {'plan':>9} {'avg bits':>8} {'time us':>9} {'x fp16':>7}")
    for r in out:
        print(f"{r['M']:>4} {r['plan']:>9} {r['avg_bits']:>8.2f} {r['us']:>9.1f} {r['speedup_vs_fp16']:>7.2f}")
    return out


def print_table(rows: list[dict]) -> None:
    print(f"\n{'shape':<20} {'M':>3} {'kernel':<13} {'time us':>9} {'GB/s':>8} {'% peak':>7} {'x fp16':>7}")
    for r in rows:
        pct = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "-"
        print(f"{r['shape']:<20} {r['M']:>3} {r['kernel']:<13} {r['us']:>9.1f} {r['GB_s']:>8.1f} {pct:>7} "
              f"{r['speedup_vs_fp16']:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
