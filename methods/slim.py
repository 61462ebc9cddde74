"""Mixed precision inside a layer (SliM-LLM, Huang et al., 2024): each group of a layer gets 2, 3 or 4 bits.

The unit that gets a width is a group of ``group_size`` input columns (all rows), as in SliM-LLM's
128-column groups; with ``group_size=-1`` it is an output row (each row its own per-channel grid and width).
Every unit of a layer has the same number of weights, so moving one unit up a bit and one down a bit keeps
the layer's average exactly.

**Average.** ``target_bits`` is the average width over all quantized weights. With ``b₀ = ⌊target⌋`` every
layer starts at ``b₀`` with ``n_hi`` of its ``U`` units at ``b₀ + 1``; ``n_hi = (target − b₀)·U`` rounded, the
remainder (in weights) carried to the next layer, and what is left at the end settled one unit per layer
(smallest units first): the model's average is exact whenever the budget is a multiple of the smallest unit
(on SmolLM2 with g64 at every multiple of 1/4 bit: tested), each layer's close to it (≤ 1/6 bit there;
``plan_bits``; the record keeps each layer's achieved average).

**Criteria** (``criterion``):
- ``salience`` (the paper's salience-determined allocation, as ``slim-llm/slim_gptq.py`` of
  Aaronhuang-778/SliM-LLM computes it): a unit's salience is ``Σ_{i,j∈unit} W_ij² / [Hinv]_jj²`` with
  ``Hinv`` = GPTQ's upper Cholesky factor of ``(H + λI)⁻¹`` (the OBS saliency in GPTQ's column order;
  ``λ`` = ``percdamp`` · mean diag H, the solver's damping; the reference's salience pass adds 0.01).
  Units in order of salience; the ``n_hi`` most salient start at ``b₀ + 1``; then ``k``
  pairs of ±1-bit moves among the ``b₀`` units (the ``k`` most salient up, the ``k`` least salient down,
  within ``choices``), ``k`` chosen from ``search_steps`` evenly spaced values in ``0 … max`` by the least
  layer output error ``tr(ΔW H ΔWᵀ)`` of RTN at the candidate widths.
- ``error`` (the harness's loss-aware allocation at group grain): a unit's cost at width ``b`` is the
  output error of its RTN quantization, ``tr(ΔW_u H_uu ΔW_uᵀ)`` (``H_uu``: the unit's diagonal block of
  ``H``; for rows, ``ΔW_r H ΔW_rᵀ``, exact since rows are independent), and the exact knapsack of
  ``harness.quantize.allocation`` picks the widths with the least summed cost at the layer's average.

**Quantization.** GPTQ's solver (SliM-LLM is built on GPTQ) with each unit's grid at its own width: a column
group's min-max grid found when the group starts (GPTQ's dynamic groups), or with ``act_order`` found on
the original weights before any update (GPTQ's ``static_groups``, since the permuted columns of a group
arrive out of order); a row's per-channel grid at its width.

**Bits.** ``bits_per_weight`` = the layer's exact average width; ``bits_per_weight_with_overhead`` adds the
fp16 scale and the ``b``-bit zero point of every (row, group) grid and the width map
(``⌈log₂ |choices|⌉`` bits per unit). Not packable (``NOT_PACKABLE``): evaluated as fake-quant.

Deviations from SliM-LLM: the number of ±1 pairs is chosen by the layer output's squared error through
``H`` over all calibration tokens (the reference: the KL divergence between the softmax over output features
of the full-precision and the RTN-quantized layer output, averaged over the calibration windows), and
``k = 0`` (uniform) is among the candidates (the reference tries ``1 … G/2 − 1``, so it always mixes);
non-integer averages (3.5) start from the ``b₀``/``b₀ + 1`` split above (the paper reports integer
averages); 64-column groups on SmolLM2, whose widths 128 does not divide; optional ``act_order``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.quantize.allocation import knapsack
from harness.quantize.compensate import compensated_quantize, drop_dead_inputs
from harness.quantize.driver import BitPlan, LayerResult
from harness.quantize.primitives import SCALE_BITS, QuantSpec, check_bits, find_params, quantize, relative_error, rtn
from methods.gptq import Gptq, check_solver, inverse_hessian_factor

log = logging.getLogger(__name__)

CRITERIA = ("salience", "error")
NOT_PACKABLE = "per-group bit widths (several widths in one layer) are not representable by the uniform packed kernels"


@dataclass
class SlimConfig:
    """The options; their defaults live in ``conf/method/slim.yaml`` only (``Method.default_config``)."""

    target_bits: float  # average width over the quantized weights
    choices: list[int]  # the widths a unit may get
    group_size: int  # the unit: a group of columns; -1: an output row
    sym: bool
    criterion: str  # salience (SliM-LLM) | error (knapsack over unit output errors)
    search_steps: int  # salience: candidate pair counts tried
    percdamp: float
    blocksize: int
    act_order: bool
    true_sequential: bool
    min_tokens: int

    def __post_init__(self) -> None:
        self.choices = sorted(int(b) for b in self.choices)
        if not self.choices:
            raise ConfigError("choices must list at least one bit width, e.g. [2,3,4]")
        for b in self.choices:
            check_bits(b)
        check_solver(bits=self.choices[0], group_size=self.group_size, sym=self.sym, percdamp=self.percdamp,
                     blocksize=self.blocksize, min_tokens=self.min_tokens)
        lo, hi = self.choices[0], self.choices[-1]
        if isinstance(self.target_bits, bool) or not isinstance(self.target_bits, (int, float)) \
                or not lo <= self.target_bits <= hi:
            raise ConfigError(f"target_bits={self.target_bits} must be within the choices [{lo}, {hi}]")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion={self.criterion!r} is unknown; choose one of {', '.join(CRITERIA)}")
        if isinstance(self.search_steps, bool) or not isinstance(self.search_steps, int) or self.search_steps < 1:
            raise ConfigError(f"search_steps={self.search_steps!r} must be an integer ≥ 1")
        if any(b + 1 not in self.choices for b in self.choices[:-1]):
            raise ConfigError(f"choices={self.choices} must be consecutive widths (±1-bit moves), e.g. [2,3,4]")


def base_width(target: float, choices: list[int]) -> int:
    """``b₀``: the largest choice ≤ target that still has a choice above it (or the top one at the top)."""
    if target >= choices[-1]:
        return choices[-1]
    return max(b for b in choices[:-1] if b <= target + 1e-9)


def plan_high_units(shapes: dict[str, tuple[int, int]], group_size: int, target: float, choices: list[int]
                    ) -> tuple[int, dict[str, int]]:
    """``b₀`` and, per layer (name → (d_out, d_in)), how many of its units start at ``b₀ + 1`` so that the
    model's average is ``target`` (the remainder carried from layer to layer in model order)."""
    b0 = base_width(target, choices)
    frac = 0.0 if b0 == choices[-1] else target - b0
    carry, out, per_unit, units = 0.0, {}, {}, {}
    for name, (d_out, d_in) in shapes.items():
        units[name] = d_out if group_size == -1 else d_in // group_size
        per_unit[name] = d_out * d_in // units[name]
        want = frac * d_out * d_in + carry  # extra weights at b₀ + 1 this layer should hold
        out[name] = min(units[name], max(0, round(want / per_unit[name])))
        carry = want - out[name] * per_unit[name]
    # the rounding leaves |carry| < half a unit of the last layer: settle it one unit per layer (the smallest
    # units that fit, last layers first), so the model's average is exact when the budget allows it
    moved = True
    while moved and abs(carry) > 1e-6:
        moved = False
        for name in sorted(reversed(list(shapes)), key=lambda n: per_unit[n]):  # stable: last layers first
            step = 1 if carry > 0 else -1
            if per_unit[name] <= abs(carry) + 1e-6 and 0 <= out[name] + step <= units[name]:
                out[name] += step
                carry -= step * per_unit[name]
                moved = True
                if abs(carry) <= 1e-6:
                    break
    return b0, out


