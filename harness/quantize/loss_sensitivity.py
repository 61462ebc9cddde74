"""Loss-aware per-layer sensitivities of the full-precision model, and their ground truth.

Every layer ``l`` is judged by what quantizing it *alone* to the low bit width does to the model's
next-token loss on the calibration windows (never evaluation text). ``ΔW_l = Q(W_l) − W_l`` is the
actual low-bit quantization by the method's own solver (``method.solve``: GPTQ's, with the layer's
GPTQ Hessian ``H = 2/n Σ X Xᵀ`` from the full-precision inputs and the run's grid / act-order options).
The loss of window ``w`` is its mean next-token NLL ``L_w = 1/(T−1) Σ_t nll_t``.

- ``truth_pass`` (criterion ``measured``, the ground truth): for each layer, swap in its quantized
  weight ``W + ΔW`` (ΔW from all calibration windows, as the run quantizes), run its block and every
  later block from the captured full-precision block inputs of the first ``truth_windows`` windows
  (the blocks before it are unchanged, so their outputs are reused), apply the head, and record
  ``dnll = mean_w (L_w(Ŵ) − L_w(W))`` and ``kl = mean over predicted tokens of KL(p_fp ‖ p_q)``.
  Cost: Σ_l (blocks after l) block passes, ≈ 15 model passes per layer-type row on a 30-block model.
- ``gradient_pass`` (criteria ``fisher`` and ``kfac``): one forward + backward pass per window through
  the blocks and the head, with ``g_t = ∂L_w/∂y_t`` at each layer's output ``y_t = W x_t``:
    ``fisher = ½ · mean_w Σ_t (g_tᵀ ΔW x_t)²`` — the token-diagonal Fisher (Gauss–Newton) estimate
    of the loss increase caused by ``ΔW`` (cross-token terms dropped);
    ``kfac = (tr A / d_in) · (tr G / d_out)`` with ``A = E_t[x_t x_tᵀ]``, ``G = E_t[g_t g_tᵀ]``
    (means over all tokens): K-FAC's factors, reduced to their average diagonals.

Both passes work from the block inputs ``inps`` (n, T, d) and per-block kwargs that the sequential
driver captured, so the embedding never runs again. The head is the decoder's final norm and the
output embedding (``final_head``; LLaMA-like families, Phi, OPT without ``project_out``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError
from harness.quantize.hessian import layer_hessians
from harness.quantize.layers import block_linears, decoder_layers, on_device, run_block

log = logging.getLogger(__name__)

FINAL_NORMS = ("norm", "final_layer_norm", "ln_f", "final_layernorm")


def final_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hidden (B, T, d) → logits (B, T, V)``: the final norm and the output embedding after the decoder."""
    path, _ = decoder_layers(model)
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    norm = next((getattr(parent, n) for n in FINAL_NORMS if isinstance(getattr(parent, n, None), nn.Module)), None)
    lm_head = model.get_output_embeddings()
    if norm is None or lm_head is None or getattr(parent, "project_out", None) is not None:
        raise ConfigError(f"{type(model).__name__}: no final norm ({'/'.join(FINAL_NORMS)}) and output embedding "
                          f"found after the decoder layers; loss-based sensitivities need them")
    return lambda h: lm_head(norm(h))


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or wider if it already is (float64 in the tests)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each window: logits (B, T, V), ids (B, T) → (B,)."""
    logp = F.log_softmax(wide(logits[:, :-1]), dim=-1)  # (B, T−1, V)
    return -logp.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1).mean(-1)


@torch.no_grad()
def low_bit_deltas(method: Any, model: nn.Module, inps: torch.Tensor, kwargs: list[dict[str, Any]],
                   bits: int) -> dict[str, torch.Tensor]:
    """``ΔW_l = method.solve(W_l, H_l, bits) − W_l`` (d_out, d_in) for every decoder linear layer, each
    quantized alone against the H of its full-precision inputs (float32 or wider, on ``inps.device``)."""
    path, layers = decoder_layers(model)
    deltas: dict[str, torch.Tensor] = {}
    for i, block in enumerate(layers):
        with on_device(block, inps.device):
            modules = {f"{path}.{i}.{n}": m for n, m in block_linears(block).items()}
            H = layer_hessians(block, modules, inps, kwargs[i])
            for name, mod in modules.items():
                W = wide(mod.weight.data)  # (d_out, d_in)
                Hl = H.pop(name, None)  # None: an MoE expert no calibration token was routed to
                Hl = torch.eye(W.shape[1], device=W.device) if Hl is None else Hl  # then RTN (methods.gptq)
                deltas[name] = method.solve(W, Hl.to(W.dtype), bits) - W
            inps = run_block(block, inps, kwargs[i])
    return deltas


def forward_blocks(layers: nn.ModuleList, start: int, x: torch.Tensor, kwargs: list[dict[str, Any]]) -> torch.Tensor:
    """Run blocks ``start..`` on ``x`` (B, T, d); returns the last hidden states (B, T, d)."""
    for i in range(start, len(layers)):
        out = layers[i](x, **kwargs[i])
        x = out[0] if isinstance(out, tuple) else out
    return x


def gradient_pass(model: nn.Module, inps: torch.Tensor, kwargs: list[dict[str, Any]], windows: torch.Tensor,
                  deltas: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{"fisher": {layer: score}, "kfac": {layer: score}}`` (module docstring); one backward per window."""
    path, layers = decoder_layers(model)
    head = final_head(model)
    mods = {f"{path}.{i}.{n}": m for i, b in enumerate(layers) for n, m in block_linears(b).items()}
    fisher = dict.fromkeys(mods, 0.0)
    trA, trG = dict.fromkeys(mods, 0.0), dict.fromkeys(mods, 0.0)
    n, T = windows.shape
    ys: dict[str, torch.Tensor] = {}  # this window's layer outputs y (1, T, d_out), in the graph
    us: dict[str, torch.Tensor] = {}  # and ΔW x_t (T, d_out)
    for j in range(n):
        ys.clear()
        us.clear()

        def hook(mod, inp, out, name):
            x = inp[0].detach()  # (1, T, d_in)
            with torch.no_grad():
                us[name] = (wide(x) @ deltas[name].t().to(wide(x).dtype)).squeeze(0)  # ΔW x_t, (T, d_out)
                trA[name] += float(wide(x).pow(2).sum())
            if not out.requires_grad:  # the first layer's output: make it a leaf of the graph
                out = out.detach().requires_grad_(True)
            ys[name] = out
            return out

        handles = [m.register_forward_hook(lambda mo, i, o, name=nm: hook(mo, i, o, name)) for nm, m in mods.items()]
        try:
            with torch.enable_grad():
                logits = head(forward_blocks(layers, 0, inps[j : j + 1], kwargs))  # (1, T, V)
                loss = window_nll(logits, windows[j : j + 1]).sum()
                names = list(ys)
                grads = torch.autograd.grad(loss, [ys[nm] for nm in names])
        finally:
            for h in handles:
                h.remove()
        for nm, g in zip(names, grads, strict=True):
            g = wide(g.squeeze(0))  # ∂L_w/∂y_t, (T, d_out)
            fisher[nm] += 0.5 * float(((g * us[nm]).sum(-1) ** 2).sum()) / n
            trG[nm] += float(g.pow(2).sum())
    tokens = n * T
    kfac = {nm: (trA[nm] / tokens / m.in_features) * (trG[nm] / tokens / m.out_features) for nm, m in mods.items()}
    return {"fisher": fisher, "kfac": kfac}


