"""PB-LLM (Shang et al., 2024): partially binarized LLM — a few salient weights at 8 bits, the rest 1 bit.

Per layer, a fraction ``salient_frac`` of the weights (chosen over the whole matrix) is kept on an
8-bit grid, the rest is binarized to ``α · sign(w)`` with one scale per output row. Follows the
PTQ code of hahnyuan/PB-LLM (``gptq_pb/gptq.py``, ``LowHighGPT``):
- salience: ``|w|`` ("magnitude") or ``w² / Hinv_jj²`` ("hessian"), with ``Hinv`` the upper Cholesky
  factor of the damped ``H⁻¹`` (GPTQ's ``Hinv``: ``Hinv_jj²`` is ``[H⁻¹]_jj`` of the columns not yet
  quantized when column ``j``'s turn comes, so this is the OBS saliency the paper writes as
  ``w² / [H⁻¹]_jj²``); the mask is fixed before any weight moves;
- the 8-bit grid is GPTQ's asymmetric per-row min-max grid of the whole row (the reference's
  ``HighQuantizer(8, perchannel=True, sym=False)``), found on the original weights;
- ``compensate=true`` ("GPTQ-PB"): the columns are quantized in order and each column's error is
  compensated on the later columns with the inverse Hessian, exactly GPTQ's update
  (``harness.quantize.compensate``); ``false``: both parts are rounded directly (plain PB-LLM).
Deviation: the reference's ``xnor`` binarizer subtracts a row mean and computes its scale over
the row with the salient positions zeroed; we use the paper's optimal scale for the binarized
part, ``α = mean |w|`` over the binarized weights of the row, and ``sign(0) = +1`` (a 1-bit code
has no zero), as the issue specifies.

Bits per weight: ``high_bits · f + 1 · (1 − f) + 1`` (the last bit: the salient/binarized mask),
i.e. 2.7 / 3.4 / 4.1 for f = 0.1 / 0.2 / 0.3 — the paper's figures; with the per-row storage
(α and the 8-bit grid's scale in fp16, its zero point in ``high_bits``) in the overhead figure.
The salient count is ``round(f · numel)`` per layer, so the figure is exact up to that rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.quantize.compensate import compensated_quantize, drop_dead_inputs
from harness.quantize.driver import BitPlan, LayerResult
from harness.quantize.primitives import SCALE_BITS, QuantSpec, find_params, quantize, relative_error
from methods.gptq import Gptq, check_solver, inverse_hessian_factor

SALIENCE = ("magnitude", "hessian")
MASK_BITS = 1
NOT_PACKABLE = "binarized weights with a salient-weight mask are not representable by the uniform 2/4-bit kernels"


@dataclass
class PbllmConfig:
    """PB-LLM's options; their defaults live in ``conf/method/pbllm.yaml`` only (``Method.default_config``)."""

    salient_frac: float  # fraction of weights kept at high_bits
    salience: str  # magnitude | hessian
    compensate: bool  # true: GPTQ-PB (Hessian error compensation); false: plain PB-LLM
    high_bits: int
    percdamp: float
    blocksize: int
    min_tokens: int  # fewer calibration tokens: identity Hessian (methods.gptq, take_hessian)

    def __post_init__(self) -> None:
        if not isinstance(self.salient_frac, (int, float)) or not 0 < self.salient_frac < 1:
            raise ConfigError(f"salient_frac={self.salient_frac} is outside (0, 1); it is the fraction of weights "
                              f"kept at {self.high_bits} bits (the paper uses 0.1, 0.2, 0.3)")
        if self.salience not in SALIENCE:
            raise ConfigError(f"salience={self.salience!r} is unknown; choose one of {', '.join(SALIENCE)}")
        if not isinstance(self.compensate, bool):
            raise ConfigError(f"compensate={self.compensate!r} must be true or false")
        check_solver(bits=self.high_bits, group_size=-1, sym=False, percdamp=self.percdamp,  # the per-row 8-bit grid
                     blocksize=self.blocksize, min_tokens=self.min_tokens)


def pb_bits(n_salient: int, numel: int, high_bits: int = 8) -> float:
    """Bits per weight: salient at ``high_bits``, the rest at 1 bit, plus a 1-bit mask per weight."""
    return (high_bits * n_salient + (numel - n_salient) + MASK_BITS * numel) / numel


