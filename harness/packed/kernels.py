"""Launching the Triton fused dequantize + matmul on the packed 2/4-bit format of ``harness.packed.packing``.

``y (M, N) = x (M, K) @ Ŵᵀ`` with Ŵ (N, K) dequantized on the fly from ``qweight`` (K/P, N) int32,
``scales``/``zeros`` (G, N) fp16. One kernel family per module, as gemlite keeps them:

- ``harness.packed.gemv``: M = 1 (decode), memory-bound; half2 inline PTX for fp16 activations.
- ``harness.packed.gemm_tc``: 2 ≤ M ≤ 16, fp16 activations: one ``tl.dot`` per code position of the packed
  tile (no reshape, no shared-memory round trip of the unpacked weights; issue 26).
- ``harness.packed.gemm``: the other M ≥ 2 launches, ``tl.dot`` tiles; the packed tile unpacked in registers.
- ``harness.packed.common``: what both share (magic numbers, zero constants, the split-K epilogue).
- ``harness.packed.ptx``: the inline-PTX strings (plain Python; emulated in ``tests/test_kernel_asm.py``).
- ``harness.packed.tuning``: fixed defaults, autotuning spaces and pruning, the shipped per-GPU table.
- ``harness.packed.switches``: ``TRITON_INTERPRET``, ``HARNESS_AUTOTUNE``, ``HARNESS_HALF2``.

Split-K is deterministic in both: each split stores an fp32 partial, and the last split of an output
tile to arrive (an acq_rel counter per tile) sums the partials in split order, writes y and resets its
counter, so no memset kernel runs and repeated calls are bitwise identical. The counters live in a
per-(device, stream) cache (``_counters``), zeroed once, and are tagged with a per-launch epoch
(``harness.packed.common.split_k_reduce``): a launch that dies half-way leaves counts of its own epoch,
which the next launch (a larger epoch) wipes instead of adding to. The epoch is a kernel argument, so a
CUDA graph replays the epoch it captured; graphs are safe as long as the launches they replay complete
(a kernel that dies on a GPU leaves the CUDA context unusable anyway).

Only this module and the kernel modules it imports import Triton. The public entry is the
``torch.library`` op ``harness::quant_matmul`` in ``harness.packed.ops``, which imports this module only
when a kernel runs (CUDA tensors, or the interpreter on CPU). Speed and static instruction counts are
measured by ``benchmarks/kernel_speed.py`` and ``benchmarks/kernel_sass.py``, not recorded here.
"""
from __future__ import annotations

import functools

import torch
import triton

from harness.packed import gemm, gemm_tc, gemv
from harness.packed.common import COUNT_BITS
from harness.packed.packing import codes_per_word
from harness.packed.switches import autotune_enabled, half2_enabled, interpreting
from harness.packed.tuning import (
    DEFAULT_GEMM,
    DEFAULT_GEMV,
    MAX_SPLIT_K,
    KernelConfig,
    default_gemm_tc,
    fit,
    gemm_tuned,
    gemv_tuned,
    m_bucket,
    shipped_config,
)

__all__ = ["KernelConfig", "launch"]



_COUNTERS: dict[tuple, torch.Tensor] = {}  # (device, stream) → int32 split-K arrival counters
_EPOCHS: dict[tuple, int] = {}  # (device, stream) → the epoch of the last launch on those counters
MAX_EPOCH = (1 << (31 - COUNT_BITS)) - 1  # (epoch << COUNT_BITS) | arrivals stays a positive int32


def _key(device: torch.device) -> tuple:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return str(device), stream


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """At least ``n`` int32 split-K counters for the current stream of ``device``, zero between completed
    launches (each launch leaves them at zero): allocated and zeroed once, not per call. One set per
    stream, so concurrent launches on two streams never share a counter."""
    key = _key(device)
    cnt = _COUNTERS.get(key)
    if cnt is None or cnt.numel() < n:
        cnt = _COUNTERS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return cnt


def _next_epoch(device: torch.device, cnt: torch.Tensor) -> int:
    """The epoch of the next launch on ``cnt`` (1, 2, …). At the 2^23rd the counters are zeroed (a
    stream-ordered memset, once per 8·10⁶ launches) and the epochs start again, so a stale count never
    carries a larger epoch than a later launch's."""
    key = _key(device)
    epoch = _EPOCHS.get(key, 0) + 1
    if epoch > MAX_EPOCH:
        cnt.zero_()
        epoch = 1
    _EPOCHS[key] = epoch
    return epoch


@functools.cache
def _interpreter_scalars() -> None:
    """Let an older Triton interpreter (3.6) loop over runtime bounds (``range(b0, b1)``, ``tl.range``).

    It holds a scalar as a numpy array of shape (1,) and turns it into a Python int with ``int(array)``, which
    recent numpy (2.4 here) refuses for arrays of one dimension, so every kernel with a K loop failed under
    ``TRITON_INTERPRET=1`` with triton 3.6. Triton 3.9 converts ``array.squeeze()``; this wraps the interpreter's
    tensor patching to do the same where its ``__index__`` lacks it (checked in its source, so a fixed
    interpreter is left alone). The interpreter's patches are scoped to one launch and undone in reverse
    order, so this one is too."""
    import inspect

    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        src = inspect.getsource(patch) if patch is not None else ""
    except (OSError, TypeError):
        return
    if "int(self.handle.data))" not in src:
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


