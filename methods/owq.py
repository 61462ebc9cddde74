"""OWQ (Lee et al., 2024): outlier-aware weight quantization — a few weak columns stay in fp16.

Follows the reference ``owq/recon.py`` and ``main.py`` of xvyaward/owq:
- weak columns: input channels ``j`` of largest sensitivity ``H_jj · ‖W_:,j − RTN(W)_:,j‖²``
  (the Hessian diagonal times the column's squared error under a per-channel round-to-nearest
  grid of the whole matrix, the reference's default "frob norm" criterion);
- the columns are permuted so the weak ones come last (the others keep their order, or with
  ``act_order`` go by decreasing sensitivity), the per-channel grid is found on the non-weak
  columns only, and GPTQ quantizes the non-weak columns with the inverse Hessian of the whole
  permuted matrix: its lazy updates reach the weak columns, which are then kept in fp16 *with*
  the compensation (not their original values);
- group grids (``group_size``) are found as GPTQ does, over the permuted non-weak columns.

How many fp16 columns: the reference derives them from ``target_bit`` with per-architecture
constants (LLaMA: ``r = 12/(16 − wbits) · (target − wbits) / 7`` and ratios 1 for attention,
0.375 for MLP layers), which amount to giving every linear layer about the same number of fp16
weights. We compute that directly from the layer shapes, so any model works: the extra bits
``(target_bits − bits) · N`` (N = all quantized weights) are split equally over the layers, a
layer's fp16 column costs ``d_out · (16 − bits)`` plus a 32-bit index (the reference stores the
indices as int32), columns are floored and the remaining budget goes to the largest remainders.
The achieved average therefore never exceeds ``target_bits`` and counts the fp16 columns and
their indices; it is what the record reports.
Deviations: no rounding to an even column count (a constraint of the reference's CUDA kernel;
the harness evaluates fake-quant weights); the grid is min-max (the reference's ``--tuning
minmax``, the same grid as the harness's GPTQ and APTQ) rather than its default MSE grid search,
so OWQ and GPTQ differ only by the fp16 columns.
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

FP16_BITS = 16
INDEX_BITS = 32  # one int32 index per fp16 column, as the reference stores them
NOT_PACKABLE = "fp16 weak columns are not representable by the uniform 2/4-bit packed kernels"


@dataclass
class OwqConfig:
    """OWQ's options; their defaults live in ``conf/method/owq.yaml`` only (``Method.default_config``)."""

    bits: int
    target_bits: float  # average bits including the fp16 columns and their indices
    group_size: int
    sym: bool
    percdamp: float
    blocksize: int
    act_order: bool
    true_sequential: bool
    min_tokens: int  # fewer calibration tokens: identity Hessian (methods.gptq, take_hessian)

    def __post_init__(self) -> None:
        check_solver(bits=self.bits, group_size=self.group_size, sym=self.sym, percdamp=self.percdamp,
                     blocksize=self.blocksize, min_tokens=self.min_tokens)
        if not isinstance(self.target_bits, (int, float)) or not self.bits <= self.target_bits < FP16_BITS:
            raise ConfigError(f"target_bits={self.target_bits} must be in [bits={self.bits}, {FP16_BITS}): it is the "
                              f"average including the fp16 columns, e.g. target_bits={self.bits + 0.01:g}")


def column_cost(d_out: int, bits: int) -> int:
    """Extra bits of one fp16 column instead of a ``bits``-bit one, index included."""
    return d_out * (FP16_BITS - bits) + INDEX_BITS


def layer_bits(d_out: int, d_in: int, bits: int, n_fp16: int) -> float:
    """Bits per weight of a layer with ``n_fp16`` fp16 columns (their indices included)."""
    return bits + n_fp16 * column_cost(d_out, bits) / (d_out * d_in)


def allocate_fp16_columns(shapes: dict[str, tuple[int, int]], bits: int, target_bits: float) -> dict[str, int]:
    """fp16 columns per layer (shapes: name → (d_out, d_in)) for an average ≤ ``target_bits``.

    Equal share of the extra bits per layer, floored, leftover budget to the largest remainders
    (ties in model order). See the module docstring.
    """
    N = sum(o * i for o, i in shapes.values())
    budget = (target_bits - bits) * N
    if not shapes or budget <= 0:
        return {name: 0 for name in shapes}
    share = budget / len(shapes)
    ideal = {n: min(share / column_cost(o, bits), i - 1) for n, (o, i) in shapes.items()}
    cols = {n: math.floor(x) for n, x in ideal.items()}
    left = budget - sum(cols[n] * column_cost(shapes[n][0], bits) for n in cols)
    for n in sorted(ideal, key=lambda n: ideal[n] - cols[n], reverse=True):  # sorted() is stable
        cost = column_cost(shapes[n][0], bits)
        if ideal[n] > cols[n] and cost <= left:
            cols[n] += 1
            left -= cost
    return cols