def salient_mask(W: torch.Tensor, Hinv: torch.Tensor | None, frac: float, salience: str) -> torch.Tensor:
    """Boolean mask (d_out, d_in) of the ``round(frac · numel)`` most salient weights of ``W``."""
    if salience == "magnitude":
        score = W.abs()
    else:
        score = W.pow(2) / torch.diag(Hinv).pow(2).unsqueeze(0)  # w² / Hinv_jj²
    k = math.floor(frac * W.numel() + 0.5)
    mask = torch.zeros(W.numel(), dtype=torch.bool, device=W.device)
    mask[torch.topk(score.flatten(), k).indices] = True
    return mask.view_as(W)


def binarize(W: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``α · sign(W)`` with sign(0) = +1; ``alpha`` broadcasts against ``W``."""
    return torch.where(W >= 0, alpha, -alpha)


def pb_quantize(W: torch.Tensor, H: torch.Tensor | None, cfg: PbllmConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """Partially binarize ``W`` (d_out, d_in); ``H`` (d_in, d_in) is needed for hessian/compensate."""
    W = W.clone().float()
    maxq = 2**cfg.high_bits - 1
    scale, zero = find_params(W, cfg.high_bits, sym=False)  # (d_out, 1): the 8-bit grid of each row
    Hinv, retries = None, 0
    if H is not None:
        H = H.clone()
        drop_dead_inputs(W, H)
        Hinv, retries = inverse_hessian_factor(H, cfg.percdamp)
    salient = salient_mask(W, Hinv, cfg.salient_frac, cfg.salience)  # (d_out, d_in)
    binar = ~salient
    alpha = (W.abs() * binar).sum(1, keepdim=True) / binar.sum(1, keepdim=True).clamp_min(1)  # (d_out, 1)
    stats: dict[str, Any] = {"damp_retries": retries, "salient": int(salient.sum())}
    if cfg.compensate:
        a = alpha.flatten()

        def quantize_column(j: int, w: torch.Tensor, _W: torch.Tensor) -> torch.Tensor:
            high = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            return torch.where(salient[:, j], high, binarize(w, a))

        Q, stats["loss"] = compensated_quantize(W, Hinv, quantize_column, blocksize=cfg.blocksize)
    else:
        Q = torch.where(salient, quantize(W, scale, zero, maxq), binarize(W, alpha))
    return Q, stats


class Pbllm(Gptq):
    """GPTQ's Hessian statistics (``add_batch``), used when the salience or the compensation needs them."""

    name = "pbllm"
    Config = PbllmConfig
    knobs = frozenset()

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return self.config.compensate or self.config.salience == "hessian"

    def pack_refusal(self) -> str | None:
        return NOT_PACKABLE

    def export_refusal(self) -> str | None:
        return "binarized weights with a salient-weight mask are not one uniform integer grid per layer"

    def bit_widths(self) -> tuple[int, ...]:
        return (self.config.high_bits,)

    def label(self) -> str:
        c = self.config
        return f"{'GPTQ-PB' if c.compensate else 'PB-LLM'} {100 * c.salient_frac:g}% {c.salience}"

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        """``high_bits``: the grid of the salient weights; the record's bits come from ``bits_per_weight``."""
        return BitPlan({name: self.config.high_bits for name in layers})

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        W = layer.weight.data  # (d_out, d_in)
        H, cfg, info = self.take_hessian(name, layer) if self.needs_calibration else (None, self.config, {})
        Q, stats = pb_quantize(W, H, cfg)
        err = relative_error(W, Q)
        layer.weight.data.copy_(Q.to(W.dtype))
        bits = pb_bits(stats["salient"], W.numel(), self.config.high_bits)
        row_bits = 2 * SCALE_BITS + self.config.high_bits  # α and the grid scale (fp16), the grid's zero point
        return LayerResult({"err": err, **info, **stats, "bits_per_weight": bits,
                            "bits_per_weight_with_overhead": bits + row_bits / W.shape[1],
                            "packable": False, "packable_reason": NOT_PACKABLE})


@hookimpl
def harness_register_methods(register):
    register(Pbllm)
