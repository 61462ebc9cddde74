"""APTQ (Guan et al., DAC 2024): attention-aware Hessians and Hessian-trace 2/4-bit mixed precision.

**1. Attention-aware Hessian (q/k/v).** GPTQ minimises each layer's own output error
``‖W X − Ŵ X‖²``; APTQ minimises the error of the attention block's output
``E = ‖F(W) − F(Ŵ)‖²`` with ``F = MHA(X)`` = the output of ``o_proj`` (before the residual add).
For one projection ``y_t = W x_t`` (token t; ``W`` is (d_out, d_in)), ``∂F/∂W_ij = Σ_t J_t[:, i] x_tj``
with ``J_t = ∂F/∂y_t`` (all of F's entries × d_out). ``E`` has a zero gradient at ``Ŵ = W``, so to
second order ``E ≈ δwᵀ JᵀJ δw`` (Gauss–Newton / Levenberg–Marquardt: ``H = 2 JᵀJ``, damped as in
GPTQ), a (d_out·d_in)² matrix that couples rows and tokens. To run GPTQ's solver unchanged it is
reduced to its d_in × d_in form by keeping

- the token-diagonal terms (t = t'), and
- the output-side trace: the (i, i') block is replaced by ``δ_ii' · tr(J_tᵀJ_t) / d_out``,

which gives ``H = 2/n Σ_b Σ_t s_bt x_bt x_btᵀ`` with ``s_t = ‖J_t‖²_F / d_out`` (n = number of
calibration windows, as in GPTQ). ``‖J_t‖²_F`` is estimated with Rademacher probes ``v`` over F's
entries: ``E_v ‖∂(v·F)/∂y_t‖² = ‖J_t‖²_F`` (``probes`` backward passes per window, autograd through
RoPE, softmax and the value mixing). Checks: for ``o_proj`` (F = y) ``J_t = I`` so ``s_t = 1`` and
H is GPTQ's H exactly (that is why o_proj, like the MLP layers, uses GPTQ's H); with ``s_t = 1``
everywhere the method is GPTQ. ``tests/test_aptq.py`` checks on a tiny attention block that
``tr(δW H δWᵀ)`` tracks the true ``ΔE`` better than GPTQ's H does.

**2. Hessian-trace mixed precision.** Sensitivity of a layer = ``tr(H) / d_in`` (the paper's average
Hessian trace), from a first pass over the full-precision model (``harness.quantize.sensitivity``, cached).
Layers are ranked high → low and, in that order, get ``high_bits`` (4) while the 4-bit weights stay
within ``ratio`` of all quantized weights; a layer that would overshoot is skipped (gets 2 bits) and
the scan goes on, so the achieved fraction is the largest one ≤ ``ratio`` this greedy finds (recorded
in ``bits_fraction``). Average bits = 4·R + 2·(1−R). ``sensitivity=trace_x_err`` weighs the trace by
the 2-bit RTN error ``‖Q₂(W) − W‖²`` (HAWQ-v2); ``random`` is a seeded random ranking (control).
``hessian=layer`` uses GPTQ's H everywhere (ablation: "GPTQ + trace allocation").

**Alternatives to validate the paper's criterion against** (defaults stay the paper's: ``trace`` +
``greedy``). Loss-aware criteria (``harness.quantize.loss_sensitivity``, each layer's ``ΔW`` = its
actual ``low_bits`` quantization by GPTQ's solver with this config's grid options): ``fisher``
(``½ E (g_tᵀ ΔW x_t)²``, one backward pass per calibration window), ``kfac`` (``tr A/d_in · tr G/d_out``),
``measured`` (the ground truth: each layer quantized alone, the increase of the calibration NLL, on
the first ``truth_windows`` windows; an oracle). Controls: ``trace_inv`` (``1/trace``, the opposite
ranking, from the same cached traces) and ``random``. ``allocator=knapsack`` minimises the summed
per-layer cost under the same average-bit budget exactly (``harness.quantize.allocation``), with
``choices`` = {low_bits, high_bits} or e.g. [2, 3, 4]; the record keeps its ``allocation`` (budget,
achieved bits, plan). The ground truth and the rank correlations of all criteria with it:
``benchmarks/sensitivity_truth.py``.

**Families.** The projections and ``o_proj`` are found under each family's names
(``harness.quantize.layers.FAMILIES``: OPT's ``out_proj``, Phi's ``dense``, ...). A fused projection
whose output features are ``[q | k | v]`` (Phi-3 ``qkv_proj``) gets one reduced Hessian per output
slice, ``H_q``, ``H_k``, ``H_v``, each with its own token weights ``s_t = ‖J_t[:, slice]‖²_F / d_slice``:
GPTQ's solver treats the rows of ``W`` independently (one ``Hinv`` shared by the rows is the only
coupling), so the slices are quantized as three row blocks of the same layer, each against its own H,
and their grids are stacked back (exact, not an approximation of the separate-projection case).
Its sensitivity is ``Σ_k d_k tr(H_k) / (d_out · d_in)``, the same normalisation as ``tr(H)/d_in``.
MoE experts are MLP layers: GPTQ's H from the tokens routed to each (``methods.gptq``).

Deviations from the slides, which leave them open: which reduction of JᵀJ (above); greedy
skip-fill to meet ``ratio`` with whole layers; the quantization pass recomputes H on the
quantized model's propagated inputs (GPTQ's sequential procedure) while the sensitivities come from
the full-precision model (so they can be cached and shared across ratios).
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.quantize.allocation import ALLOCATORS, allocate
from harness.quantize.driver import BitPlan, LayerResult
from harness.quantize.layers import StopForward, family, fused_unit, local_name, model_config, qkv_split
from harness.quantize.primitives import GRID_KEY, Grid, QuantSpec, check_bits, relative_error, rtn
from harness.util import unknown
from methods.gptq import Gptq, check_solver, gptq_quantize

QKV_PARTS = ("q", "k", "v")
HESSIANS = ("attention", "layer")
UNITS = ("layers", "fused")  # allocation units: every linear layer, or the serving engines' fused layers
SENSITIVITIES = ("trace", "trace_x_err", "fisher", "kfac", "measured", "trace_inv", "random")
#: criterion → (the first pass that gives it, the table of that pass holding its scores)
LOSS_CRITERIA = {"fisher": ("gradient", "fisher"), "kfac": ("gradient", "kfac"), "measured": ("truth", "dnll")}


@dataclass
class AptqConfig:
    """APTQ's options; their defaults live in ``conf/method/aptq.yaml`` only (``Method.default_config``)."""

    ratio: float  # fraction of quantized weights at high_bits; the rest at low_bits
    high_bits: int
    low_bits: int
    group_size: int
    sym: bool
    hessian: str  # attention (APTQ) | layer (GPTQ's H everywhere: ablation)
    sensitivity: str  # trace | trace_x_err | fisher | kfac | measured | trace_inv | random
    allocator: str  # greedy (the paper's rank cut) | knapsack (exact, harness.quantize.allocation)
    choices: list[int] | None  # knapsack's bit widths; None: {low_bits, high_bits}
    units: str  # layers (each linear its own width) | fused (q/k/v and gate/up share one: servable in vLLM/SGLang)
    truth_windows: int  # calibration windows of the measured criterion (the first ones)
    probes: int  # Rademacher probes per calibration window for s_t
    seed: int  # probes and the random allocation
    # GPTQ solver options (methods.gptq)
    percdamp: float
    blocksize: int
    act_order: bool
    static_groups: bool
    true_sequential: bool
    min_tokens: int  # fewer calibration tokens: RTN (methods.gptq, take_hessian)

    def __post_init__(self) -> None:
        for bits in (self.high_bits, self.low_bits):
            check_solver(bits=bits, group_size=self.group_size, sym=self.sym, percdamp=self.percdamp,
                         blocksize=self.blocksize, min_tokens=self.min_tokens)
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio <= 1:
            raise ConfigError(f"ratio={self.ratio} is outside [0, 1]; it is the fraction of weights at "
                              f"{self.high_bits} bits")
        if self.low_bits >= self.high_bits:
            raise ConfigError(f"low_bits={self.low_bits} must be below high_bits={self.high_bits}")
        if self.hessian not in HESSIANS:
            raise ConfigError(f"hessian={self.hessian!r} is unknown; choose one of {', '.join(HESSIANS)}")
        if self.sensitivity not in SENSITIVITIES:
            raise unknown("method.sensitivity", self.sensitivity, SENSITIVITIES)
        if self.allocator not in ALLOCATORS:
            raise unknown("method.allocator", self.allocator, ALLOCATORS)
        if self.units not in UNITS:
            raise unknown("method.units", self.units, UNITS)
        if self.choices is not None:
            self.choices = sorted({int(b) for b in self.choices})
            for b in self.choices:
                check_bits(b)
            if self.allocator != "knapsack":
                raise ConfigError(f"choices={self.choices} needs method.allocator=knapsack (greedy mixes low_bits "
                                  f"and high_bits only)")
            if self.choices[0] != self.low_bits or self.choices[-1] != self.high_bits:
                raise ConfigError(f"choices={self.choices} must run from low_bits={self.low_bits} to "
                                  f"high_bits={self.high_bits} (the budget is high·ratio + low·(1−ratio))")
        if isinstance(self.truth_windows, bool) or not isinstance(self.truth_windows, int) or self.truth_windows < 1:
            raise ConfigError(f"truth_windows={self.truth_windows!r} must be an integer ≥ 1")
        if self.probes < 1:
            raise ConfigError(f"probes={self.probes} must be ≥ 1")