def launch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
           group_size: int, config: KernelConfig | None = None) -> torch.Tensor:
    """Run the Triton kernel: x (M, K) fp16/bf16/fp32 → (M, N) in x's dtype.

    2 ≤ M ≤ 16 with fp16 activations (half2 on) and groups of whole K blocks runs the tensor-core GEMM
    ``harness.packed.gemm_tc`` (never autotuned): for ``config=None``, or a config with ``block_k`` = 16
    packed words (8 for 2-bit g128: ``gemm_tc.block_k``) and ``block_m`` = 16; every other M ≥ 2 launch runs
    ``harness.packed.gemm``.
    ``config=None`` runs a shipped configuration (measured on this GPU, else chosen by the static model:
    ``harness.packed.tuning``), else autotunes if asked (``HARNESS_AUTOTUNE=1``), else the fixed default;
    a given config runs as is
    (tests use it to cover split-K, masking and several block shapes). Split-K partials go to an fp32
    workspace (SPLIT_K, M, N), uninitialised: every split writes its part before the last one reads.
    """
    if interpreting():
        _interpreter_scalars()
    M, K = x.shape
    N = qweight.shape[1]
    P = codes_per_word(bits)
    if qweight.shape[0] * P != K:
        raise ValueError(f"qweight {tuple(qweight.shape)} holds {qweight.shape[0] * P} inputs, x has {K}")
    group = 0 if group_size == -1 or group_size == K else group_size
    x = x.contiguous()
    is_gemv = M == 1 and (group == 0 or group >= 2 * P)  # a GEMV block holds two words a column (2-bit g16: GEMM)
    # 2 ≤ M ≤ 16, fp16: the tensor-core GEMM, unless a given config asks for another K block or row tile
    tc = not is_gemv and gemm_tc.fits(M, bits, group, half2_enabled(x)) and (
        config is None or (config.block_k == gemm_tc.block_k(bits, group) and config.block_m == 16))
    if config is None:  # measured, else (unless tuning was asked for) the static model's choice; CUDA only
        config = shipped_config(is_gemv, x, N, K, bits, group, static=tc or not autotune_enabled(),
                                kernel="gemm_tc" if tc else None)
    tuned = config is None and autotune_enabled() and not tc  # the tensor-core GEMM is not autotuned
    cfg = fit(config or (DEFAULT_GEMV if is_gemv else default_gemm_tc(bits, group) if tc else DEFAULT_GEMM), group)
    split = MAX_SPLIT_K if tuned else cfg.split_k
    out = torch.empty((M, N), device=x.device, dtype=x.dtype)
    part = torch.empty((split, M, N) if split > 1 else (1,), device=x.device, dtype=torch.float32)
    cnt = _counters(x.device, triton.cdiv(M, 16) * triton.cdiv(N, 16))  # ≥ the tiles of any config
    epoch = _next_epoch(x.device, cnt)
    common = dict(BITS=bits, GROUP=group)
    if is_gemv:
        common.update(HALF2=half2_enabled(x), PTX=not interpreting())
        if tuned:
            gemv_tuned[lambda m: (triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, part, cnt, epoch, N, K, 1, **common)
        else:
            grid = (triton.cdiv(N, cfg.block_n), cfg.split_k)
            gemv.gemv_even[grid](x, qweight, scales, zeros, out, part, cnt, epoch, N, K, 1, **common, **cfg.meta(True),
                                 num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    elif tc:
        grid = (triton.cdiv(M, 16) * triton.cdiv(N, cfg.block_n), cfg.split_k)
        gemm_tc.gemm_tc_even[grid](x, qweight, scales, zeros, out, part, cnt, epoch, M, N, K, x.stride(0),
                                   out.stride(0), m_bucket(M), BITS=bits, GROUP=group, BLOCK_M=16,
                                   BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, GROUP_M=8,
                                   PTX=not interpreting(), XS_N=gemm_tc.xs_width(cfg.block_n, cfg.num_warps),
                                   num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    else:
        mb = m_bucket(M)
        common["DOT_F32"] = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreting())
        common.update(HALF2=half2_enabled(x), PTX=not interpreting())
        if tuned:
            gemm_tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]) * triton.cdiv(N, m["BLOCK_N"]), m["SPLIT_K"])](
                x, qweight, scales, zeros, out, part, cnt, epoch, M, N, K, x.stride(0), out.stride(0), mb, **common)
        else:
            grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(N, cfg.block_n), cfg.split_k)
            gemm.gemm_kernel[grid](x, qweight, scales, zeros, out, part, cnt, epoch, M, N, K, x.stride(0),
                                   out.stride(0), mb, **common, **cfg.meta(False), num_warps=cfg.num_warps,
                                   num_stages=cfg.num_stages)
    return out
