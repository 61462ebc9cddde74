"""Launch configurations of the packed kernels: the fixed defaults, the pruned autotuning spaces, the
shipped per-GPU table (``tuned_configs.json``) and the configurations ``benchmarks/kernel_sass.py`` compiles.

Which configuration a launch without one runs, first match wins (no compilation beyond the one kernel):

1. ``tuned_configs.json``: measured on this GPU model for this shape (filled by ``scripts/gpu_check.sh``);
2. ``static_configs.json``: chosen for sm_90 (H100/H200, 132 SMs) by the static model of
   ``benchmarks/kernel_sass.py --ship`` (SASS instruction counts, occupancy, waves, latency) for LLaMA-7B's
   three layer shapes and M buckets 1–16, without a GPU (M 2–16: entries for both the reshaping GEMM,
   ``gemm``, and the tensor-core GEMM, ``gemm_tc``, which ``harness.packed.kernels`` prefers where it fits);
3. with ``HARNESS_AUTOTUNE=1`` only (then in place of 2: a measurement beats the model): autotuning
   (``triton.autotune``, results cached on disk by Triton) over a pruned space (``_prune``) keyed on
   (M bucket, N, K, bits, group size);
4. the fixed defaults ``DEFAULT_GEMV`` / ``DEFAULT_GEMM``.

Tuning is never on under ``TRITON_INTERPRET=1`` (``harness.packed.switches``).
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from harness.packed import gemm, gemm_tc, gemv


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration (``block_m`` is ignored by the GEMV kernel)."""

    block_n: int
    block_k: int
    split_k: int = 1
    block_m: int = 16
    num_warps: int = 4
    num_stages: int = 2

    def meta(self, is_gemv: bool) -> dict:
        out = {"BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "SPLIT_K": self.split_k}
        if is_gemv:
            out["STAGES"] = self.num_stages
        else:
            out.update(BLOCK_M=self.block_m, GROUP_M=8)
        return out


DEFAULT_GEMV = KernelConfig(block_n=512, block_k=128, split_k=8, num_warps=2, num_stages=3)
DEFAULT_GEMM = KernelConfig(block_n=64, block_k=64, split_k=1, block_m=32, num_warps=4, num_stages=2)


def default_gemm_tc(bits: int, group: int = 0) -> KernelConfig:
    """The tensor-core GEMM's fixed default (``harness.packed.gemm_tc``; its K block is 16 packed words, 8 for
    2-bit g128): 4-bit and 2-bit g128 64 columns a warp, other 2-bit 32 (``STATIC_GEMM_TC_SPACE``)."""
    bk = gemm_tc.block_k(bits, group)
    if bits == 2 and bk == 128:
        return KernelConfig(block_n=256, block_k=bk, split_k=1, block_m=16, num_warps=4, num_stages=3)
    return KernelConfig(block_n=128, block_k=bk, split_k=1, block_m=16, num_warps=2 if bits == 4 else 4,
                        num_stages=3)


MAX_SPLIT_K = 16  # the largest split of the configuration spaces: sizes the fp32 partials
# Split-K pays only while the output tiles alone leave SMs idle. The spaces were tuned on H100/H200
# (132 SMs); two resident programs per SM fill them, so from 2 × 132 tiles on a launch needs no split.
TUNED_SMS = 132
FULL_GRID_TILES = 2 * TUNED_SMS


def _prune(configs, named_args, **kwargs):
    """Fit the configs to the problem: BLOCK_K clamped to the group size (a K block never straddles a
    group), no tile far wider than N, split-K only while each split keeps at least two K blocks and
    the grid without it would not fill the GPU (``FULL_GRID_TILES``), BLOCK_M near M (no split-K for
    large M). Duplicates after clamping are dropped."""
    K, N, group = named_args["K"], named_args["N"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    m_bucket = named_args["M_BUCKET"]
    keep, seen = [], set()
    for c in configs:
        kw = dict(c.kwargs)
        if "BLOCK_M" not in kw and kwargs.get("BITS") == 2 and kw["BLOCK_N"] == 128 * c.num_warps:
            continue  # 4 columns a thread: the 2-bit GEMV would exceed 2.0 instructions per weight
        if group and kw["BLOCK_K"] > group:
            kw["BLOCK_K"] = group
        bk, bn, sk, bm = kw["BLOCK_K"], kw["BLOCK_N"], kw["SPLIT_K"], kw.get("BLOCK_M", 1)
        tiles = triton.cdiv(N, bn) * triton.cdiv(m_bucket, bm)
        if bn > max(32, triton.next_power_of_2(N)) or (sk > 1 and (sk * bk * 2 > K or tiles >= FULL_GRID_TILES)):
            continue
        if "BLOCK_M" in kw and (bm > max(16, m_bucket) or (m_bucket >= 128 and (bm < 64 or sk > 1))):
            continue
        key = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
        if key not in seen:
            seen.add(key)
            keep.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    if not keep:  # a tiny problem: the smallest tile, no split
        c = min(configs, key=lambda c: (c.kwargs["BLOCK_N"], c.kwargs.get("BLOCK_M", 1), c.kwargs["SPLIT_K"]))
        kw = {**c.kwargs, "SPLIT_K": 1, "BLOCK_K": min(c.kwargs["BLOCK_K"], group or c.kwargs["BLOCK_K"])}
        keep = [triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages)]
    return keep


_KEY = ["M_BUCKET", "N", "K", "BITS", "GROUP"]
_PRUNE = {"early_config_prune": _prune}
# Best configs cached on disk by Triton (per triton version, GPU architecture, kernel source and key), so a
# process does not re-tune a shape another one tuned; ``cache_results`` exists from triton 3.2 on.
_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}
gemv_tuned = triton.autotune(configs=gemv.configs(), key=_KEY, prune_configs_by=_PRUNE, **_CACHE)(gemv.gemv_even)
gemm_tuned = triton.autotune(configs=gemm.configs(), key=_KEY, prune_configs_by=_PRUNE, **_CACHE)(gemm.gemm_kernel)


