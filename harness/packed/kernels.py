"""Triton fused dequantize + matmul for the packed 2/4-bit format of ``harness.packed.packing``.

``y (M, N) = x (M, K) @ Ŵᵀ`` with Ŵ (N, K) dequantized on the fly from ``qweight`` (K/P, N) int32,
``scales``/``zeros`` (G, N) fp16. Two kernels:

- ``_gemv_kernel`` (M = 1, decode): memory-bound. Each program owns BLOCK_N output columns and a
  contiguous run of whole groups along K (split-K over grid axis 1, so that even N = 4096 fills
  every SM; partials meet in the output with ``atomic_add``). No tensor cores (a 1-row product):
  each packed word is loaded once as a (BLOCK_K/P, BLOCK_N) tile and expanded in registers to
  (BLOCK_K/P, P, BLOCK_N) codes; codes are accumulated unscaled within a group and the group's
  scale/zero are applied once per group (``s·(Σ x·q − z·Σ x)``), so the inner loop costs a shift,
  a mask-or, one FADD and one FFMA per weight. Reads: 0.5 (4-bit) / 0.25 (2-bit) byte per weight.
- ``_gemm_kernel`` (M ≥ 2, batched decode to prefill): tiles (BLOCK_M, BLOCK_N), dequantizes a
  (BLOCK_K, BLOCK_N) tile to the activation dtype and feeds ``tl.dot`` (tensor cores); optional
  split-K for small M; grouped program order for L2 reuse of the activation rows. It reads the
  tile by loading word ``k // P`` for each k (the P rows that share a word hit the same cache line,
  so DRAM traffic is the packed size) and shifting by ``(k % P)·b``; a K block never straddles a
  group (BLOCK_K ≤ group_size, both powers of two), so scales/zeros are one (BLOCK_N,) load per block.

Codes become floats with the magic-number trick (``q | 0x4B000000`` read as fp32 is 2²³ + q: one OR
and one FADD instead of a slow int→float conversion); zero points are integers, so 2²³ + z is exact.
Inspecting the SASS of the sm_90 build (``triton.compile`` without a GPU) gave ≈ 6.3–7.5 instructions
per weight in the GEMV inner loop (4- and 2-bit, per-channel and g128, 64 weights per thread),
against ≈ 10.8 for a first version that dequantized (q − z)·s per element and loaded word
``k // P`` per k; speed on a GPU is measured by ``benchmarks/kernels.py``.

Autotuning (``triton.autotune``) covers block sizes, split-K, warps and stages, keyed on
(M bucket, N, K, bits, group size). It is skipped under ``TRITON_INTERPRET=1`` (CPU tests) and
with ``HARNESS_AUTOTUNE=0``, where a fixed default configuration runs.

This is the only module that imports Triton. The public entry is the ``torch.library`` op
``harness::quant_matmul`` in ``harness.packed.ops``, which imports this module only when a kernel
runs (CUDA tensors, or the interpreter on CPU).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from harness.packed.ops import interpreting
from harness.packed.packing import codes_per_word

MAGIC = tl.constexpr(0x4B000000)  # fp32 bits of 2^23: OR-ing an integer < 2^23 into the mantissa gives 2^23 + q
MAGIC_F = tl.constexpr(8388608.0)


def autotune_enabled() -> bool:
    return not interpreting() and os.environ.get("HARNESS_AUTOTUNE", "1") != "0"


@triton.jit
def _dequant_tile(words, offs_k, s, z, BITS: tl.constexpr):
    """(BLOCK_K, BLOCK_N) int32 words (row k holds word k // P) → fp32 (q − z)·s."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    shift = ((offs_k % P) * BITS)[:, None]  # (BLOCK_K, 1)
    q = (words >> shift) & MAXQ  # arithmetic shift of a negative word is fine after the mask
    qf = (q | MAGIC).to(tl.float32, bitcast=True)  # 2^23 + q, exact
    return (qf - (z + MAGIC_F)[None, :]) * s[None, :]  # (q − z)·s, z integer so 2^23 + z is exact


@triton.jit
def _codes3(qw_ptr, kw0, KW, offs_n, mask_n, N, BITS: tl.constexpr, BLOCK_KW: tl.constexpr):
    """Words kw0 … kw0+BLOCK_KW−1 of columns offs_n → 2²³ + code as fp32 (BLOCK_KW, P, BLOCK_N).

    Each word is loaded once and expanded along a middle axis of P codes (code k = kw·P + p)."""
    P: tl.constexpr = 32 // BITS
    MAXQ: tl.constexpr = (1 << BITS) - 1
    rkw = kw0 + tl.arange(0, BLOCK_KW)
    words = tl.load(qw_ptr + rkw[:, None] * N + offs_n[None, :], mask=(rkw < KW)[:, None] & mask_n[None, :],
                    other=0, eviction_policy="evict_first")  # (BLOCK_KW, BLOCK_N) int32
    shifts = (tl.arange(0, P) * BITS)[None, :, None].to(tl.uint32)  # (1, P, 1)
    q = ((words.to(tl.uint32, bitcast=True)[:, None, :] >> shifts) & MAXQ) | MAGIC  # bits of 2^23 + code
    return q.to(tl.float32, bitcast=True)


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, N, K, M_BUCKET,
                 BITS: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """out (1, N) [+]= x (1, K) @ Ŵᵀ. Grid: (cdiv(N, BLOCK_N), SPLIT_K). GROUP = 0: per-channel.

    Split ``pid_k`` owns a contiguous run of whole groups (per-channel: of K blocks). Inside a group
    the zero-shifted codes are accumulated unscaled, ``acc_g += x·(q − z)`` (one FADD makes q − z from
    the magic float, one FFMA accumulates), and the group's scale is applied once: ``acc += s·acc_g``.
    """
    P: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // P
    UNIT: tl.constexpr = GROUP if GROUP != 0 else BLOCK_K
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask_n = offs_n < N
    KW = K // P
    rx = tl.arange(0, BLOCK_KW)[:, None] * P + tl.arange(0, P)[None, :]  # (BLOCK_KW, P): k within a block
    n_units = tl.cdiv(K, UNIT)
    per_split = tl.cdiv(n_units, SPLIT_K)
    u0 = pid_k * per_split
    u1 = tl.minimum(u0 + per_split, n_units)
    acc = tl.zeros((BLOCK_KW, P, BLOCK_N), dtype=tl.float32)
    if GROUP == 0:
        s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        mz = (tl.load(z_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32) + MAGIC_F)[None, None, :]
        for k0 in range(u0 * BLOCK_K, u1 * BLOCK_K, BLOCK_K):
            x = tl.load(x_ptr + k0 + rx, mask=k0 + rx < K, other=0.0).to(tl.float32)  # (BLOCK_KW, P)
            acc += x[:, :, None] * (_codes3(qw_ptr, k0 // P, KW, offs_n, mask_n, N, BITS, BLOCK_KW) - mz)
        y = s * tl.sum(tl.sum(acc, axis=1), axis=0)
    else:
        for g in range(u0, u1):
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            mz = (tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32) + MAGIC_F)[None, None, :]
            acc_g = tl.zeros((BLOCK_KW, P, BLOCK_N), dtype=tl.float32)
            for j in tl.static_range(0, GROUP, BLOCK_K):  # BLOCK_K divides GROUP: unrolled
                k0 = g * GROUP + j
                x = tl.load(x_ptr + k0 + rx).to(tl.float32)
                acc_g += x[:, :, None] * (_codes3(qw_ptr, k0 // P, KW, offs_n, mask_n, N, BITS, BLOCK_KW) - mz)
            acc += acc_g * s[None, None, :]
        y = tl.sum(tl.sum(acc, axis=1), axis=0)
    if SPLIT_K == 1:
        tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.atomic_add(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_om, M_BUCKET,
                 BITS: tl.constexpr, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, DOT_F32: tl.constexpr):
    """out (M, N) [+]= x (M, K) @ Ŵᵀ with tl.dot. Grid: (cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N), SPLIT_K).

    DOT_F32: multiply in fp32 with IEEE precision (fp32 activations, where tf32 would lose bits, and
    bf16 under the interpreter, whose numpy ``dot`` misreads bf16)."""
    P: tl.constexpr = 32 // BITS
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles sweep the N tiles together, so their x rows stay in L2.
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    rk = tl.arange(0, BLOCK_K)
    if GROUP == 0:
        s = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, SPLIT_K * BLOCK_K):
        offs_k = k0 + rk
        mask_k = offs_k < K
        a = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        words = tl.load(qw_ptr + (offs_k // P)[:, None] * N + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0)  # (BLOCK_K, BLOCK_N)
        if GROUP != 0:
            g = k0 // GROUP
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        w = _dequant_tile(words, offs_k, s, z, BITS)  # (BLOCK_K, BLOCK_N) fp32
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), w.to(a.dtype).to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration (``block_m`` is ignored by the GEMV kernel)."""

    block_n: int
    block_k: int
    split_k: int = 1
    block_m: int = 16
    num_warps: int = 4
    num_stages: int = 2

    def meta(self, gemv: bool) -> dict:
        out = {"BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "SPLIT_K": self.split_k}
        if not gemv:
            out.update(BLOCK_M=self.block_m, GROUP_M=8)
        return out


DEFAULT_GEMV = KernelConfig(block_n=64, block_k=64, split_k=4, num_warps=4, num_stages=2)
DEFAULT_GEMM = KernelConfig(block_n=64, block_k=64, split_k=1, block_m=32, num_warps=4, num_stages=2)


def _zero_out(split_k: int):
    """Split-K configs add into the output: zero it before every launch (and inside the autotuner's
    timing, so a split's memset is charged to it)."""
    if split_k == 1:
        return None

    def hook(nargs):
        nargs["out_ptr"].zero_()

    return hook


def _gemv_configs() -> list[triton.Config]:
    out = []
    # At most 64 weights per thread per block: larger tiles spill the two accumulators to local memory.
    for bn, bk, w in [(64, 64, 2), (128, 32, 2), (128, 32, 4), (128, 64, 4), (256, 32, 4), (256, 64, 8),
                      (512, 16, 4)]:
        for split_k in (1, 4, 8, 16):
            for stages in (1, 2):
                out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k},
                                         num_warps=w, num_stages=stages, pre_hook=_zero_out(split_k)))
    return out


def _gemm_configs() -> list[triton.Config]:
    out = []
    for bm, bn, bk, w, stages in [(16, 64, 64, 4, 3), (16, 128, 64, 4, 4), (16, 256, 64, 8, 3), (32, 64, 64, 4, 4),
                                  (32, 128, 64, 4, 3), (64, 64, 64, 4, 4), (64, 128, 64, 4, 3),
                                  (64, 256, 32, 8, 3), (128, 128, 32, 8, 3), (128, 256, 32, 8, 3),
                                  (128, 128, 64, 8, 3)]:
        for split_k in (1, 2, 4, 8):
            out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split_k,
                                      "GROUP_M": 8}, num_warps=w, num_stages=stages, pre_hook=_zero_out(split_k)))
    return out