def weak_columns(W: torch.Tensor, H: torch.Tensor, n_out: int, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (sorted) of the ``n_out`` most sensitive input channels, and the sensitivities (d_in,).

    Sensitivity ``H_jj · Σ_i (W_ij − RTN(W)_ij)²`` with a per-channel RTN grid of all of ``W``.
    """
    scale, zero = find_params(W, spec.bits, spec.sym)  # (d_out, 1)
    col_err = (W - quantize(W, scale, zero, spec.maxq)).pow(2).sum(dim=0)  # (d_in,)
    sens = torch.diag(H) * col_err
    ids = torch.argsort(sens, descending=True)[:n_out]
    return torch.sort(ids).values, sens


def owq_quantize(
    W: torch.Tensor, H: torch.Tensor, n_out: int, spec: QuantSpec, cfg: OwqConfig
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Quantize ``W`` (d_out, d_in) against ``H`` (d_in, d_in) keeping ``n_out`` weak columns in fp16."""
    W = W.float()  # read only until the permutation below copies W and H
    d_out, d_in = W.shape
    weak, sens = weak_columns(W, H, n_out, spec)
    keep = torch.ones(d_in, dtype=torch.bool, device=W.device)
    keep[weak] = False
    if cfg.act_order:
        order = torch.argsort(sens, descending=True)
        rest = order[keep[order]]
    else:
        rest = torch.arange(d_in, device=W.device)[keep]
    perm = torch.cat([rest, weak])  # weak columns last
    W, H = W[:, perm], H[perm][:, perm]
    n_q = d_in - n_out
    scale, zero = find_params(W[:, :n_q], spec.bits, spec.sym)  # grid without the weak columns
    drop_dead_inputs(W, H)
    Hinv, retries = inverse_hessian_factor(H, cfg.percdamp)
    g = spec.group_size
    grid = [scale, zero]

    def quantize_column(j: int, w: torch.Tensor, Wcur: torch.Tensor) -> torch.Tensor:
        if g != -1 and j % g == 0:  # GPTQ's group grid, on the partly updated weights
            grid[:] = find_params(Wcur[:, j : min(j + g, n_q)], spec.bits, spec.sym)
        return quantize(w.unsqueeze(1), grid[0], grid[1], spec.maxq).flatten()

    Q, loss = compensated_quantize(W, Hinv, quantize_column, n_cols=n_q, blocksize=cfg.blocksize)
    Q = torch.cat([Q, W[:, n_q:]], dim=1)[:, torch.argsort(perm)]  # weak columns: compensated fp16
    return Q, {"loss": loss, "damp_retries": retries, "fp16_column_ids": weak.tolist()}


class Owq(Gptq):
    """GPTQ's Hessian statistics (``add_batch``) and driver; quantization keeps weak columns in fp16."""

    name = "owq"
    Config = OwqConfig  # knobs and needs_calibration: GPTQ's

    def __init__(self, config: OwqConfig) -> None:
        super().__init__(config)
        self.fp16_columns: dict[str, int] = {}

    def pack_refusal(self) -> str | None:
        return NOT_PACKABLE

    def export_refusal(self) -> str | None:
        return "fp16 weak columns are not one uniform integer grid per layer"

    def label(self) -> str:
        return " ".join([f"OWQ {self.config.target_bits:g}", *self.solver_tags()])

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        """Uniform ``bits`` for the quantized columns; also fixes each layer's fp16 column count."""
        shapes = {n: (m.out_features, m.in_features) for n, m in layers.items()}
        self.fp16_columns = allocate_fp16_columns(shapes, self.config.bits, self.config.target_bits)
        return BitPlan({name: self.config.bits for name in layers})

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        W = layer.weight.data  # (d_out, d_in)
        H, cfg, info = self.take_hessian(name, layer)
        n_out = self.fp16_columns.get(name, 0)
        Q, stats = owq_quantize(W, H, n_out, spec, cfg)
        err = relative_error(W, Q)
        layer.weight.data.copy_(Q.to(W.dtype))
        d_out, d_in = W.shape
        bits = layer_bits(d_out, d_in, spec.bits, n_out)
        n_groups = 1 if spec.group_size == -1 else math.ceil((d_in - n_out) / spec.group_size)
        grid_bits = n_groups * (SCALE_BITS + (0 if spec.sym else spec.bits)) / d_in  # scale + zero per group
        return LayerResult({"err": err, **info, **stats, "fp16_columns": n_out, "bits_per_weight": bits,
                            "bits_per_weight_with_overhead": bits + grid_bits, "packable": False,
                            "packable_reason": NOT_PACKABLE})


@hookimpl
def harness_register_methods(register):
    register(Owq)
