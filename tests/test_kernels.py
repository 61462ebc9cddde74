"""Packed format and Triton kernels against the pure-PyTorch reference.

Every kernel test runs on one of two devices: ``cpu`` = the Triton interpreter (conftest.py sets
``TRITON_INTERPRET=1`` when there is no CUDA; small shapes, autotune off) or ``cuda`` = compiled, marked
``gpu`` (``pytest -m gpu`` on a GPU machine runs the same matrix for real, plus the autotuned path).
"""
import pytest
import torch

pytest.importorskip("triton")  # the kernels need it; the rest of the harness does not (test_no_triton.py)

from conftest import require_tool  # noqa: E402

from harness.errors import ConfigError  # noqa: E402
from harness.packed.kernels import KernelConfig, launch  # noqa: E402
from harness.packed.ops import quant_matmul  # noqa: E402
from harness.packed.packing import (  # noqa: E402
    check_packable,
    dequantize_packed,
    pack_codes,
    pack_weight,
    reference_matmul,
    unpack_codes,
)
from harness.quantize.primitives import QuantSpec, rtn  # noqa: E402

CUDA = torch.cuda.is_available()
TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}


DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(CUDA, reason="the interpreter runs only without CUDA")),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")])]


def packed(N, K, bits, group_size, seed=0, device="cpu", std=1.0):
    g = torch.Generator().manual_seed(seed)
    W = std * torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g)  # rows of different ranges
    qw = rtn(W, QuantSpec(bits, group_size))
    q, s, z = pack_weight(qw.codes, qw.scale, qw.zero, bits, group_size)
    return qw, q.to(device), s.to(device), z.to(device)


def check(x, q, s, z, bits, group_size, config=None):
    y = launch(x, q, s, z, bits, group_size, config)
    ref = reference_matmul(x, q, s, z, bits, group_size)
    assert y.dtype == x.dtype and y.shape == ref.shape
    err = (y.float() - ref.float()).abs().max().item()
    assert err <= TOL[x.dtype] * ref.float().abs().max().item() + 1e-6, err


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("group_size", [-1, 16, 64])
def test_pack_unpack_round_trip(bits, group_size):
    qw, q, s, z = packed(24, 128, bits, group_size, device="cpu")
    assert q.dtype == torch.int32 and q.shape == (128 * bits // 32, 24)
    assert torch.equal(unpack_codes(q, bits), qw.codes)
    assert s.dtype == z.dtype == torch.float16 and s.shape == (1 if group_size == -1 else 128 // group_size, 24)
    # Dequantized packed weights equal the fake-quant grid up to the fp16 rounding of the scales.
    assert torch.allclose(dequantize_packed(q, s, z, bits, group_size), qw.Q, rtol=1e-3, atol=1e-4)


def test_bit_layout_is_the_documented_one():
    codes = torch.arange(8, dtype=torch.uint8).view(1, 8)  # one row, k = 0..7 → codes 0..7
    assert pack_codes(codes, 4).item() == 0x76543210
    codes2 = torch.tensor([[3] + [0] * 14 + [2]], dtype=torch.uint8)  # k=0 → bits 1-0, k=15 → bits 31-30
    assert pack_codes(codes2, 2).item() == (2 << 30) + 3 - 2**32


def test_unpackable_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match="3-bit"):
        check_packable(64, 3, -1)
    with pytest.raises(ConfigError, match="not a multiple of 16"):
        check_packable(72, 2, -1)
    with pytest.raises(ConfigError, match="power of two"):
        check_packable(96, 4, 48)


# (N, K): N not a multiple of the block, K of 2·BLOCK_K; the larger shape in the slow tier
SHAPES = [(48, 128), pytest.param(96, 256, marks=pytest.mark.slow)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3, 16, 64])
def test_kernel_matches_reference(N, K, bits, group_size, dtype, M, device):
    _, q, s, z = packed(N, K, bits, group_size, seed=N + K + bits, device=device)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(device, dtype)
    block_k = 64 if group_size == -1 else min(64, group_size)
    config = KernelConfig(block_n=32, block_k=block_k, split_k=1 if M == 16 else 2, block_m=16 if M < 64 else 32)
    check(x, q, s, z, bits, group_size, config)