@torch.no_grad()
def truth_pass(model: nn.Module, inps: torch.Tensor, kwargs: list[dict[str, Any]], windows: torch.Tensor,
               deltas: dict[str, torch.Tensor], progress: Callable[[], None] | None = None
               ) -> dict[str, dict[str, float]]:
    """``{"dnll": {layer: ΔL}, "kl": {layer: KL}}``: each layer alone set to ``W + ΔW`` (its quantization), the
    loss increase measured on ``windows`` (n, T) from the block inputs ``inps`` (n, T, d)."""
    path, layers = decoder_layers(model)
    head = final_head(model)
    n = windows.shape[0]

    def outcome(i: int, x: torch.Tensor, logp_ref: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Per-window mean NLL (n,) after blocks ``i..`` from their inputs x (n, T, d); with ``logp_ref``
        (n, T−1, V) the mean KL(p_ref ‖ p) per predicted token, else the log-probs themselves."""
        nll, logps, kl_sum = torch.empty(n, dtype=torch.float64), [], 0.0
        for j in range(n):
            logits = head(forward_blocks(layers, i, x[j : j + 1], kwargs))  # (1, T, V)
            nll[j] = window_nll(logits, windows[j : j + 1])[0]
            logp = F.log_softmax(wide(logits[0, :-1]), dim=-1)  # (T−1, V)
            if logp_ref is None:
                logps.append(logp)
            else:
                kl_sum += float((logp_ref[j].exp() * (logp_ref[j] - logp)).sum(-1).mean())
        return nll, (torch.stack(logps) if logp_ref is None else None), kl_sum / n

    nll_fp, logp_fp, _ = outcome(0, inps, None)
    dnll: dict[str, float] = {}
    kl: dict[str, float] = {}
    x = inps  # full-precision inputs of block i
    for i, block in enumerate(layers):
        modules = {f"{path}.{i}.{nm}": m for nm, m in block_linears(block).items()}
        for name, mod in modules.items():
            W = mod.weight.data.clone()  # (d_out, d_in)
            mod.weight.data.copy_((wide(W) + deltas[name].to(wide(W).dtype)).to(W.dtype))
            try:
                nll_q, _, kl[name] = outcome(i, x, logp_fp)
            finally:
                mod.weight.data.copy_(W)
            dnll[name] = float((nll_q - nll_fp).mean())
            if progress is not None:
                progress()
        log.info("ground truth: block %d/%d done", i + 1, len(layers))
        x = run_block(block, x, kwargs[i])
    return {"dnll": dnll, "kl": kl}

