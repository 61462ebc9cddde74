"""GPTQ (Frantar et al., 2023): second-order, column-by-column quantization with the inverse Hessian.

Follows the reference ``gptq.py`` of IST-DASLab/gptq:
- ``add_batch``: ``H = 2/n Σ_b X_b X_bᵀ`` over calibration sequences b (n counts sequences);
- dead inputs (``H_jj = 0``) get ``H_jj = 1`` and a zero weight column;
- optional ``act_order``: columns in order of decreasing ``diag(H)``;
- dampening ``percdamp · mean(diag H)``; ``Hinv`` = upper Cholesky factor of ``H⁻¹``;
- blocks of ``blocksize`` columns, each column quantized, its error ``Err = (w − q) / Hinv_jj``
  spread over the block's remaining columns, then a lazy batch update of the columns after it
  (the loop is ``harness.quantize.compensate.compensated_quantize``, shared with OWQ and GPTQ-PB);
- ``group_size``: grid parameters found on the (partly updated) weights when a group starts, or,
  with ``static_groups``, on the original weights before any update.
The integer grid actually used (per-group scale/zero, and ``g_idx`` when act-order permutes the
dynamic groups) is returned under ``stats["grid"]``; ``quantize_layer`` hands it on for packing as the
``LayerResult``'s grid, apart from the record info.
Deviation: if the Cholesky factorization fails, damping is raised ×10 (up to 6 times) and the
number of retries is recorded, instead of crashing.

Layers that see few calibration tokens (MoE experts: each sees only the tokens routed to it) are
handled by ``Gptq.take_hessian``, shared by every Hessian method (GPTQ, APTQ, OWQ, PB-LLM); each
layer's record carries its token count ``tokens`` and, when one was taken, its ``fallback``:
- fewer than ``min_tokens`` tokens (none at all included): ``fallback: rtn``: ``H = I``, i.e. no
  calibration information and no error compensation (``Hinv`` is diagonal, so GPTQ's update of the
  later columns is zero and every column is rounded to nearest on GPTQ's grid: RTN exactly);
- fewer tokens than inputs (``H`` has rank < d_in): ``fallback: damped``: the damping grows to
  ``percdamp · d_in / tokens`` (at most ``MAX_PERCDAMP``), recorded as ``percdamp``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.plugins.method import Method
from harness.quantize.compensate import compensated_quantize, drop_dead_inputs
from harness.quantize.driver import LayerResult
from harness.quantize.hessian import hessian_update
from harness.quantize.primitives import GRID_KEY, Grid, QuantSpec, check_bits, find_params, quantize, relative_error

log = logging.getLogger(__name__)

MAX_PERCDAMP = 0.5  # damping cap of the low-token fallback (percdamp must stay < 1)


@dataclass
class GptqConfig:
    """GPTQ's options; their defaults live in ``conf/method/gptq.yaml`` only (``Method.default_config``)."""

    bits: int
    group_size: int
    sym: bool
    percdamp: float
    blocksize: int
    act_order: bool
    static_groups: bool
    true_sequential: bool
    min_tokens: int  # fewer calibration tokens (a rarely routed MoE expert): RTN (H = I)

    def __post_init__(self) -> None:
        check_solver(bits=self.bits, group_size=self.group_size, sym=self.sym, percdamp=self.percdamp,
                     blocksize=self.blocksize, min_tokens=self.min_tokens)


def check_solver(*, bits: int, group_size: int, sym: bool, percdamp: float, blocksize: int, min_tokens: int) -> None:
    """The checks every GPTQ-family config shares (GPTQ, APTQ at each bit width, OWQ, PB-LLM's grid)."""
    check_bits(bits)
    QuantSpec(bits, group_size, sym)
    if not isinstance(sym, bool):
        raise ConfigError(f"sym={sym!r} must be true or false")
    if not 0 < percdamp < 1:
        raise ConfigError(f"percdamp={percdamp} must be in (0, 1)")
    if blocksize < 1:
        raise ConfigError(f"blocksize={blocksize} must be ≥ 1")
    check_min_tokens(min_tokens)


def check_min_tokens(min_tokens: Any) -> None:
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 0:
        raise ConfigError(f"min_tokens={min_tokens!r} must be an integer ≥ 0 (calibration tokens a layer needs "
                          f"before its Hessian is used)")