# The tensor-core GEMM (harness.packed.gemm_tc, issue 26): 2 ≤ M ≤ 16, fp16, K blocks of 16 packed words;
# K = 200 (4-bit): the last block is a partial one (masked words and activations); 2-bit g128: K blocks of one
# group (8 words, rows paired in registers), N = 40 masked.
TC_CASES = [(4, -1, 48, 200), (4, 128, 48, 256), (4, 256, 40, 512), (2, -1, 48, 512), (2, 256, 40, 512),
            (2, 128, 40, 384)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits,group_size,N,K", TC_CASES)
@pytest.mark.parametrize("M,split_k", [(2, 1), (5, 2), (16, 1)])
def test_tensor_core_gemm_matches_reference(bits, group_size, N, K, M, split_k, device):
    from harness.packed import gemm_tc

    _, q, s, z = packed(N, K, bits, group_size, seed=N + K + bits, device=device, std=0.01)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(device, torch.float16)
    x[0, 3] = 6e4  # a spike (small weights keep y finite): the field sums are fp32, nothing overflows
    config = KernelConfig(block_n=32, block_k=gemm_tc.block_k(bits, group_size), split_k=split_k, block_m=16,
                          num_warps=2, num_stages=2)
    check(x, q, s, z, bits, group_size, config)


@pytest.mark.parametrize("device", DEVICES)
def test_launch_routes_small_fp16_batches_to_the_tensor_core_gemm(device, monkeypatch):
    """config=None, fp16, 2 ≤ M ≤ 16 and groups of whole K blocks (2-bit g128 included) run gemm_tc; 2-bit g64,
    bf16, M = 17 and HARNESS_HALF2=0 run the reshaping GEMM."""
    from harness.packed import gemm, gemm_tc

    ran = []
    for mod, name in ((gemm_tc, "gemm_tc_even"), (gemm, "gemm_kernel")):
        kern = getattr(mod, name)

        class Spy:
            def __init__(self, kern, name):
                self.kern, self.name = kern, name

            def __getitem__(self, grid):
                ran.append(self.name)
                return self.kern[grid]

        monkeypatch.setattr(mod, name, Spy(kern, name))
    cases = [(4, 128, 3, torch.float16, "gemm_tc_even"), (2, -1, 16, torch.float16, "gemm_tc_even"),
             (2, 128, 3, torch.float16, "gemm_tc_even"), (2, 64, 3, torch.float16, "gemm_kernel"),
             (4, 128, 3, torch.bfloat16, "gemm_kernel"),
             (4, -1, 17, torch.float16, "gemm_kernel")]
    for bits, group, M, dtype, want in cases:
        _, q, s, z = packed(32, 256, bits, group, device=device)
        x = torch.randn(M, 256, generator=torch.Generator().manual_seed(M)).to(device, dtype)
        ran.clear()
        check(x, q, s, z, bits, group)
        assert ran == [want], (bits, group, M, dtype, ran)
    monkeypatch.setenv("HARNESS_HALF2", "0")
    ran.clear()
    check(x.half(), q, s, z, 4, -1)
    assert ran == ["gemm_kernel"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 5])