def find_o_proj(block: nn.Module) -> nn.Linear:
    """The attention output projection of a decoder block under its family's name (its output is F)."""
    name = family(block).o_proj
    o_proj = next((m for n, m in block.named_modules() if local_name(n) == name), None)
    if o_proj is None:
        raise ConfigError(f"APTQ's attention Hessian needs the attention output projection {name!r} in "
                          f"{type(block).__name__}; use method.hessian=layer for this model")
    return o_proj


def random_scores(names: list[str], seed: int) -> dict[str, float]:
    """A seeded random ranking, independent of the model (the control allocation)."""
    g = torch.Generator().manual_seed(seed)
    return dict(zip(names, torch.rand(len(names), generator=g).tolist(), strict=True))


def attention_graph(block: nn.Module, attn: dict[str, nn.Linear], o_proj: nn.Linear, x: torch.Tensor,
                    kwargs: dict[str, Any], full: bool = False
                    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
    """Run ``block`` on one window ``x`` (1, T, d) up to ``o_proj``'s output F, differentiably.

    Each projection's output ``y = W x`` is replaced by a detached leaf that requires grad, so
    ``autograd.grad(F, y)`` gives ∂F/∂y through RoPE, softmax and the value mixing. Returns F
    (1, T, d_model), per projection (its input x (1, T, d_in), the leaf y (1, T, d_out)), and with
    ``full`` the block's output (1, T, d) (the forward then runs to the end instead of stopping).
    """
    cap: dict[str, Any] = {}

    def leaf(_m, inp, out, name):
        y = out.detach().requires_grad_(True)
        cap[name] = (inp[0].detach(), y)
        return y

    def at_o_proj(_m, _inp, out):
        cap["F"] = out
        if not full:
            raise StopForward

    handles = [m.register_forward_hook(lambda mo, i, o, name=n: leaf(mo, i, o, name)) for n, m in attn.items()]
    handles.append(o_proj.register_forward_hook(at_o_proj))
    out = None
    try:
        with torch.enable_grad():
            out = block(x, **kwargs)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    if "F" not in cap:
        raise RuntimeError(f"{type(block).__name__} did not reach o_proj; cannot form the attention Hessian")
    if out is not None:
        out = (out[0] if isinstance(out, tuple) else out).detach()
    return cap.pop("F"), cap, out


@functools.cache
def yaml_defaults() -> AptqConfig:
    """APTQ's defaults (``conf/method/aptq.yaml``, their one home): a label names the options that differ."""
    return Aptq.default_config()


class Aptq(Gptq):
    name = "aptq"
    Config = AptqConfig
    knobs = Gptq.knobs - {"bits"} | {"ratio"}  # high_bits/low_bits and ratio instead of one bits
    mixed_precision = True

    def bit_widths(self) -> tuple[int, ...]:
        c = self.config
        if c.choices and 0 < c.ratio < 1:
            return tuple(sorted(c.choices, reverse=True))
        return tuple(sorted({c.high_bits if c.ratio > 0 else c.low_bits, c.low_bits if c.ratio < 1 else c.high_bits},
                            reverse=True))

    def label(self) -> str:
        """``APTQ``, ``APTQ-50%`` ..., tagged with each option that differs from ``conf/method/aptq.yaml``."""
        c, d = self.config, yaml_defaults()
        mixed = 0 < c.ratio < 1
        widths = (c.low_bits, c.high_bits) != (d.low_bits, d.high_bits)  # named: APTQ-3, APTQ-50% w3/4
        if c.ratio == 1:
            base = f"APTQ-{c.high_bits}" if widths else "APTQ"
        elif c.ratio == 0:
            base = f"APTQ-{c.low_bits}" if widths else "APTQ-0%"
        else:
            base = f"APTQ-{round(100 * c.ratio)}%" + (f" w{c.low_bits}/{c.high_bits}" if widths else "")
        tags = [*self.solver_tags(), "H-layer" if c.hessian == "layer" else "",
                c.sensitivity if c.sensitivity != d.sensitivity and mixed else "",
                c.allocator if c.allocator != d.allocator and mixed else "",
                "fused-units" if c.units != d.units and mixed else "",
                "b" + "".join(map(str, c.choices)) if c.choices and mixed else "",
                f"tw{c.truth_windows}" if c.sensitivity == "measured" and c.truth_windows != d.truth_windows and mixed
                else "",
                f"seed{c.seed}" if c.sensitivity == "random" and 0 < c.ratio < 1 else ""]  # one draw per seed
        return " ".join([base, *[t for t in tags if t]])

    @property
    def needs_sensitivity(self) -> bool:
        return 0 < self.config.ratio < 1 and self.config.sensitivity != "random"

    @property
    def sensitivity_pass(self) -> str:
        return LOSS_CRITERIA.get(self.config.sensitivity, ("blocks",))[0]

    @property
    def sensitivity_table(self) -> str | None:  # type: ignore[override]
        return LOSS_CRITERIA[self.config.sensitivity][1] if self.config.sensitivity in LOSS_CRITERIA else None

    @property
    def sensitivity_windows(self) -> int | None:  # type: ignore[override]
        return self.config.truth_windows if self.config.sensitivity == "measured" else None

    def sensitivity_key(self) -> dict[str, Any]:
        c = self.config
        if c.sensitivity in LOSS_CRITERIA:  # ΔW = the low-bit quantization by GPTQ's solver with these options
            return {"pass": self.sensitivity_pass, "low_bits": c.low_bits, "group_size": c.group_size, "sym": c.sym,
                    "act_order": c.act_order, "static_groups": c.static_groups, "percdamp": c.percdamp,
                    "blocksize": c.blocksize, "windows": self.sensitivity_windows}
        # trace_inv reads the cached traces (the same pass and key as trace)
        key = {"hessian": c.hessian, "sensitivity": "trace" if c.sensitivity == "trace_inv" else c.sensitivity,
               "probes": c.probes, "seed": c.seed}
        if c.sensitivity == "trace_x_err":
            key.update(low_bits=c.low_bits, group_size=c.group_size, sym=c.sym)
        return key

    def plan_scores(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None) -> dict[str, float]:
        """Per-layer ranking scores (higher = more sensitive: a score is the layer's cost at ``low_bits``) from
        the first pass's ``scores``."""
        c = self.config
        if c.sensitivity == "random":
            return random_scores(list(layers), c.seed)
        if scores is None:
            raise RuntimeError("APTQ needs the sensitivity pass's scores for plan_bits (harness.quantize.sensitivity)")
        if c.sensitivity == "trace_inv":  # the control that inverts the paper's ranking
            return {n: 1.0 / max(scores[n], 1e-30) for n in layers}
        return {n: scores[n] for n in layers}

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        """Uniform at ratio 0 or 1; else the allocator's plan within the budget, with its info for the record."""
        c = self.config
        if c.ratio in (0, 1):
            return BitPlan({n: c.high_bits if c.ratio == 1 else c.low_bits for n in layers})
        numel = {n: m.weight.numel() for n, m in layers.items()}
        layer_scores = self.plan_scores(layers, scores)
        unit = {n: fused_unit(n) if c.units == "fused" else n for n in layers}
        # units=fused: the shards of a fused layer are one allocation unit of their summed size and summed score
        # (a score is a layer's cost at low_bits, so a unit's cost is its shards' sum), hence one width
        unit_numel: dict[str, int] = {}
        unit_scores: dict[str, float] = {}
        for n in layers:
            unit_numel[unit[n]] = unit_numel.get(unit[n], 0) + numel[n]
            unit_scores[unit[n]] = unit_scores.get(unit[n], 0.0) + layer_scores[n]
        plan, allocation = allocate(c.allocator, unit_scores, unit_numel, c.ratio, c.high_bits,
                                    c.low_bits, tuple(c.choices) if c.choices else None)
        return BitPlan({n: plan[unit[n]] for n in layers}, {**allocation, "criterion": c.sensitivity,
                                                            "units": c.units})

    def add_batch(self, name: str, X: torch.Tensor, s: torch.Tensor | None = None) -> None:
        """``H = 2/n Σ_b Σ_t s_bt x_bt x_btᵀ``; ``s`` (B, T) token weights, GPTQ's H when None."""
        if s is not None:
            X = X * s.to(X.dtype).clamp_min(0).sqrt().unsqueeze(-1)  # (B, T, d_in)
        super().add_batch(name, X)

    def __init__(self, config: AptqConfig) -> None:
        super().__init__(config)
        #: fused q/k/v projections: name → [(statistics key, first row, end row)] of its output slices
        self.row_parts: dict[str, list[tuple[str, int, int]]] = {}

    def _output_slices(self, block: nn.Module, name: str, mod: nn.Linear) -> list[tuple[str, int, int]]:
        """[(statistics key, lo, hi)]: the whole output for a separate projection; for a fused q/k/v
        projection its q, k and v row slices (remembered in ``row_parts`` for ``quantize_layer``)."""
        if local_name(name) != family(block).fused_qkv:
            return [(name, 0, mod.out_features)]
        widths = qkv_split(model_config(block))
        if sum(widths) != mod.out_features:
            raise ValueError(f"{name}: out_features={mod.out_features} is not q+k+v={widths} from the model config")
        bounds = torch.tensor((0, *widths)).cumsum(0).tolist()
        self.row_parts[name] = [(f"{name}:{p}", lo, hi) for p, lo, hi in zip(QKV_PARTS, bounds[:-1], bounds[1:],
                                                                              strict=True)]
        return self.row_parts[name]

    def layer_sensitivity(self, name: str, layer: nn.Linear) -> float:
        """``tr(H)/d_in`` (a fused q/k/v layer: ``Σ_k d_k tr(H_k) / (d_out d_in)``); 0 for a layer that saw no
        calibration token (an MoE expert nothing was routed to)."""
        parts = self.row_parts.pop(name, None) or [(name, 0, layer.out_features)]
        trace = 0.0
        for key, lo, hi in parts:
            H = self.H.pop(key, None)  # (d_in, d_in)
            self.nsamples.pop(key, None)
            self.tokens.pop(key, None)
            if H is not None:
                trace += (hi - lo) / layer.out_features * float(torch.diag(H).sum()) / H.shape[0]
        if self.config.sensitivity == "trace_x_err":
            W = layer.weight.data.float()  # (d_out, d_in)
            Q2 = rtn(W, self.spec(self.config.low_bits), layer=name).Q
            return trace * float(((Q2 - W) ** 2).sum())
        return trace

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        parts = self.row_parts.pop(name, None)
        if parts is None:
            return super().quantize_layer(name, layer, spec)
        W = layer.weight.data  # (d_out, d_in)
        Q = torch.empty_like(W, dtype=torch.float32)
        grids, info = [], {"loss": 0.0, "damp_retries": 0, "slices": {}}
        for key, lo, hi in parts:  # rows lo:hi against the slice's own H (the rows are independent in GPTQ)
            H, cfg, part_info = self.take_hessian(key, layer)
            Q[lo:hi], stats = gptq_quantize(W[lo:hi], H, spec, cfg)
            grids.append(stats.pop(GRID_KEY))
            info["loss"] += stats["loss"]
            info["damp_retries"] = max(info["damp_retries"], stats["damp_retries"])
            info["slices"][key.rsplit(":", 1)[-1]] = {"rows": [lo, hi], **part_info}
        info["tokens"] = info["slices"][QKV_PARTS[0]]["tokens"]
        fallbacks = sorted({p["fallback"] for p in info["slices"].values() if "fallback" in p})
        if fallbacks:
            info["fallback"] = "+".join(fallbacks)
        err = relative_error(W, Q)
        layer.weight.data.copy_(Q.to(W.dtype))
        grid = None
        if all(g.g_idx is None for g in grids):  # act-order with dynamic groups: no common g_idx, no grid to pack
            grid = Grid(torch.cat([g.scale for g in grids]), torch.cat([g.zero for g in grids]))
        return LayerResult({"err": err, **info}, grid)

    @torch.no_grad()
    def collect(self, block: nn.Module, modules: dict[str, nn.Linear], inps: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor | None:
        """q/k/v: attention-aware H; o_proj and MLP: GPTQ's H, collected in the same forward pass."""
        attn = {}
        if self.config.hessian == "attention":
            attn = {n: m for n, m in modules.items() if local_name(n) in family(block).attention_inputs}
        if not attn:
            return super().collect(block, modules, inps, kwargs)
        rest = {n: m for n, m in modules.items() if n not in attn}
        return self._collect_attention(block, attn, inps, kwargs, rest)

    def _collect_attention(self, block: nn.Module, attn: dict[str, nn.Linear], inps: torch.Tensor,
                           kwargs: dict[str, Any], rest: dict[str, nn.Linear] | None = None) -> torch.Tensor | None:
        """Accumulate the attention-aware H of the q/k/v projections ``attn`` over the windows.

        The other modules ``rest`` get GPTQ's H from the same forward pass; then the whole block
        runs and its outputs (n, T, d) are returned (else the pass stops at o_proj: None).
        """
        o_proj = find_o_proj(block)
        names, rest = list(attn), rest or {}
        slices = {n: self._output_slices(block, n, m) for n, m in attn.items()}  # [(key, lo, hi)] per projection
        handles = [m.register_forward_hook(lambda _m, inp, _o, name=n: self.add_batch(name, inp[0].detach()))
                   for n, m in rest.items()]
        outs = torch.empty_like(inps) if rest else None
        # one generator per block, seeded by (seed, first layer name): deterministic, order-independent
        g = torch.Generator(device=inps.device).manual_seed(self.config.seed * 7919 + zlib.crc32(names[0].encode()))
        try:
            for j in range(inps.shape[0]):
                F, cap, out = attention_graph(block, attn, o_proj, inps[j : j + 1], kwargs, full=bool(rest))
                if outs is not None:
                    outs[j] = out[0]
                ys = [cap[n][1] for n in names]  # each (1, T, d_out)
                T = ys[0].shape[1]
                S = {key: torch.zeros(T, dtype=torch.float32, device=F.device) for n in names for key, *_ in slices[n]}
                for p in range(self.config.probes):
                    v = torch.randint(0, 2, F.shape, generator=g, device=F.device).to(F.dtype) * 2 - 1
                    with torch.enable_grad():
                        grads = torch.autograd.grad(F, ys, grad_outputs=v, retain_graph=p < self.config.probes - 1)
                    for n, gr in zip(names, grads, strict=True):
                        for key, lo, hi in slices[n]:
                            S[key] += gr[0, :, lo:hi].float().pow(2).sum(-1)  # ‖∂(v·F)/∂y_t[slice]‖², (T,)
                for n in names:
                    for key, lo, hi in slices[n]:
                        s = S[key] / (self.config.probes * (hi - lo))  # s_t = ‖J_t‖²_F / d_out of the slice, (T,)
                        self.add_batch(key, cap[n][0], s.unsqueeze(0))
        finally:
            for h in handles:
                h.remove()
        return outs


@hookimpl
def harness_register_methods(register):
    register(Aptq)