def _prune(configs, named_args, **kwargs):
    """Fit the configs to the problem: BLOCK_K clamped to the group size (a K block never straddles a
    group), no tile far wider than N, split-K only while each split keeps at least two K blocks,
    BLOCK_M near M (and no split-K for large M). Duplicates after clamping are dropped."""
    K, N, group = named_args["K"], named_args["N"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    m_bucket = named_args["M_BUCKET"]
    keep, seen = [], set()
    for c in configs:
        kw = dict(c.kwargs)
        if group and kw["BLOCK_K"] > group:
            kw["BLOCK_K"] = group
        bk, bn, sk, bm = kw["BLOCK_K"], kw["BLOCK_N"], kw["SPLIT_K"], kw.get("BLOCK_M", 1)
        if bn > max(32, triton.next_power_of_2(N)) or (sk > 1 and sk * bk * 2 > K):
            continue
        if "BLOCK_M" in kw and (bm > max(16, m_bucket) or (m_bucket >= 128 and (bm < 64 or sk > 1))):
            continue
        key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            keep.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=c.pre_hook))
    if not keep:  # a tiny problem: the smallest tile, no split
        c = min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs.get("BLOCK_M", 1), c.kwargs["SPLIT_K"]))
        kw = {**c.kwargs, "SPLIT_K": 1, "BLOCK_K": min(c.kwargs["BLOCK_K"], group or c.kwargs["BLOCK_K"])}
        keep = [triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages)]
    return keep