def test_kernel_fp32_activations_and_split_k_with_a_tail(M, device):
    _, q, s, z = packed(40, 96, 4, -1, device=device)  # K = 96: the last K block of 64 is half masked
    x = torch.randn(M, 96, device=device)
    check(x, q, s, z, 4, -1, KernelConfig(block_n=16, block_k=64, split_k=2))
    check(x, q, s, z, 4, -1, KernelConfig(block_n=64, block_k=32, split_k=3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", [2, 4])
def test_smallest_groups(bits, device):
    """Group 16: a 2-bit group is one word, less than the GEMV's two-word block, so M = 1 runs the GEMM."""
    _, q, s, z = packed(40, 128, bits, 16, device=device)
    x = torch.randn(1, 128, dtype=torch.float16, device=device)
    check(x, q, s, z, bits, 16, KernelConfig(block_n=32, block_k=64, split_k=2))


@pytest.mark.parametrize("device", DEVICES)
def test_op_shapes_fake_tensor_and_compile(device):
    _, q, s, z = packed(32, 64, 4, 32, device=device)
    x = torch.randn(2, 3, 64, dtype=torch.float16, device=device)
    y = torch.ops.harness.quant_matmul(x, q, s, z, 4, 32)
    assert y.shape == (2, 3, 32) and y.dtype == torch.float16
    torch.library.opcheck(quant_matmul, (x, q, s, z, 4, 32), test_utils=("test_schema", "test_faketensor"))

    def f(x):
        return torch.ops.harness.quant_matmul(x, q, s, z, 4, 32).relu()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # no graph break through the op
    assert torch.allclose(compiled(x).float(), f(x).float(), atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_split_k_is_deterministic_and_needs_no_memset(M, dtype, device):
    """Split-K partials meet in fixed order (the last split sums them): repeated calls are bitwise equal,
    and the arrival counters are back at zero after every call (so no memset kernel precedes a call)."""
    from harness.packed.kernels import _counters

    _, q, s, z = packed(80, 512, 4, 64, device=device)
    x = torch.randn(M, 512, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    config = KernelConfig(block_n=32, block_k=64, split_k=4, block_m=16)
    ys = [launch(x, q, s, z, 4, 64, config) for _ in range(3)]
    assert all(torch.equal(ys[0], y) for y in ys[1:])
    assert not _counters(x.device, 1).any()
    check(x, q, s, z, 4, 64, config)


def _kill_half_way(monkeypatch, M):
    """Make the next launch die half-way: only the first half of each output tile's splits run. A launch
    that dies leaves, per tile, some splits that counted themselves in and the rest that never did (a
    CTA touches the counter once, in one atomic), so this is the state any kill leaves, the harshest
    one (every tile half counted). Returns a function that restores the kernel."""
    from harness.packed import gemm, gemv

    mod, name = (gemv, "gemv_even") if M == 1 else (gemm, "gemm_kernel")
    real = getattr(mod, name)

    class Killed:
        def __getitem__(self, grid):
            return real[(grid[0], grid[1] // 2)]

    monkeypatch.setattr(mod, name, Killed())
    return lambda: monkeypatch.setattr(mod, name, real)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M", [1, 4])
def test_a_launch_killed_half_way_does_not_poison_the_next(M, device, monkeypatch):
    """Epoch-tagged split-K counters (issue 26): after a launch that died with every tile's counter
    half-way, the next launch is right and leaves the counters at zero. With one epoch for every launch
    (the counters as they were before) the same sequence gives a wrong answer, so the test can fail."""
    from harness.packed import kernels

    _, q, s, z = packed(64, 512, 4, 64, device=device)
    x = torch.randn(M, 512, generator=torch.Generator().manual_seed(4)).to(device, torch.float16)
    config = KernelConfig(block_n=32, block_k=64, split_k=4, block_m=16)
    cnt = kernels._counters(x.device, 1)
    for i, same_epoch in enumerate((False, True)):
        if same_epoch:
            monkeypatch.setattr(kernels, "_next_epoch", lambda device, cnt: 1)
        xi = x * (i + 1)  # each launch its own activations: the fp32 partials a poisoned split would sum without
        # their being written this launch (the allocator may hand an earlier launch's workspace to this one) are
        # then another launch's, and a poisoned sum cannot come out right by reusing them
        restore = _kill_half_way(monkeypatch, M)
        launch(-3 * xi, q, s, z, 4, 64, config)  # dies half-way: its output is not looked at
        restore()
        assert cnt.any()  # the dead launch's counts are there
        y = launch(xi, q, s, z, 4, 64, config)
        ref = reference_matmul(xi, q, s, z, 4, 64)
        ok = (y.float() - ref.float()).abs().max().item() <= TOL[x.dtype] * ref.float().abs().max().item()
        if not same_epoch:
            assert ok and not cnt.any()
        else:
            assert not ok  # poisoned: the stale counts made a split sum partials that were never written
            cnt.zero_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("half2", ["1", "0"])
@pytest.mark.parametrize("bits", [4, 2])
def test_gemv_activation_spikes_and_half2_switch(bits, half2, device, monkeypatch):
    """Activations of 6·10⁴ in a few channels (LLaMA down-projection inputs carry such spikes): the GEMV
    stays finite and within fp16 accuracy of the fp32 reference, on the half2 path and with
    ``HARNESS_HALF2=0`` (the fp32 path). On a GPU the half2 path is the inline PTX, whose fp16 range
    ``tests/test_kernel_asm.py`` proves instruction by instruction; the interpreter runs its pure-Triton
    mirror (same prescale and rescale)."""
    from harness.packed.switches import half2_enabled

    monkeypatch.setenv("HARNESS_HALF2", half2)
    _, q, s, z = packed(48, 256, bits, 128, device=device, std=0.02)  # LLaMA-like weights: y stays an fp16
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(9))
    x[0, [3, 77, 200]] = torch.tensor([6e4, -6e4, 3e4])
    x = x.to(device, torch.float16)
    assert half2_enabled(x) == (half2 == "1")
    y = launch(x, q, s, z, bits, 128, KernelConfig(block_n=32, block_k=64, split_k=2))
    ref = reference_matmul(x.float(), q, s.float(), z.float(), bits, 128)  # fp32 activations and weights
    assert torch.isfinite(y).all()
    err = (y.float() - ref).abs().max().item()
    assert err <= 2e-3 * ref.abs().max().item(), err  # fp16 output rounding (2⁻¹¹) plus the half2 sums'


LLAMA_SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (N, K)


def test_static_table_covers_the_llama_shapes():
    """Issue 26: every LLaMA-7B layer shape × bits × group × M ≤ 16 has a configuration chosen by the static
    model, so no launch there autotunes or falls back to the fixed default."""
    from harness.packed.tuning import static_config

    for N, K in LLAMA_SHAPES:
        for bits in (4, 2):
            for group in (128, 0):
                for M in (1, 2, 3, 5, 8, 16):
                    c = static_config(M == 1, M, N, K, bits, group)
                    assert c is not None and c.split_k <= 255, (N, K, bits, group, M)  # COUNT_BITS = 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", ["gemv", "gemm", "gemm_tc"])
def test_static_table_configs_run_right(kernel, device):
    """Each distinct configuration of the static table (its tiles, warps, stages and split, up to 32 splits),
    run on a shape of a few of its tiles against the reference; K has fewer blocks than some splits, so
    empty splits (zero partials) are covered too."""
    from harness.packed.tuning import _static

    seen = set()
    for (kern, mb, _, _, bits, group), c in sorted(_static().items(), key=str):
        if kern != kernel or (c, bits, group) in seen:
            continue
        seen.add((c, bits, group))
        g = group or -1
        K = 4 * (min(c.block_k, group) if group else c.block_k)
        N = c.block_n if kernel == "gemv" else 2 * c.block_n
        _, q, s, z = packed(N, K, bits, g, seed=bits + N, device=device)
        x = torch.randn(1 if kernel == "gemv" else min(mb, 3), K, generator=torch.Generator().manual_seed(1))
        check(x.to(device, torch.float16), q, s, z, bits, g, c)
    assert seen


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("bits,group_size,dtype,M", [(4, 128, torch.float16, 1), (2, -1, torch.float16, 1),
                                                     (4, 128, torch.bfloat16, 16), (2, 128, torch.float16, 300)])
def test_autotuned_kernel_on_gpu(bits, group_size, dtype, M, monkeypatch):
    """The autotuned path on a few keys (each key tunes ~20 configurations; the fixed-config matrix above
    covers the rest of bits × group × dtype × M). Autotuning runs only on request."""
    monkeypatch.setenv("HARNESS_AUTOTUNE", "1")
    _, q, s, z = packed(384, 1024, bits, group_size, device="cuda")
    x = torch.randn(M, 1024, device="cuda", dtype=dtype)
    check(x, q, s, z, bits, group_size)  # config=None: the autotuned path
    check(x, q, s, z, bits, group_size)  # the cached best config
    assert torch.equal(launch(x, q, s, z, bits, group_size), launch(x, q, s, z, bits, group_size))  # deterministic


AOT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from harness.packed.gemm import gemm_kernel
from harness.packed.gemv import gemv_kernel

def build(fn, types, constexprs, **options):
    sig = {a: ("constexpr" if a in constexprs else types[a]) for a in fn.arg_names}
    return triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", 90, 32), options=options)

ptrs = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", out_ptr="*fp16")
ptrs.update(part_ptr="*fp32", cnt_ptr="*i32", epoch="i32")
gemv = build(gemv_kernel, {**ptrs, "N": "i32", "K": "i32", "M_BUCKET": "i32"},
             dict(BITS=2, GROUP=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=4, HALF2=True, PTX=True, EVEN=True, STAGES=3),
             num_warps=1, num_stages=2)
gemm = build(gemm_kernel, {**ptrs, "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32",
                              "M_BUCKET": "i32"},
             dict(BITS=4, GROUP=0, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=2, GROUP_M=8, DOT_F32=False,
                  HALF2=True, PTX=True),
             num_warps=4, num_stages=3)
print("mma" in gemm.asm["ptx"], "atom" in gemv.asm["ptx"])
"""


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter does not run Triton's code generator: compile both kernels for sm_90 (ptxas ships
    with triton), which catches what only a real build rejects (e.g. non-constexpr globals)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    res = subprocess.run([sys.executable, "-c", AOT], env=env, capture_output=True, text=True, timeout=600)
    if res.returncode and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        require_tool("ptxas")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["True", "True"]  # tensor-core MMA in the GEMM, the split-K counter in the GEMV
