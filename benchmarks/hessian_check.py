"""How well does a quadratic form ``δwᵀHδw`` predict the true change of the attention output?

APTQ's core claim, tested directly: for random small perturbations ``δW`` of q_proj / k_proj /
v_proj, compare the actual ``ΔE = ‖F(W + δW) − F(W)‖²`` (F = the attention block's output, mean
over calibration windows) with ``½ tr(δW H δWᵀ)`` for APTQ's attention-aware H and for GPTQ's
layer-local H. Two families of perturbations, half each, so both input directions and token
structure vary: sparse Gaussian (random subsets of rows and columns) and rank-one
``u xᵀ`` aligned with the input ``x`` of a random calibration token. Their size is ``rel_eps`` of
the weight's RMS, small enough for the second-order regime. Used by ``tests/test_aptq.py`` and
``benchmarks/hessian_correlation.py``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.quantize.layers import StopForward, family
from methods.aptq import Aptq, find_o_proj
from methods.gptq import Gptq


@torch.no_grad()
def attention_outputs(block: nn.Module, inps: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The block's attention output F (n, T, d_model) = o_proj's output, window by window."""
    o_proj = find_o_proj(block)
    outs = []

    def stop(_m, _i, out):
        outs.append(out.detach().clone())
        raise StopForward

    h = o_proj.register_forward_hook(stop)
    try:
        for j in range(inps.shape[0]):
            try:
                block(inps[j : j + 1], **kwargs)
            except StopForward:
                pass
    finally:
        h.remove()
    return torch.cat(outs)


@torch.no_grad()
def outputs_and_layer_inputs(block: nn.Module, mods: dict[str, nn.Linear], inps: torch.Tensor,
                             kwargs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One pass: the attention outputs (n, T, d_model) and the inputs of each module in ``mods``
    over the windows, flattened to (n·T, d_in)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in mods}
    hs = [m.register_forward_hook(lambda _m, i, _o, n=n: seen[n].append(i[0].reshape(-1, i[0].shape[-1])))
          for n, m in mods.items()]
    try:
        F = attention_outputs(block, inps, kwargs)
    finally:
        for h in hs:
            h.remove()
    return F, {n: torch.cat(v) for n, v in seen.items()}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(a.argsort().argsort().double(), b.argsort().argsort().double())


@torch.no_grad()
def perturbation_study(block: nn.Module, inps: torch.Tensor, kwargs: dict[str, Any],
                       targets: tuple[str, ...] = ("q_proj", "k_proj"), n_perturb: int = 64,
                       rel_eps: float = 1e-2, probes: int = 16, seed: int = 0) -> dict[str, Any]:
    """Correlations (Pearson, Spearman) of predicted vs actual ΔE, per target layer and pooled."""
    mods = {n: m for n, m in block.named_modules() if n.rsplit(".", 1)[-1] in targets}
    attention = family(block).attention
    assert all(t in attention for t in targets), f"targets must be among {attention}"
    aptq, gptq = Aptq(Aptq.default_config(probes=probes, seed=seed)), Gptq(Gptq.default_config())
    aptq.collect(block, mods, inps, kwargs)
    gptq.collect(block, mods, inps, kwargs)
    H = {"aptq": aptq.H, "gptq": gptq.H}  # name → (d_in, d_in)
    # F0: (n, T, d_model); X: name → (n·T, d_in), the inputs each layer sees
    F0, X = outputs_and_layer_inputs(block, mods, inps, kwargs)
    g = torch.Generator().manual_seed(seed)
    rows: list[tuple[str, float, float, float]] = []
    names = list(mods)
    for k in range(n_perturb):
        name = names[k % len(names)]
        W = mods[name].weight  # (d_out, d_in)
        d_out, d_in = W.shape
        keep_r = torch.rand(d_out, generator=g) < float(torch.empty(1).uniform_(0.05, 1, generator=g))
        if k % 2 == 0:  # sparse Gaussian
            keep_c = torch.rand(d_in, generator=g) < float(torch.empty(1).uniform_(0.05, 1, generator=g))
            dW = torch.randn(d_out, d_in, generator=g) * keep_r[:, None] * keep_c[None, :]
        else:  # rank one along a calibration token's input direction (after the layer's input norm)
            t = int(torch.randint(X[name].shape[0], (1,), generator=g))
            dW = torch.outer(torch.randn(d_out, generator=g) * keep_r, X[name][t])
        dW = dW.to(W.dtype) * (rel_eps * W.pow(2).mean().sqrt() / dW.pow(2).mean().sqrt().clamp_min(1e-30))
        W0 = W.data.clone()
        W.data += dW
        actual = float((attention_outputs(block, inps, kwargs) - F0).pow(2).sum() / inps.shape[0])
        W.data.copy_(W0)
        pa, pg = (0.5 * float((dW.float() @ H[m][name] * dW.float()).sum()) for m in ("aptq", "gptq"))
        rows.append((name.rsplit(".", 1)[-1], actual, pa, pg))
    out: dict[str, Any] = {"n_perturb": n_perturb, "rel_eps": rel_eps, "probes": probes}
    for label, sel in [("pooled", targets), *[(t, (t,)) for t in targets]]:
        r = [row for row in rows if row[0] in sel]
        a, pa, pg = (torch.tensor([row[i] for row in r]) for i in (1, 2, 3))
        out[label] = {"pearson_aptq": pearson(a, pa), "pearson_gptq": pearson(a, pg),
                      "spearman_aptq": spearman(a, pa), "spearman_gptq": spearman(a, pg),
                      "ratio_aptq": float((pa / a).median()), "n": len(r)}
    return out