def m_bucket(M: int) -> int:
    """Autotune bucket of the row count: 1, 2, 4, ..., 256 (one tuning per bucket, not per M)."""
    return min(triton.next_power_of_2(max(M, 1)), 256)


def fit(config: KernelConfig, group: int) -> KernelConfig:
    """A fixed config adjusted so that a K block stays inside one group."""
    if group and config.block_k > group:
        return KernelConfig(config.block_n, group, config.split_k, config.block_m, config.num_warps,
                            config.num_stages)
    return config


TUNED_TABLE = Path(__file__).with_name("tuned_configs.json")  # shipped best configs, measured on GPUs
STATIC_TABLE = Path(__file__).with_name("static_configs.json")  # chosen by the static sm_90 model

# What the static model (benchmarks/kernel_sass.py --ship) chooses from: (BLOCK_M, BLOCK_N, BLOCK_K, warps,
# stages) × SPLIT_K. GEMV: 8 (or 4, BLOCK_N = 128 · warps) columns a thread; small CTAs so that the decode
# shapes can fill 132 SMs × 4 schedulers. GEMM: BLOCK_M = 16 (M ≤ 16 is one row tile).
STATIC_GEMV_SPACE = [(1, bn, bk, w, st) for bn, bk, w in [(128, 128, 1), (256, 64, 1), (256, 128, 1), (256, 128, 2),
                                                          (512, 128, 2), (512, 256, 2), (512, 128, 4),
                                                          (1024, 128, 4)] for st in (2, 3, 4)]
STATIC_GEMM_SPACE = [(16, bn, bk, w, st) for bn, bk, w in [(32, 128, 2), (64, 64, 4), (64, 128, 4), (128, 64, 4)]
                     for st in (3, 4)]
