"""Hessian-compensated column-by-column quantization with a pluggable per-column quantizer.

The GPTQ/OBS update, factored out for methods whose columns are not all quantized on one uniform
grid: OWQ (the last columns stay in fp16 and absorb the compensation) and PB-LLM's GPTQ-PB (each
column mixes binarized and 8-bit weights). ``methods.gptq.gptq_quantize`` is the reference this
loop reproduces exactly when given GPTQ's uniform quantizer (tested).

For column ``j`` (in the order of ``W``'s columns) with upper Cholesky factor ``Hinv`` of
``(H + λI)⁻¹``: ``q = quantize_column(j, w, W)``, ``Err = (w − q) / Hinv_jj``, and the later columns
move by ``−Err · Hinv_j,j:``; inside a block of ``blocksize`` columns the update is immediate,
to the columns after the block it is applied once per block (GPTQ's lazy batch update).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

#: ``quantize_column(j, w, W) -> q``: column index ``j``, its current (compensated) values ``w``
#: (d_out,), and the whole matrix ``W`` (d_out, d_in) as updated up to the current block (group
#: grids are found on it, as in GPTQ); returns the quantized column (d_out,).
QuantizeColumn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def drop_dead_inputs(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """GPTQ's handling of inputs that never fire: ``H_jj = 0`` → ``H_jj = 1`` and ``W[:, j] = 0``.

    ``W`` (d_out, d_in) and ``H`` (d_in, d_in) are modified in place; returns the dead mask (d_in,).
    """
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return dead


def compensated_quantize(
    W: torch.Tensor, Hinv: torch.Tensor, quantize_column: QuantizeColumn, n_cols: int | None = None,
    blocksize: int = 128,
) -> tuple[torch.Tensor, float]:
    """Quantize the first ``n_cols`` columns of ``W`` (d_out, d_in), float32, in place.

    Returns ``Q`` (d_out, n_cols) and GPTQ's loss ``Σ (w − q)² / Hinv_jj² / 2``. On return
    ``W[:, n_cols:]`` holds the remaining columns with every compensation applied (OWQ keeps them
    in fp16); ``W[:, :n_cols]`` is scratch.
    """
    d_out, d_in = W.shape
    n = d_in if n_cols is None else n_cols
    Q = torch.zeros(d_out, n, dtype=W.dtype, device=W.device)
    loss = 0.0
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].clone()  # (d_out, count)
        Q1, Err1, Losses1 = torch.zeros_like(W1), torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            q = quantize_column(i1 + i, w, W)  # (d_out,)
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        loss += float(Losses1.sum()) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])  # lazy batch update of the later columns
    return Q, loss