def inverse_hessian_factor(H: torch.Tensor, percdamp: float, retries: int = 6) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = percdamp · mean(diag H); raises λ on failure."""
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    for attempt in range(retries + 1):
        Hd = H.clone()
        Hd[idx, idx] += damp * (10**attempt)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U, attempt
    raise RuntimeError(f"Cholesky failed even with damping ×1e{retries}")


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, cfg: GptqConfig) -> tuple[torch.Tensor, dict]:
    """Quantize ``W`` (d_out, d_in) against Hessian ``H`` (d_in, d_in); return ``Q`` and stats.

    ``stats["grid"]`` is the ``Grid`` used: scale, zero (d_out, G) in group order; with act-order and
    dynamic groups, group ``j`` is the j-th block of g columns *in the permuted order* and ``g_idx``
    (d_in,) maps each original column to its group.
    """
    W = W.clone().float()
    H = H.clone()
    d_out, d_in = W.shape
    g = spec.group_size
    scale, zero = find_params(W, spec.bits, spec.sym)  # per-channel grid (d_out, 1), before dead columns
    drop_dead_inputs(W, H)
    groups = []
    if g != -1 and cfg.static_groups:
        groups = [find_params(W[:, c : c + g], spec.bits, spec.sym) for c in range(0, d_in, g)]
    G = spec.groups(d_in)
    scales, zeros = torch.zeros(d_out, G, device=W.device), torch.zeros(d_out, G, device=W.device)
    if g == -1:
        scales[:], zeros[:] = scale, zero
    elif cfg.static_groups:
        scales[:], zeros[:] = torch.cat([s for s, _ in groups], 1), torch.cat([z for _, z in groups], 1)
    perm = None
    if cfg.act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv, retries = inverse_hessian_factor(H, cfg.percdamp)

    def quantize_column(col: int, w: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """GPTQ's uniform grid for column ``col``; a group's grid is found when the group starts."""
        nonlocal scale, zero
        if g != -1:
            if cfg.static_groups:
                scale, zero = groups[(int(perm[col]) if perm is not None else col) // g]
            elif col % g == 0:
                scale, zero = find_params(W[:, col : col + g], spec.bits, spec.sym)
                scales[:, col // g : col // g + 1], zeros[:, col // g : col // g + 1] = scale, zero
        return quantize(w.unsqueeze(1), scale, zero, spec.maxq).flatten()  # (d_out,)

    Q, loss = compensated_quantize(W, Hinv, quantize_column, blocksize=cfg.blocksize)
    g_idx = None
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
        if g != -1 and not cfg.static_groups:  # group of original column perm[j] is j // g
            g_idx = torch.empty(d_in, dtype=torch.long, device=W.device)
            g_idx[perm] = torch.arange(d_in, device=W.device) // g
    grid = Grid(scales, zeros, g_idx)
    return Q, {"loss": loss, "damp_retries": retries, GRID_KEY: grid}


class Gptq(Method):
    name = "gptq"
    Config = GptqConfig
    knobs = frozenset({"bits", "group_size", "sym", "act_order", "true_sequential"})
    needs_calibration = True

    def __init__(self, config: GptqConfig) -> None:
        super().__init__(config)
        self.H: dict[str, torch.Tensor] = {}  # per layer: (d_in, d_in) float32
        self.nsamples: dict[str, int] = {}  # calibration sequences (GPTQ's n)
        self.tokens: dict[str, int] = {}  # calibration tokens the layer saw (an MoE expert: those routed to it)

    def solver_tags(self) -> list[str]:
        """Label tags of the grid and solver options that differ from the reference defaults."""
        c = self.config
        static = c.act_order and c.group_size != -1 and getattr(c, "static_groups", False)  # else it changes nothing
        tags = [f"g{c.group_size}" if c.group_size != -1 else "", "act" if c.act_order else "",
                "static" if static else "", "ts" if c.true_sequential else "", "sym" if c.sym else ""]
        return [t for t in tags if t]

    def label(self) -> str:
        return " ".join(["GPTQ", *self.solver_tags()])

    def pack_refusal(self) -> str | None:
        c = self.config
        if getattr(c, "act_order", False) and c.group_size != -1 and not getattr(c, "static_groups", False):
            return ("the packed format cannot store act_order with dynamic groups (permuted g_idx); "
                    "set method.static_groups=true or group_size=-1")
        return super().pack_refusal()

    def add_batch(self, name: str, X: torch.Tensor) -> None:
        X = X.unsqueeze(0) if X.dim() == 2 else X  # (B, T, d_in)
        self.H[name], self.nsamples[name] = hessian_update(self.H.get(name), self.nsamples.get(name, 0), X)
        self.tokens[name] = self.tokens.get(name, 0) + X.shape[0] * X.shape[1]

    def take_hessian(self, name: str, layer: nn.Linear) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        """``(H, config, info)`` for quantizing ``layer``, freeing its statistics (module docstring):
        H (d_in, d_in), the solver config (its ``percdamp`` raised when damped) and the record's
        ``tokens`` / ``fallback`` / ``percdamp``."""
        H = self.H.pop(name, None)
        self.nsamples.pop(name, None)
        n = self.tokens.pop(name, 0)
        cfg, d_in = self.config, layer.in_features
        info: dict[str, Any] = {"tokens": n}
        if H is None or n < cfg.min_tokens:
            log.info("%s saw %d calibration tokens (< min_tokens=%d): RTN (identity Hessian)", name, n, cfg.min_tokens)
            info["fallback"] = "rtn"
            return torch.eye(d_in, device=layer.weight.device), cfg, info
        if n < d_in:
            damp = min(MAX_PERCDAMP, cfg.percdamp * d_in / n)
            info.update(fallback="damped", percdamp=damp)
            return H, dataclasses.replace(cfg, percdamp=damp), info
        return H, cfg, info

    @torch.no_grad()
    def solve(self, W: torch.Tensor, H: torch.Tensor, bits: int) -> torch.Tensor:
        """GPTQ's solver with this config's grid and solver options at ``bits``: Q (d_out, d_in), W's dtype
        (the solver itself runs in float32)."""
        return gptq_quantize(W.float(), H.float(), self.spec(bits), self.config)[0].to(W.dtype)

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        W = layer.weight.data  # (d_out, d_in)
        H, cfg, info = self.take_hessian(name, layer)
        Q, stats = gptq_quantize(W, H, spec, cfg)
        grid = stats.pop(GRID_KEY)
        err = relative_error(W, Q)
        layer.weight.data.copy_(Q.to(W.dtype))
        return LayerResult({"err": err, **info, **stats}, grid)


@hookimpl
def harness_register_methods(register):
    register(Gptq)
