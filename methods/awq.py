"""AWQ (Lin et al., MLSys 2024): activation-aware per-input-channel scales, searched on calibration data.

Follows ``awq/quantize/auto_scale.py`` and ``auto_clip.py`` of mit-han-lab/llm-awq:

1. **Scale search.** For the linear layers that read one input ``X`` (q/k/v; gate/up; o_proj; down_proj),
   ``s = x̄^α`` with ``x̄_j = mean_t |X_tj|`` (the activation magnitude of input channel j), normalised by
   ``sqrt(max s · min s)``; ``α`` runs over the grid ``0, 1/n_grid, …, (n_grid − 1)/n_grid`` and the one with
   the least output error of ``Q(W·diag(s))·diag(s)⁻¹`` (``Q``: RTN at the run's grid) is kept. ``α = 0`` is
   ``s = 1``, i.e. plain RTN, so the search never ends worse than RTN on its objective (tested).
2. **Clipping search.** On the scaled weights, per output row and group: the clip value
   ``max |w| · (1 − i/clip_grid)``, ``i < max_shrink · clip_grid``, with the least output error of that
   group's inputs (scaled by ``1/s``) is kept, and the weights are clamped to it. q and k are not
   clipped (the reference skips them: "due to qk bmm, it is hard to clip precisely").
3. **Grid.** ``solver=rtn`` (the reference): round to nearest on the scaled, clipped weights;
   ``solver=gptq``: GPTQ's solver (``methods.gptq``) on them with the Hessian of the scaled inputs
   ``H_s = diag(1/s) H diag(1/s)``. The fake-quant layer keeps ``Q·diag(s)⁻¹``; ``quantize_layer`` returns
   ``Q``'s grid (RTN's or GPTQ's scale and zero point of the scaled weights) with ``input_scale = s``, which
   the packed layer stores (``pack=true``, ``save=true``: ``harness.packed.qlinear.QuantLinear``).

Both objectives are evaluated through GPTQ's ``H = 2/n Σ X Xᵀ`` (accumulated by ``add_batch`` over *all*
calibration tokens): the output error of a weight change ``ΔW`` is ``Σ_t ‖ΔW x_t‖² ∝ tr(ΔW H ΔWᵀ)``, and a
group's clipping error uses the diagonal block ``H_gg``, which is exactly the reference's
``mean_t (x_t,g · Δw_g)²`` without storing the tokens (the reference subsamples 512 tokens for clipping).

Deviations (each keeps the procedure, changes where it is measured or stored):
- the reference measures the q/k/v scale on the attention block's output and the gate/up scale on
  the MLP's output (``module2inspect``); here every group is measured on its own linear outputs (summed
  over the group), which is what it does for o_proj and down_proj;
- the reference folds ``1/s`` into the preceding norm or linear layer, so its stored weights are ``Q(W·s)``
  on a uniform grid and ``s`` costs no storage; here ``s`` stays as a per-input-channel operation of the
  layer itself: the fake-quant weights are ``Q(W·diag(s))·diag(s)⁻¹``, and the packed layer stores the codes
  of ``Q(W·diag(s))`` on the grid plus ``s`` in fp16 (K,) and divides its input by ``s`` before the matmul
  (``Grid.input_scale``; AutoAWQ's ``ScaledActivation`` does the same for activations it cannot fold).
  Why not fold: the layers are quantized sequentially, block by block, so the previous linear layer
  (up_proj before down_proj, v_proj before o_proj) is already on its grid when this layer's scale is
  searched, and folding ``1/s`` into it would move it off that grid; and the op before a layer differs per
  family (RMSNorm, LayerNorm with bias, Gemma's ``1 + w``, MoE routers and parallel attention/MLP reading
  the same normed input), while one layer-local scale works for every family. Cost: 2·K bytes per layer
  (``16 / d_out`` bits per weight: 0.023 on SmolLM2-135M), counted in ``bits_per_weight_with_overhead`` (the
  record's bytes per weight) and in the packed model's measured bytes. ``s`` is rounded to fp16 before the
  grid is found, so the fake-quant and the packed layer use the same ``s``. The export formats (GPTQ,
  compressed-tensors) store only the integer grid, so ``save_format=gptq|compressed-tensors`` is refused
  before anything is loaded (``export_refusal``);
- the grid is the harness's min-max grid that includes 0 (GPTQ's, as RTN and GPTQ use here); the
  reference's ``pseudo_quantize_tensor`` spans ``[min w, max w]`` without forcing 0;
- the layers are quantized block by block on the quantized model's propagated inputs (GPTQ's sequential
  driver, ``harness.quantize.sequential``); the reference searches every block on the scaled but not
  yet quantized model and quantizes afterwards.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.plugins.method import Method
from harness.quantize.driver import LayerResult
from harness.quantize.layers import local_name
from harness.quantize.primitives import GRID_KEY, SCALE_BITS, Grid, QuantSpec, relative_error, rtn
from methods.gptq import Gptq, check_solver, gptq_quantize

log = logging.getLogger(__name__)

SOLVERS = ("rtn", "gptq")
NO_CLIP = ("q_proj", "k_proj")  # the reference's "q_", "k_" rule (the attention's bilinear qk product)
NOT_EXPORTABLE = ("AWQ's per-input-channel activation scales s (kept in the packed layer, which divides its input "
                  "by s, not folded into the preceding layer) have no place in this format, which stores only the "
                  "integer grid; use save_format=packed")
FP16_RANGE = (2.0**-14, 2.0**15)  # s is stored in fp16: kept within its normal range (never reached in practice)


@dataclass
class AwqConfig:
    """AWQ's options; their defaults live in ``conf/method/awq.yaml`` only (``Method.default_config``)."""

    bits: int
    group_size: int
    sym: bool
    solver: str  # rtn (the reference) | gptq
    n_grid: int  # α grid: 0, 1/n_grid, ... (reference: 20)
    clip: bool  # the clipping search (reference: on)
    clip_grid: int  # shrink steps of 1/clip_grid (reference: 20)
    max_shrink: float  # the largest shrink tried (reference: 0.5)
    percdamp: float  # GPTQ solver options (solver=gptq)
    blocksize: int
    act_order: bool
    static_groups: bool
    true_sequential: bool
    min_tokens: int  # fewer calibration tokens: no search (s = 1, no clip) and H = I (methods.gptq)

    def __post_init__(self) -> None:
        check_solver(bits=self.bits, group_size=self.group_size, sym=self.sym, percdamp=self.percdamp,
                     blocksize=self.blocksize, min_tokens=self.min_tokens)
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver={self.solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
        for name in ("n_grid", "clip_grid"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} must be an integer ≥ 1")
        if not 0 <= self.max_shrink < 1:
            raise ConfigError(f"max_shrink={self.max_shrink} must be in [0, 1)")


def output_error(dW: torch.Tensor, H: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ)``: the summed squared output change over the calibration tokens (up to GPTQ's 2/n).
    ``dW`` (d_out, d_in), ``H`` (d_in, d_in)."""
    return float(((dW @ H) * dW).sum())


def scale_candidates(x_mean: torch.Tensor, n_grid: int) -> list[tuple[float, torch.Tensor]]:
    """``(α, s)`` for the reference's grid: ``s = x̄^α`` (clamped at 1e-4) / sqrt(max s · min s); s: (d_in,)."""
    out = []
    for k in range(n_grid):
        alpha = k / n_grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        out.append((alpha, s / (s.max() * s.min()).sqrt()))
    return out


def search_scale(Ws: list[torch.Tensor], Hs: list[torch.Tensor], x_mean: torch.Tensor, spec: QuantSpec,
                 n_grid: int) -> tuple[float, torch.Tensor, list[float]]:
    """The shared scale of the layers ``Ws`` (each (d_out_k, d_in), float32) that read one input.

    ``Hs``: their Hessians (d_in, d_in) (the same statistic when they share the input); ``x_mean`` (d_in,).
    Returns α, s (d_in,) and the error of every α (the first one, α = 0, is plain RTN).
    """
    best, history = (math.inf, 0.0, torch.ones_like(x_mean)), []
    for alpha, s in scale_candidates(x_mean, n_grid):
        err = 0.0
        for W, H in zip(Ws, Hs, strict=True):
            Q = rtn(W * s, spec).Q / s  # (d_out, d_in): quantized in the scaled domain, scaled back
            err += output_error(Q - W, H)
        history.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2], history


def search_clip(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, clip_grid: int, max_shrink: float
                ) -> torch.Tensor:
    """The reference's clipping search: ``max_val`` (d_out, G) per row and group minimising the group's
    output error ``Δw_g H_gg Δw_gᵀ`` of the clamped, RTN-quantized weights. ``W`` (d_out, d_in) float32,
    ``H`` (d_in, d_in) the Hessian of ``W``'s (scaled) inputs."""
    d_out, d_in = W.shape
    g = d_in if spec.group_size == -1 else spec.group_size
    G = d_in // g
    Wg = W.reshape(d_out, G, g)  # (d_out, G, g)
    Hgg = torch.stack([H[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(G)])  # (G, g, g)
    org_max = Wg.abs().amax(dim=-1)  # (d_out, G)
    best_max, best_err = org_max.clone(), torch.full_like(org_max, math.inf)
    for i in range(int(max_shrink * clip_grid)):
        max_val = org_max * (1 - i / clip_grid)  # (d_out, G)
        Wc = torch.maximum(torch.minimum(Wg, max_val[..., None]), -max_val[..., None])
        dW = rtn(Wc.reshape(d_out, d_in), spec).Q.reshape(d_out, G, g) - Wg  # (d_out, G, g)
        err = torch.einsum("rgi,gij,rgj->rg", dW, Hgg, dW)  # (d_out, G)
        better = err < best_err
        best_err[better], best_max[better] = err[better], max_val[better]
    return best_max


def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """``W`` (d_out, d_in) clamped to ``±max_val`` (d_out, G) group by group."""
    d_out, d_in = W.shape
    G = max_val.shape[1]
    Wg = W.reshape(d_out, G, d_in // G)
    return torch.maximum(torch.minimum(Wg, max_val[..., None]), -max_val[..., None]).reshape(d_out, d_in)


class Awq(Gptq):
    """GPTQ's Hessian statistics (``add_batch``) plus the input magnitudes; ``collect`` searches the scales
    of each group of layers that read one input, ``quantize_layer`` clips and quantizes."""

    name = "awq"
    Config = AwqConfig  # knobs and needs_calibration: GPTQ's

    def __init__(self, config: AwqConfig) -> None:
        super().__init__(config)
        self.abs_sum: dict[str, torch.Tensor] = {}  # per layer: Σ_t |x_t| (d_in,)
        # each layer's first input batch, kept alive so that its storage address identifies it: layers fed
        # the same tensor (q/k/v, gate/up) share one scale
        self.first_input: dict[str, torch.Tensor] = {}
        self.scales: dict[str, tuple[float, torch.Tensor]] = {}  # per layer: (α, s (d_in,)) from collect

    def label(self) -> str:
        solver = "+GPTQ" if self.config.solver == "gptq" else ""
        tags = self.solver_tags() if self.config.solver == "gptq" else [t for t in self.solver_tags()
                                                                        if t not in ("act", "ts")]
        return " ".join([f"AWQ{solver}", *tags, *([] if self.config.clip else ["noclip"])])

    def pack_refusal(self) -> str | None:
        """GPTQ's (act-order with dynamic groups) when GPTQ is the solver; the grid's own checks otherwise (RTN's
        grid has no column order, so act-order does not apply to it)."""
        return super().pack_refusal() if self.config.solver == "gptq" else Method.pack_refusal(self)

    def export_refusal(self) -> str | None:
        return NOT_EXPORTABLE

    def add_batch(self, name: str, X: torch.Tensor) -> None:
        super().add_batch(name, X)
        self.first_input.setdefault(name, X)
        x = X.reshape(-1, X.shape[-1]).abs().float().sum(0)  # (d_in,)
        self.abs_sum[name] = x if name not in self.abs_sum else self.abs_sum[name] + x

    @torch.no_grad()
    def collect(self, block: nn.Module, modules: dict[str, nn.Linear], inps: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor | None:
        """GPTQ's statistics pass, then the scale search per group of ``modules`` that read one input tensor."""
        out = super().collect(block, modules, inps, kwargs)
        groups: dict[int, list[str]] = {}
        for name in modules:
            if name in self.first_input:
                groups.setdefault(self.first_input.pop(name).data_ptr(), []).append(name)
        spec = self.spec(self.config.bits)
        for names in groups.values():
            tokens = self.tokens.get(names[0], 0)
            x_mean = self.abs_sum[names[0]] / max(tokens, 1)  # (d_in,)
            if tokens < self.config.min_tokens:  # too few tokens to measure anything: s = 1 (RTN)
                for n in names:
                    self.scales[n] = (0.0, torch.ones_like(x_mean))
                continue
            Ws = [modules[n].weight.data.float() for n in names]
            Hs = [self.H[n] for n in names]
            alpha, s, history = search_scale(Ws, Hs, x_mean, spec, self.config.n_grid)
            log.debug("AWQ %s: α=%.2f (error %.4g vs RTN %.4g)", names, alpha, min(history), history[0])
            for n in names:
                self.scales[n] = (alpha, s)
        for name in modules:
            self.abs_sum.pop(name, None)
        return out

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        W = layer.weight.data  # (d_out, d_in)
        Wf = W.float()
        H, cfg, info = self.take_hessian(name, layer)
        alpha, s = self.scales.pop(name, (0.0, torch.ones(W.shape[1], device=W.device)))
        s = s.to(W.device).clamp(*FP16_RANGE).half().float()  # (d_in,): the packed layer's fp16 s, exactly
        Ws = Wf * s  # (d_out, d_in): the scaled weights, inputs X / s
        Hs = H / s[:, None] / s[None, :]  # H of the scaled inputs
        err_rtn = output_error(rtn(Wf, spec).Q - Wf, H)
        clipped = self.config.clip and local_name(name) not in NO_CLIP and info.get("fallback") != "rtn"
        if clipped:
            Ws = apply_clip(Ws, search_clip(Ws, Hs, spec, self.config.clip_grid, self.config.max_shrink))
        stats: dict[str, Any] = {}
        if self.config.solver == "gptq":
            Qs, stats = gptq_quantize(Ws, Hs, spec, cfg)
            grid = stats.pop(GRID_KEY)
        else:
            qw = rtn(Ws, spec)
            Qs, grid = qw.Q, Grid(qw.scale, qw.zero)
        Q = Qs / s  # (d_out, d_in)
        err_awq, err = output_error(Q - Wf, H), relative_error(W, Q)  # err before W (a view) is overwritten
        layer.weight.data.copy_(Q.to(W.dtype))
        d_out, d_in = W.shape
        # the stored s: SCALE_BITS per input channel, i.e. per d_out weights
        bits = spec.bits + spec.overhead_bits(d_in) + SCALE_BITS / d_out
        return LayerResult({"err": err, "alpha": alpha, "clipped": clipped,
                            "output_err": err_awq, "output_err_rtn": err_rtn, **info, **stats,
                            "bits_per_weight_with_overhead": bits},
                           dataclasses.replace(grid, input_scale=s))


@hookimpl
def harness_register_methods(register):
    register(Awq)