_KEY = ["M_BUCKET", "N", "K", "BITS", "GROUP"]


_PRUNE = {"early_config_prune": _prune}
_gemv_tuned = triton.autotune(configs=_gemv_configs(), key=_KEY, prune_configs_by=_PRUNE)(_gemv_kernel)
_gemm_tuned = triton.autotune(configs=_gemm_configs(), key=_KEY, prune_configs_by=_PRUNE)(_gemm_kernel)


def m_bucket(M: int) -> int:
    """Autotune bucket of the row count: 1, 2, 4, ..., 256 (one tuning per bucket, not per M)."""
    return min(triton.next_power_of_2(max(M, 1)), 256)


def _fit(config: KernelConfig, group: int) -> KernelConfig:
    """A fixed config adjusted so that a K block stays inside one group."""
    if group and config.block_k > group:
        return KernelConfig(config.block_n, group, config.split_k, config.block_m, config.num_warps,
                            config.num_stages)
    return config


@functools.cache
def _atomic_in_place(dtype: torch.dtype, device_type: str) -> bool:
    """Whether split-K partials can be added atomically into an output of ``dtype`` (else fp32 scratch)."""
    if dtype in (torch.float32, torch.float16):
        return True
    if dtype == torch.bfloat16 and device_type == "cuda":
        return torch.cuda.get_device_capability() >= (9, 0)  # native bf16 atomics from Hopper on
    return False


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
           group_size: int, config: KernelConfig | None = None) -> torch.Tensor:
    """Run the Triton kernel: x (M, K) fp16/bf16/fp32 → (M, N) in x's dtype.

    ``config=None`` autotunes (unless disabled, see the module docstring); a given config runs as is
    (tests use it to cover split-K, masking and several block shapes).
    """
    M, K = x.shape
    N = qweight.shape[1]
    P = codes_per_word(bits)
    if qweight.shape[0] * P != K:
        raise ValueError(f"qweight {tuple(qweight.shape)} holds {qweight.shape[0] * P} inputs, x has {K}")
    group = 0 if group_size == -1 or group_size == K else group_size
    x = x.contiguous()
    gemv = M == 1
    tuned = config is None and autotune_enabled()
    cfg = _fit(config or (DEFAULT_GEMV if gemv else DEFAULT_GEMM), group)
    split = tuned or cfg.split_k > 1
    out_dtype = x.dtype if (not split or _atomic_in_place(x.dtype, x.device.type)) else torch.float32
    # Tuned split-K configs zero the output in their pre_hook; a fixed split-K config needs zeros here.
    zero = not tuned and cfg.split_k > 1
    out = (torch.zeros if zero else torch.empty)((M, N), device=x.device, dtype=out_dtype)
    common = dict(BITS=bits, GROUP=group)
    if gemv:
        if tuned:
            _gemv_tuned[lambda m: (triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, N, K, 1, **common)
        else:
            grid = (triton.cdiv(N, cfg.block_n), cfg.split_k)
            _gemv_kernel[grid](x, qweight, scales, zeros, out, N, K, 1, **common, **cfg.meta(True),
                               num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        mb = m_bucket(M)
        common["DOT_F32"] = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreting())
        if tuned:
            _gemm_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, M, N, K, x.stride(0), out.stride(0), mb, **common)
        else:
            grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), cfg.split_k)
            _gemm_kernel[grid](x, qweight, scales, zeros, out, M, N, K, x.stride(0), out.stride(0), mb,
                               **common, **cfg.meta(False), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out if out.dtype == x.dtype else out.to(x.dtype)


_PTRS = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", out_ptr="*fp16")


def sass_configs(kernel: str, bits: int, group: int, quick: bool = False):
    """Configurations for ``benchmarks/kernel_sass.py``: (jit fn, arg types, constexprs, warps, stages, bits,
    group, K step of one main-loop iteration, BLOCK_N) for fp16 activations. ``quick``: the launch default only.
    Split-K changes only the epilogue, so the main loop is compiled at SPLIT_K = 1."""
    gemv = kernel == "gemv"
    if quick:
        d = _fit(DEFAULT_GEMV if gemv else DEFAULT_GEMM, group)
        space = [(d.block_m, d.block_n, d.block_k, d.num_warps, d.num_stages)]
    else:
        space = []
        for c in _gemv_configs() if gemv else _gemm_configs():
            kw = c.kwargs
            bk = min(kw["BLOCK_K"], group) if group else kw["BLOCK_K"]
            key = (kw.get("BLOCK_M", 1), kw["BLOCK_N"], bk, c.num_warps, c.num_stages)
            if key not in space:
                space.append(key)
    for bm, bn, bk, w, stages in space:
        ce = dict(BITS=bits, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1)
        if gemv:
            types = {**_PTRS, "N": "i32", "K": "i32", "M_BUCKET": "i32"}
            yield _gemv_kernel, types, ce, w, stages, bits, group, group or bk, bn
        else:
            types = {**_PTRS, "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32",
                     "M_BUCKET": "i32"}
            ce.update(BLOCK_M=bm, GROUP_M=8, DOT_F32=False)
            yield _gemm_kernel, types, ce, w, stages, bits, group, bk, bn