# The tensor-core GEMM (M 2–16, fp16): BLOCK_K is 16 packed words (0 here: filled per bits). 4-bit: 64 columns
# a warp (the activation split and the per-group dot are per warp; 32 a warp cost 2.7 instructions per 4-bit g128
# weight); 2-bit: 32 columns a warp (its four field accumulators spill at 64). 2-bit g128 (K blocks of 8 words,
# two field accumulators: ``gemm_tc_space``): 64 columns a warp (32 cost 2.8 instructions per weight).
STATIC_GEMM_TC_SPACE = {4: [(16, bn, 0, w, st) for bn, w in [(128, 2), (256, 4)] for st in (3, 4)],
                        2: [(16, bn, 0, w, st) for bn, w in [(64, 2), (128, 4)] for st in (3, 4)]}
STATIC_GEMM_TC_PAIRED_SPACE = [(16, bn, 0, w, st) for bn, w in [(256, 4), (512, 8)] for st in (3, 4)]


def gemm_tc_space(bits: int, group: int) -> list:
    """The static space of the tensor-core GEMM for this bits × group (2-bit g128: the paired K block)."""
    return STATIC_GEMM_TC_PAIRED_SPACE if gemm_tc.block_k(bits, group) == 128 and bits == 2 else \
        STATIC_GEMM_TC_SPACE[bits]


STATIC_SPLITS = (1, 2, 4, 8, 16, 32)
STATIC_M_BUCKETS = (1, 2, 4, 8, 16)


@functools.cache
def _static(path: str = str(STATIC_TABLE)) -> dict:
    """The static table: (kernel, M bucket, N, K, bits, group) → KernelConfig."""
    try:
        entries = json.loads(Path(path).read_text()).get("configs", [])
    except (OSError, ValueError):
        return {}
    return {(e["kernel"], e["m_bucket"], e["N"], e["K"], e["bits"], e["group"]): KernelConfig(**e["config"])
            for e in entries}


def static_config(is_gemv: bool, M: int, N: int, K: int, bits: int, group: int,
                  kernel: str | None = None) -> KernelConfig | None:
    """The configuration the static model chose for this shape (``static_configs.json``), if any; ``kernel``
    names the family when it is not the GEMV or the reshaping GEMM (``gemm_tc``)."""
    return _static().get((kernel or ("gemv" if is_gemv else "gemm"), m_bucket(M), N, K, bits, group))


@functools.cache
def _shipped(path: str = str(TUNED_TABLE)) -> dict:
    """The shipped table: (device name, kernel, M bucket, N, K, bits, group, dtype) → KernelConfig."""
    try:
        entries = json.loads(Path(path).read_text()).get("configs", [])
    except (OSError, ValueError):
        return {}
    return {(e["device"], e["kernel"], e["m_bucket"], e["N"], e["K"], e["bits"], e["group"], e["dtype"]):
            KernelConfig(**e["config"]) for e in entries}


def shipped_config(is_gemv: bool, x: torch.Tensor, N: int, K: int, bits: int, group: int,
                   static: bool = True, kernel: str | None = None) -> KernelConfig | None:
    """A configuration measured on this GPU model (``tuned_configs.json``), else (``static``) the static
    model's choice (``static_configs.json``), if either has this shape; CUDA only (the interpreter runs
    fixed configurations)."""
    if x.device.type != "cuda":
        return None
    name = kernel or ("gemv" if is_gemv else "gemm")
    key = (torch.cuda.get_device_name(x.device), name, m_bucket(x.shape[0]), N, K, bits, group,
           str(x.dtype).removeprefix("torch."))
    return _shipped().get(key) or (static_config(is_gemv, x.shape[0], N, K, bits, group, name) if static else None)


def export_tuned(device_name: str) -> list[dict]:
    """The autotuners' choices of this process as ``tuned_configs.json`` entries (to ship once measured)."""
    out = []
    for kernel, tuner in (("gemv", gemv_tuned), ("gemm", gemm_tuned)):
        for key, cfg in getattr(tuner, "cache", {}).items():
            mb, N, K, bits, group, x_dtype = key[0], key[1], key[2], key[3], key[4], key[5]
            kw = cfg.kwargs
            out.append({"device": device_name, "kernel": kernel, "m_bucket": mb, "N": N, "K": K, "bits": bits,
                        "group": group, "dtype": str(x_dtype).removeprefix("torch."),
                        "config": {"block_n": kw["BLOCK_N"], "block_k": kw["BLOCK_K"], "split_k": kw["SPLIT_K"],
                                   "block_m": kw.get("BLOCK_M", 16), "num_warps": cfg.num_warps,
                                   "num_stages": cfg.num_stages}})
    return out


