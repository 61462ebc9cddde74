"""The public packed matmul: the ``torch.library`` op ``harness::quant_matmul``.

``y (..., N) = x (..., K) @ Ŵᵀ`` with Ŵ dequantized from the packed buffers of
``harness.packed.packing``. Dispatch: the Triton kernels (``harness.packed.kernels.launch``) on CUDA
tensors (and on CPU under ``TRITON_INTERPRET=1``, which the kernel tests use), the pure-PyTorch
``reference_matmul`` on CPU otherwise. Triton is imported only when a kernel runs, so the harness
works without it (macOS, Windows, CPU-only installs); a CUDA run without Triton is refused with
one line. The fake implementation lets ``torch.compile`` trace through the op.
"""
from __future__ import annotations

import importlib.util

import torch

from harness.errors import ConfigError
from harness.packed.packing import reference_matmul
from harness.packed.switches import interpreting


def triton_available() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # hidden or broken installs count as absent
        return False


def check_kernels(device: str) -> None:
    """Refuse, before any work, a packed run on a device whose kernels cannot be had."""
    if device.startswith("cuda") and not triton_available():
        raise ConfigError("pack=true on CUDA runs Triton kernels, and triton is not installed; "
                          "pip install triton, or evaluate with pack=false")


def uses_kernels(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" or (interpreting() and triton_available())


@torch.library.custom_op("harness::quant_matmul", mutates_args=())
def quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bits: int, group_size: int) -> torch.Tensor:
    """x (..., K) @ Ŵᵀ → (..., N) in x's dtype, Ŵ from the packed buffers (``harness.packed.packing``)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    if x2.shape[0] == 0:
        return x.new_empty((*lead, qweight.shape[1]))
    if uses_kernels(x2):
        from harness.packed.kernels import launch  # the kernel modules are the only Triton importers

        y = launch(x2, qweight, scales, zeros, bits, group_size)
    else:
        y = reference_matmul(x2, qweight, scales, zeros, bits, group_size)
    return y.reshape(*lead, qweight.shape[1])


@quant_matmul.register_fake
def _(x, qweight, scales, zeros, bits, group_size):
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))
