"""GPTQ's layer Hessian ``H = 2/n Σ_b X_b X_bᵀ``, accumulated over calibration batches.

One home for the statistic every Hessian method starts from (``methods.gptq`` and its subclasses) and
that the loss-based sensitivities (``harness.quantize.loss_sensitivity``) need, so neither this layer
nor that one imports a method plugin to get it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.quantize.layers import run_block


def hessian_update(H: torch.Tensor | None, n: int, X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(H, n)`` after one more batch ``X`` (B, T, d_in): the running mean keeps ``H = 2/n Σ X Xᵀ``
    (d_in, d_in) float32 over the ``n`` sequences seen so far (GPTQ's ``add_batch``); ``H`` is updated in place."""
    b = X.shape[0]
    if H is None:
        H = torch.zeros(X.shape[-1], X.shape[-1], device=X.device, dtype=torch.float32)
    H *= n / (n + b)
    n += b
    Xt = (2 / n) ** 0.5 * X.reshape(-1, X.shape[-1]).t().float()  # (d_in, B·T)
    H += Xt.matmul(Xt.t())
    return H, n


@torch.no_grad()
def layer_hessians(block: nn.Module, modules: dict[str, nn.Linear], inps: torch.Tensor,
                   kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """GPTQ's H (d_in, d_in) of each of ``modules`` (full name → module) of ``block`` from one pass of the
    block over its inputs ``inps`` (n, T, d); a module no token reached (an MoE expert) has none."""
    H: dict[str, torch.Tensor] = {}
    n: dict[str, int] = {}

    def add(name: str, X: torch.Tensor) -> None:
        X = X.unsqueeze(0) if X.dim() == 2 else X  # (B, T, d_in)
        H[name], n[name] = hessian_update(H.get(name), n.get(name, 0), X)

    handles = [mod.register_forward_hook(lambda _m, inp, _out, name=name: add(name, inp[0].data))
               for name, mod in modules.items()]
    try:
        run_block(block, inps, kwargs)
    finally:
        for h in handles:
            h.remove()
    return H