_PTRS = dict(x_ptr="*fp16", qw_ptr="*i32", s_ptr="*fp16", z_ptr="*fp16", out_ptr="*fp16")


def sass_configs(kernel: str, bits: int, group: int, quick: bool = False, space: list | None = None):
    """Configurations for ``benchmarks/kernel_sass.py``: (jit fn, arg types, constexprs, warps, stages, bits,
    group, K step of one main-loop iteration, BLOCK_N) for fp16 activations. ``quick``: the launch default only;
    ``space``: these (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) (BLOCK_K clamped to the group).
    Split-K changes only the epilogue, so the main loop is compiled at SPLIT_K = 1."""
    is_gemv = kernel == "gemv"
    if kernel == "gemm_tc":
        yield from _tc_sass_configs(bits, group, quick, space)
        return
    if space is not None:
        space = list(dict.fromkeys((bm, bn, min(bk, group) if group else bk, w, st) for bm, bn, bk, w, st in space))
    elif quick:
        d = fit(DEFAULT_GEMV if is_gemv else DEFAULT_GEMM, group)
        space = [(d.block_m, d.block_n, d.block_k, d.num_warps, d.num_stages)]
    else:
        space = []
        for c in gemv.configs() if is_gemv else gemm.configs():
            kw = c.kwargs
            bk = min(kw["BLOCK_K"], group) if group else kw["BLOCK_K"]
            key = (kw.get("BLOCK_M", 1), kw["BLOCK_N"], bk, c.num_warps, c.num_stages)
            if key not in space:
                space.append(key)
    for bm, bn, bk, w, stages in space:
        ce = dict(BITS=bits, GROUP=group, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1)
        if is_gemv:
            types = {**_PTRS, "part_ptr": "*fp32", "cnt_ptr": "*i32", "epoch": "i32", "N": "i32", "K": "i32",
                     "M_BUCKET": "i32"}
            ce.update(HALF2=True, PTX=True, EVEN=True, STAGES=stages)
            yield gemv.gemv_kernel, types, ce, w, stages, bits, group, bk, bn
        else:
            types = {**_PTRS, "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32",
                     "M_BUCKET": "i32"}
            types.update(part_ptr="*fp32", cnt_ptr="*i32", epoch="i32")
            ce.update(BLOCK_M=bm, GROUP_M=8, DOT_F32=False, HALF2=True, PTX=True)
            yield gemm.gemm_kernel, types, ce, w, stages, bits, group, bk, bn


def _tc_sass_configs(bits: int, group: int, quick: bool, space: list | None):
    """``sass_configs`` of the tensor-core GEMM (none where a K block of 16 words would straddle a group)."""
    bk = gemm_tc.block_k(bits, group)
    if group and group % bk:
        return
    if quick:
        d = default_gemm_tc(bits, group)
        space = [(16, d.block_n, bk, d.num_warps, d.num_stages)]
    space = list(dict.fromkeys((16, bn, bk, w, st) for _, bn, _, w, st in (space or gemm_tc_space(bits, group))))
    types = {**_PTRS, "part_ptr": "*fp32", "cnt_ptr": "*i32", "epoch": "i32", "M": "i32", "N": "i32", "K": "i32",
             "stride_xm": "i32", "stride_om": "i32", "M_BUCKET": "i32"}
    for bm, bn, _, w, stages in space:
        ce = dict(BITS=bits, GROUP=group, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, GROUP_M=8, PTX=True,
                  EVEN=True, XS_N=gemm_tc.xs_width(bn, w))
        yield gemm_tc.gemm_tc_kernel, types, ce, w, stages, bits, group, bk, bn