def unit_mask(widths: torch.Tensor, shape: tuple[int, int], group_size: int) -> torch.Tensor:
    """Per-weight width (d_out, d_in) from per-unit widths (U,)."""
    d_out, d_in = shape
    if group_size == -1:
        return widths[:, None].expand(d_out, d_in)
    return widths.repeat_interleave(group_size)[None, :].expand(d_out, d_in)


def rtn_at(W: torch.Tensor, widths: torch.Tensor, group_size: int, sym: bool,
           cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """RTN of ``W`` (d_out, d_in) with each unit at its width (U,); ``cache``: width → RTN(W) at that width."""
    for b in widths.unique().tolist():
        if b not in cache:
            cache[b] = rtn(W, QuantSpec(int(b), group_size, sym)).Q
    mask = unit_mask(widths, tuple(W.shape), group_size)
    Q = torch.empty_like(W)
    for b, Qb in cache.items():
        sel = mask == b
        Q[sel] = Qb[sel]
    return Q


def salience(W: torch.Tensor, hinv_diag: torch.Tensor, group_size: int) -> torch.Tensor:
    """SliM-LLM's unit salience ``Σ W_ij² / [H⁻¹]_jj²`` (U,); ``hinv_diag`` (d_in,)."""
    S = W.pow(2) / hinv_diag.pow(2)[None, :]  # (d_out, d_in)
    if group_size == -1:
        return S.sum(1)
    return S.reshape(S.shape[0], -1, group_size).sum((0, 2))


def output_error(dW: torch.Tensor, H: torch.Tensor) -> float:
    return float(((dW @ H) * dW).sum())


def allocate_salience(W: torch.Tensor, H: torch.Tensor, hinv_diag: torch.Tensor, b0: int, n_hi: int,
                      cfg: SlimConfig) -> tuple[torch.Tensor, dict[str, Any]]:
    """Widths (U,) by salience: ``n_hi`` most salient at ``b₀ + 1``, then the best number of ±1 pairs."""
    g, choices = cfg.group_size, cfg.choices
    sal = salience(W, hinv_diag, g)
    order = torch.argsort(sal, descending=True)  # most salient first
    U = sal.numel()
    base = torch.full((U,), b0, dtype=torch.long, device=W.device)
    base[order[:n_hi]] = b0 + 1
    at_b0 = order[n_hi:]  # the b₀ units, most salient first
    up_ok, down_ok = b0 + 1 in choices, b0 - 1 in choices
    k_max = at_b0.numel() // 2 if (up_ok and down_ok) else 0
    ks = sorted({round(i * k_max / max(cfg.search_steps - 1, 1)) for i in range(cfg.search_steps)}) if k_max else [0]
    cache: dict[int, torch.Tensor] = {}
    best = (math.inf, 0, base)
    errors = []
    for k in ks:
        w = base.clone()
        if k:
            w[at_b0[:k]] = b0 + 1
            w[at_b0[-k:]] = b0 - 1
        err = output_error(rtn_at(W, w, g, cfg.sym, cache) - W, H)
        errors.append(err)
        if err < best[0]:
            best = (err, k, w)
    return best[2], {"pairs": best[1], "pairs_tried": ks, "search_err": errors}


def allocate_error(W: torch.Tensor, H: torch.Tensor, budget: float, cfg: SlimConfig
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Widths (U,) minimising the summed unit output errors at average ``budget`` (exact knapsack)."""
    g = cfg.group_size
    d_out, d_in = W.shape
    U = d_out if g == -1 else d_in // g
    costs: dict[str, dict[int, float]] = {str(u): {} for u in range(U)}
    for b in cfg.choices:
        dW = rtn(W, QuantSpec(b, g, cfg.sym)).Q - W  # (d_out, d_in)
        if g == -1:
            c = ((dW @ H) * dW).sum(1)  # (d_out,): rows are independent
        else:
            Dg = dW.reshape(d_out, U, g)
            Hgg = torch.stack([H[u * g:(u + 1) * g, u * g:(u + 1) * g] for u in range(U)])  # (U, g, g)
            c = torch.einsum("rui,uij,ruj->u", Dg, Hgg, Dg)  # (U,)
        for u in range(U):
            costs[str(u)][b] = float(c[u])
    n = d_out * d_in // U
    plan, info = knapsack(costs, {str(u): n for u in range(U)}, budget)
    widths = torch.tensor([plan[str(u)] for u in range(U)], device=W.device)
    return widths, {"knapsack_cost": info["cost"]}


def slim_quantize(W: torch.Tensor, H: torch.Tensor, widths: torch.Tensor, cfg: SlimConfig
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    """GPTQ with each unit's grid at its own width. ``W`` (d_out, d_in), ``H`` (d_in, d_in), ``widths`` (U,)."""
    W = W.clone().float()
    H = H.clone()
    d_out, d_in = W.shape
    g = cfg.group_size
    drop_dead_inputs(W, H)
    if g == -1:  # per-row grids at the rows' widths, found once on the whole row (GPTQ's per-channel grid)
        maxq_row = (2 ** widths.float() - 1)[:, None]  # (d_out, 1)
        scale = torch.empty(d_out, 1, device=W.device)
        zero = torch.empty(d_out, 1, device=W.device)
        for b in widths.unique().tolist():
            rows = widths == b
            scale[rows], zero[rows] = find_params(W[rows], int(b), cfg.sym)
    static = None
    if g != -1 and cfg.act_order:  # grids on the original weights (static groups)
        static = [find_params(W[:, c:c + g], int(widths[c // g]), cfg.sym) for c in range(0, d_in, g)]
    perm = None
    if cfg.act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv, retries = inverse_hessian_factor(H, cfg.percdamp)
    grid: list[Any] = [None, None, None]

    def quantize_column(col: int, w: torch.Tensor, Wcur: torch.Tensor) -> torch.Tensor:
        if g == -1:
            q = torch.minimum(torch.clamp(torch.round(w.unsqueeze(1) / scale) + zero, min=0), maxq_row)  # (d_out, 1)
            return (scale * (q - zero)).flatten()  # primitives.quantize with a per-row maxq
        if static is not None:
            u = int(perm[col]) // g
            s, z = static[u]
            return quantize(w.unsqueeze(1), s, z, 2 ** int(widths[u]) - 1).flatten()
        if col % g == 0:
            b = int(widths[col // g])
            grid[:] = [*find_params(Wcur[:, col:col + g], b, cfg.sym), 2**b - 1]
        return quantize(w.unsqueeze(1), *grid).flatten()

    Q, loss = compensated_quantize(W, Hinv, quantize_column, blocksize=cfg.blocksize)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, {"loss": loss, "damp_retries": retries}


def layer_bits(widths: torch.Tensor, shape: tuple[int, int], cfg: SlimConfig) -> tuple[float, float]:
    """(bits per weight, with overhead): the exact average width; + every (row, group) grid's fp16 scale and
    ``b``-bit zero point, and the width map (``⌈log₂ |choices|⌉`` bits per unit)."""
    d_out, d_in = shape
    numel, g = d_out * d_in, cfg.group_size
    per_unit = numel / widths.numel()
    avg = float(widths.sum()) * per_unit / numel
    zero_bits = torch.zeros_like(widths) if cfg.sym else widths
    grids_per_unit = 1 if g == -1 else d_out  # a row: one grid; a column group: one grid per row
    grid_bits = float((SCALE_BITS + zero_bits).sum()) * grids_per_unit
    map_bits = widths.numel() * math.ceil(math.log2(len(cfg.choices))) if len(cfg.choices) > 1 else 0
    return avg, avg + (grid_bits + map_bits) / numel


class Slim(Gptq):
    """GPTQ's Hessian statistics and driver; per-unit widths by salience or by the knapsack."""

    name = "slim"
    Config = SlimConfig
    knobs = frozenset({"bits", "group_size", "sym", "act_order", "true_sequential"})
    mixed_precision = True

    def __init__(self, config: SlimConfig) -> None:
        super().__init__(config)
        self.b0 = base_width(config.target_bits, config.choices)
        self.n_hi: dict[str, int] = {}

    def label(self) -> str:
        c = self.config
        crit = "" if c.criterion == "salience" else f" {c.criterion}"
        choices = "" if c.choices == [2, 3, 4] else " b" + "".join(map(str, c.choices))
        return " ".join([f"SliM {c.target_bits:g}{crit}{choices}", *self.solver_tags()])

    def run_tag(self) -> str:
        return self.label()

    def bit_widths(self) -> tuple[int, ...]:
        return tuple(self.config.choices)

    def pack_refusal(self) -> str | None:
        return NOT_PACKABLE

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        """Every layer's base width ``b₀`` (the record's ``bit_plan``), and how many units start above it."""
        shapes = {n: (m.out_features, m.in_features) for n, m in layers.items()}
        for n, (_, d_in) in shapes.items():
            self.spec(self.b0).groups(d_in, n)  # a group size that does not divide: one line, before any work
        self.b0, self.n_hi = plan_high_units(shapes, self.config.group_size, self.config.target_bits,
                                             self.config.choices)
        return BitPlan({n: self.b0 for n in layers},
                       {"allocator": f"slim-{self.config.criterion}", "budget_bits": self.config.target_bits,
                        "choices": list(self.config.choices), "unit": "row" if self.config.group_size == -1
                        else f"{self.config.group_size} columns"})

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        cfg = self.config
        W = layer.weight.data  # (d_out, d_in)
        Wf = W.float()
        H, solver_cfg, info = self.take_hessian(name, layer)
        d_out, d_in = W.shape
        U = d_out if cfg.group_size == -1 else d_in // cfg.group_size
        n_hi = self.n_hi.get(name, 0)
        Hd = H.clone()
        drop_dead_inputs(Wf.clone(), Hd)
        if cfg.criterion == "salience":  # GPTQ's Hinv (upper Cholesky factor of (H + λI)⁻¹), as the reference
            hinv_diag = inverse_hessian_factor(Hd, solver_cfg.percdamp)[0].diagonal()  # (d_in,)
            widths, alloc = allocate_salience(Wf, H, hinv_diag, self.b0, n_hi, cfg)
        else:
            widths, alloc = allocate_error(Wf, H, self.b0 + n_hi / U if self.b0 < cfg.choices[-1] else self.b0, cfg)
        Q, stats = slim_quantize(Wf, H, widths, solver_cfg)
        layer.weight.data.copy_(Q.to(W.dtype))
        bits, bits_overhead = layer_bits(widths, (d_out, d_in), cfg)
        per_unit = d_out * d_in // U
        width_numel = {str(b): int((widths == b).sum()) * per_unit for b in cfg.choices}
        return LayerResult({"err": relative_error(W, Q), **info, **stats, **alloc,
                            "width_map": "".join(str(int(b)) for b in widths.tolist()),
                            "width_numel": width_numel, "bits_per_weight": bits,
                            "bits_per_weight_with_overhead": bits_overhead,
                            "packable": False, "packable_reason": NOT_PACKABLE})


@hookimpl
def harness_register_methods(register):
    register(Slim)
