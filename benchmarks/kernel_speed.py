"""Kernel benchmark: packed 2/4-bit dequant-matmul vs torch fp16 matmul on LLaMA-7B shapes.

    python benchmarks/kernel_speed.py                 # on a CUDA machine: the full table (a few minutes: autotuning)
    python benchmarks/kernel_speed.py --quick         # fewer shapes / M values
    python benchmarks/kernel_speed.py --smoke         # CPU: tiny shapes through the Triton interpreter (checks the
                                                 # script and the kernels, timings meaningless)

For each (K, N) of LLaMA-7B (4096×4096 q/k/v/o, 4096→11008 gate/up, 11008→4096 down) and
M ∈ {1, 4, 16, 64}: every kernel's output is first checked against the reference
(``reference_matmul``; fp16 and torch's int4 against their own dequantized weights), and a kernel whose
output is wrong is reported, not timed. Then two times (CUDA graphs,
``triton.testing.do_bench_cudagraph``, median): *warm*, the same buffers every call (a 4096×4096 4-bit
layer stays in the 50 MB L2), and *cold*, calls rotating over enough copies of the layer to exceed twice
the L2 size, so that weights come from HBM as in a real decode step. Achieved GB/s = bytes that must
move (packed weights + fp16 scales/zeros + x + y) / cold time, percent of the *measured* peak bandwidth
(a device-to-device copy timed in the same run), and speedup over ``torch.nn.functional.linear`` in fp16
(cold vs cold); every contender, peers included, rotates over its own copies for the cold time.
Rows: fp16, ours 4/2-bit, torch's own int4 kernel (``torch.ops.aten._weight_int4pack_mm``,
bf16 activations, same weights), and GemLite 4/2-bit when ``gemlite`` is importable (install its wheel
with ``pip install --no-deps gemlite-*.whl``).
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
    return triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e-3


def copies_for_cold(nbytes: int, smoke: bool) -> int:
    """How many copies of a layer's buffers, read in turn, exceed twice the L2 cache (1 in smoke mode)."""
    if smoke:
        return 2
    import torch

    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    return max(2, min(64, -(-2 * l2 // max(nbytes, 1))))


def warm_and_cold(make_call, args_list, smoke: bool) -> tuple[float, float]:
    """(warm, cold) seconds per call: ``make_call(args)`` on ``args_list[0]`` only, then rotating over all."""
    first = args_list[0]
    warm = timer(lambda: make_call(*first), smoke)
    cold = timer(lambda: [make_call(*a) for a in args_list], smoke) / len(args_list)
    return warm, cold


def max_rel_err(y, ref) -> float:
    return ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)).item()


def torch_int4(codes, scales, zeros, group: int, device):
    """torch's tinygemm int4 layout of the same weights, or the error text. tinygemm dequantizes
    ``(q − 8)·s + zero``; ours is ``s·(q − z)``, so its zero is ``s·(8 − z)`` (bf16 activations)."""
    import torch

    try:
        N, K = codes.shape
        c = codes.to(device=device, dtype=torch.int32)
        u8 = ((c[:, ::2] << 4) | c[:, 1::2]).to(torch.uint8)  # (N, K/2): even k in the high nibble
        packed = torch.ops.aten._convert_weight_to_int4pack(u8, 8)
        s = scales.float()  # (G, N)
        sz = torch.stack([s, s * (8 - zeros.float())], dim=2).to(torch.bfloat16).contiguous()  # (G, N, 2)
        return packed, sz
    except Exception as err:  # noqa: BLE001 - report and go on without the peer
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"


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


def gemlite_layers(n: int, bits: int, group: int, K: int, N: int, codes, scales, zeros):
    """``n`` GemLite layers holding the same weights (rotated over for the cold time), or the error text."""
    first = gemlite_linear(bits, group, K, N, codes, scales, zeros)
    if isinstance(first, str):
        return first
    return [first] + [gemlite_linear(bits, group, K, N, codes, scales, zeros) for _ in range(n - 1)]


def main() -> int:
    args = parse()
    import torch

    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("no GPU: benchmarks/kernel_speed.py times CUDA kernels and there is no CUDA device here; nothing "
              "measured (run it on a GPU machine, or --smoke to exercise the script on CPU)")
        return 0
    from harness.packed.ops import quant_matmul  # after TRITON_INTERPRET is set
    from harness.packed.packing import dequantize_packed, reference_matmul

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

    rows, failures = [], []
    for label, (K, N) in shapes.items():
        layers = {bits: make_layer(K, N, bits, group, device, seed=bits) for bits in (4, 2)}
        W16 = dequantize_packed(*layers[4][:3], 4, group, torch.float16)  # (N, K): fp16 with the 4-bit values
        n_cold = copies_for_cold(2 * N * K, args.smoke)
        W16s = [W16] + [W16.clone() for _ in range(n_cold - 1)]
        packs = {}
        for bits in (4, 2):
            n = copies_for_cold(layers[bits][0].numel() * 4, args.smoke)
            packs[bits] = [layers[bits][:3]] + [tuple(t.clone() for t in layers[bits][:3]) for _ in range(n - 1)]
        peers = {} if args.smoke else {bits: gemlite_layers(len(packs[bits]), bits, group, K, N,
                                                            *[layers[bits][i] for i in (3, 1, 2)]) for bits in (4, 2)}
        tiny = None if args.smoke else torch_int4(layers[4][3], layers[4][1], layers[4][2], group, device)
        for M in Ms:
            x = torch.randn(M, K, dtype=dtype, device=device)
            io = 2 * M * (K + N)
            cands = []  # (kernel, call, args list, reference output, bytes)
            cands.append(("fp16 torch", torch.nn.functional.linear, [(x, w) for w in W16s],
                          x.float() @ W16.float().t(), 2 * N * K + io))
            for bits, (q, s, z, _) in layers.items():
                ref = reference_matmul(x, q, s, z, bits, group)
                nbytes = q.numel() * 4 + 4 * s.numel() + io
                cands.append((f"int{bits} ours", lambda x, q, s, z, bits=bits: quant_matmul(x, q, s, z, bits, group),
                              [(x, *p) for p in packs[bits]], ref, nbytes))
                peer = peers.get(bits)
                if peer is not None and not isinstance(peer, str):  # as many layers as ours rotate over: cold too
                    cands.append((f"int{bits} gemlite", lambda x, peer: peer(x), [(x, p) for p in peer], ref, nbytes))
            if tiny is not None and not isinstance(tiny, str):
                xb = x.to(torch.bfloat16)
                ref = reference_matmul(xb, *layers[4][:3], 4, group)
                copies = [tiny] + [tuple(t.clone() for t in tiny) for _ in range(len(packs[4]) - 1)]
                cands.append(("int4 torch", lambda xb, w, sz: torch.ops.aten._weight_int4pack_mm(xb, w, group, sz),
                              [(xb, *c) for c in copies], ref, nbytes_int4(K, N, group, io)))
            t16 = None
            for kernel, call, arglist, ref, nbytes in cands:
                try:
                    err = max_rel_err(call(*arglist[0]), ref)
                except Exception as e:  # noqa: BLE001 - a peer that cannot run this shape
                    failures.append(f"{kernel} {label} M={M}: {type(e).__name__}: {str(e)[:120]}")
                    continue
                tol = 2e-2 if "torch" in kernel and "int4" in kernel else 1e-2
                if err > tol:
                    failures.append(f"{kernel} {label} M={M}: output differs from the reference (rel err {err:.2e}),"
                                    " not timed")
                    continue
                warm, cold = warm_and_cold(call, arglist, args.smoke)
                if kernel == "fp16 torch":
                    t16 = cold
                rows.append({"shape": label, "K": K, "N": N, "M": M, "kernel": kernel, "rel_err": err,
                             "us": cold * 1e6, "us_warm": warm * 1e6, "cold_copies": len(arglist),
                             "GB_s": nbytes / cold / 1e9, "pct_peak": 100 * nbytes / cold / peak if peak else None,
                             "speedup_vs_fp16": t16 / cold if t16 else None})
        for bits, peer in peers.items():
            if isinstance(peer, str):
                failures.append(f"gemlite int{bits} on {label}: not run ({peer})")
        if isinstance(tiny, str):
            failures.append(f"torch int4 on {label}: not run ({tiny})")
    for f in failures:
        print(f)
    print_table(rows)
    block = block_mix(Ms, group, device, dtype, args.smoke)
    out = {"device": name, "peak_copy_GB_s": peak / 1e9 if peak else None, "group_size": group, "dtype": "float16",
           "torch": torch.__version__, "triton": __import__("triton").__version__, "rows": rows, "block": block,
           "failures": failures}
    if not args.smoke:  # the autotuners' choices, in the shipped table's format (harness/packed/tuned_configs.json)
        from harness.packed.tuning import export_tuned

        tuned = Path(args.out) / "kernels-tuned.json"
        tuned.parent.mkdir(parents=True, exist_ok=True)
        tuned.write_text(json.dumps({"format": 1, "configs": export_tuned(name)}, indent=1))
        print(f"written {tuned}")
    path = Path(args.out) / f"kernels-{'smoke' if args.smoke else name.replace(' ', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return 0


def block_mix(Ms, group, device, dtype, smoke) -> list[dict]:
    """One LLaMA-7B decoder block's seven linears: fp16 vs all-4 vs all-2 vs the APTQ mix, per M."""
    import torch

    from harness.packed.ops import quant_matmul
    from harness.packed.packing import reference_matmul

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

            errs = [max_rel_err(y, reference_matmul(xs[n], *packed[(n, bits[n])], bits[n], group))
                    for n, y in zip(weights, run(), strict=True)]
            if max(errs) > 1e-2:  # a wrong output is reported, not timed
                out.append({"M": M, "plan": plan, "error": f"output differs from the reference ({max(errs):.2e})"})
                continue
            t = timer(run, smoke)
            avg = sum(K * N * bits[n] for n, K, N in block) / n_total
            out.append({"M": M, "plan": plan, "us": t * 1e6, "speedup_vs_fp16": t16 / t, "avg_bits": avg})
    print(f"\nLLaMA-7B decoder block (7 linears), APTQ mix: {100 * ratio:.1f}% of weights at 4 bits")
    print(f"{'M':>4} {'plan':>9} {'avg bits':>8} {'time us':>9} {'x fp16':>7}")
    for r in out:
        if "error" in r:
            print(f"{r['M']:>4} {r['plan']:>9} {r['error']}")
            continue
        print(f"{r['M']:>4} {r['plan']:>9} {r['avg_bits']:>8.2f} {r['us']:>9.1f} {r['speedup_vs_fp16']:>7.2f}")
    return out


def nbytes_int4(K: int, N: int, group: int, io: int) -> int:
    """Bytes tinygemm's int4 layout moves: 0.5 per weight + bf16 scale and zero per group."""
    return N * K // 2 + 4 * N * (K // group) + io


def print_table(rows: list[dict]) -> None:
    print(f"\n{'shape':<20} {'M':>3} {'kernel':<13} {'cold us':>9} {'warm us':>9} {'GB/s':>8} {'% peak':>7} "
          f"{'x fp16':>7}")
    for r in rows:
        pct = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "-"
        sp = f"{r['speedup_vs_fp16']:.2f}" if r["speedup_vs_fp16"] else "-"
        print(f"{r['shape']:<20} {r['M']:>3} {r['kernel']:<13} {r['us']:>9.1f} {r['us_warm']:>9.1f} {r['GB_s']:>8.1f} "
              f"{pct:>7} {sp:>7}")


if __name__ == "__main__":
    sys.exit(main())
