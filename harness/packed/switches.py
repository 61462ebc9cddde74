"""The environment switches of the packed kernels, read in one place (no Triton import).

- ``TRITON_INTERPRET=1``: Triton kernels run on the CPU (slowly), as in the tests; the inline PTX is
  replaced by the same arithmetic in pure Triton, and autotuning is off.
- ``HARNESS_AUTOTUNE=1``: autotune shapes that no shipped table covers (off by default: a first run on a GPU
  should not spend minutes compiling; ``harness.packed.tuning`` says what runs instead).
- ``HARNESS_HALF2=0``: the fp32 paths instead of the packed-half2 ones for fp16 activations.
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: Triton kernels run on the CPU (slowly), as in the tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_enabled() -> bool:
    """Autotuning only on request (``HARNESS_AUTOTUNE=1``), never under the interpreter."""
    return not interpreting() and os.environ.get("HARNESS_AUTOTUNE", "0") == "1"


def half2_enabled(x: torch.Tensor) -> bool:
    """The packed-half2 paths (fp16 pairs of codes; inline PTX when compiled): fp16 activations whose
    int32 view is aligned, unless switched off with ``HARNESS_HALF2=0`` (then the fp32 paths run)."""
    return x.dtype == torch.float16 and x.data_ptr() % 4 == 0 and os.environ.get("HARNESS_HALF2", "1") != "0"
