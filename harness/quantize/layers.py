"""Where the quantizable layers of a decoder-only model are, and how one decoder block is run.

The one home of every family-specific name. A generic rule finds the parts every family has:
the decoder layers are the ``nn.ModuleList`` with ``config.num_hidden_layers`` entries, and the
quantized layers are the ``nn.Linear`` modules inside them, except the routers of mixture-of-experts
blocks (``ROUTERS``: they stay in full precision). Embeddings, learned positions (OPT), the final
norm and ``lm_head`` are outside the decoder layers and stay in full precision, as in GPTQ and APTQ.
What differs between families is a small table, ``FAMILIES`` (keyed by ``config.model_type``), of
local module names (the last component of a module path):

- ``attention``: the separate q, k, v projections, or ``fused_qkv``: one projection whose output
  features are ``[q | k | v]`` (Phi-3 ``qkv_proj``; the slice widths come from the config, ``qkv_split``);
- ``o_proj``: the attention output projection (LLaMA ``o_proj``, OPT ``out_proj``, Phi-1/2 ``dense``);
- ``stages``: GPTQ's true-sequential order (q/k/v → o → MLP in → MLP out) under the family's names.

Mixture-of-experts blocks whose experts transformers stores as fused 3-D tensors
(``experts.gate_up_proj`` (E, 2I, d), ``experts.down_proj`` (E, d, I): Mixtral, Qwen-MoE) are
rewritten once at load time (``unfuse_experts``) into one ``ExpertMLP`` of ``nn.Linear`` layers per
expert (``experts.<e>.gate_proj`` ...), with the same routing. Then every expert is an ordinary
linear layer for discovery, calibration and packing, and a forward hook on it sees exactly the
tokens routed to it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class StopForward(Exception):
    """Raised by a forward hook to end a pass early, once it has what it needs (drivers catch it)."""


# ------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """Local module names of one decoder family (see the module docstring)."""

    attention: tuple[str, ...]  # separate q, k, v projections
    fused_qkv: str | None  # one projection with output features [q | k | v], or None
    o_proj: str  # attention output projection: its output is the attention output F
    stages: tuple[tuple[str, ...], ...]  # true-sequential order

    @property
    def attention_inputs(self) -> tuple[str, ...]:
        """Every projection that feeds the attention (separate or fused)."""
        return self.attention + ((self.fused_qkv,) if self.fused_qkv else ())


LLAMA = Family(attention=("q_proj", "k_proj", "v_proj"), fused_qkv=None, o_proj="o_proj",
               stages=(("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)))
PHI3 = Family(attention=(), fused_qkv="qkv_proj", o_proj="o_proj",
              stages=(("qkv_proj",), ("o_proj",), ("gate_up_proj",), ("down_proj",)))
OPT = Family(attention=("q_proj", "k_proj", "v_proj"), fused_qkv=None, o_proj="out_proj",
             stages=(("q_proj", "k_proj", "v_proj"), ("out_proj",), ("fc1",), ("fc2",)))
PHI = Family(attention=("q_proj", "k_proj", "v_proj"), fused_qkv=None, o_proj="dense",
             stages=(("q_proj", "k_proj", "v_proj"), ("dense",), ("fc1",), ("fc2",)))
#: config.model_type → family. MoE experts (after ``unfuse_experts``) and Qwen-MoE's shared expert use
#: LLaMA's MLP names, so the MoE families are LLaMA's too.
FAMILIES = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
                     "mixtral", "qwen2_moe", "qwen3_moe"), LLAMA),
    "phi3": PHI3,
    "opt": OPT,
    "phi": PHI,
}
#: linear layers inside the decoder that are never quantized: MoE routers (the expert choice is
#: discrete, a small error flips it) and Qwen-MoE's shared-expert gate.
ROUTERS = ("gate", "router", "shared_expert_gate")
#: config fields that give a decoder linear layer's input width (checked against ``group_size``)
WIDTH_FIELDS = ("intermediate_size", "ffn_dim", "moe_intermediate_size", "shared_expert_intermediate_size")
#: fused expert tensors as transformers stores them: (E, 2I, d) [gate; up] and (E, d, I)
FUSED_EXPERTS = ("gate_up_proj", "down_proj")

#: shards the serving engines (vLLM, SGLang) fuse into one linear layer, by local name → the fused name
#: (vLLM's ``packed_modules_mapping`` for LLaMA-style models; OPT and Phi-1/2 fuse q/k/v the same way). A
#: quantized checkpoint must give every shard of one fused layer the same grid, or those engines cannot load it.
FUSED_SHARDS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}

_warned: set[str] = set()


def model_config(obj: Any) -> Any:
    """The transformers config of a model or of a block (its first submodule that holds one), or ``obj``."""
    if isinstance(obj, nn.Module):
        return next((m.config for m in obj.modules() if hasattr(getattr(m, "config", None), "model_type")), None)
    return obj


def family(obj: Any) -> Family:
    """The family of a config, model or decoder block; an unknown ``model_type`` gets LLaMA's names (logged once)."""
    config = model_config(obj)
    model_type = getattr(getattr(config, "text_config", None) or config, "model_type", None)
    fam = FAMILIES.get(model_type)
    if fam is None:
        if model_type not in _warned:
            _warned.add(model_type)
            log.warning("model_type %r is not in the family table (harness/quantize/layers.py); assuming LLaMA's "
                        "module names", model_type)
        fam = LLAMA
    return fam


def local_name(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def qkv_split(config: Any) -> tuple[int, int, int]:
    """Output widths (d_q, d_k, d_v) of a fused q/k/v projection, from the model config."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return heads * head_dim, kv_heads * head_dim, kv_heads * head_dim


def linear_widths(config: Any) -> dict[str, int]:
    """The input widths of the decoder's linear layers, by the config field they come from
    (q/k/v and the MLP input read ``hidden_size``, o_proj the attention width, the MLP output its
    intermediate width under the family's field name)."""
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    heads = getattr(text, "num_attention_heads", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else None)
    widths = {"hidden_size": hidden}
    if heads and head_dim:
        widths["num_attention_heads × head_dim"] = heads * head_dim
    for name in WIDTH_FIELDS:
        if getattr(text, name, None):
            widths[name] = getattr(text, name)
    return widths


# ------------------------------------------------------------------------------------- discovery
def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (path, ModuleList) of the decoder layers of a causal LM."""
    config = model_config(model)
    text = getattr(config, "text_config", None) or config
    n = getattr(text, "num_hidden_layers", None)
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and len(mod) > 0:
            return path, mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {n} layers)")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The quantizable ``nn.Linear`` modules of one decoder block by local path, in model order (routers left out)."""
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear) and local_name(n) not in ROUTERS}


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """All quantizable ``nn.Linear`` modules inside the decoder layers, by full module path, in model order."""
    path, layers = decoder_layers(model)
    return {f"{path}.{i}.{sub}": mod for i, block in enumerate(layers) for sub, mod in block_linears(block).items()}


def fused_unit(name: str) -> str:
    """The serving engines' fused layer that the linear layer ``name`` is a shard of (``…self_attn.qkv_proj``
    for ``…self_attn.q_proj``), or ``name`` itself when it is not fused (``FUSED_SHARDS``)."""
    parent, _, local = name.rpartition(".")
    fused = FUSED_SHARDS.get(local)
    return f"{parent}.{fused}" if fused else name


def set_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Replace the submodule at dotted path ``name``; return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


# ------------------------------------------------------------------------------------- experts
class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate(x)) · up(x))`` with ``nn.Linear`` layers."""

    def __init__(self, d: int, inter: int, act_fn: Any, dtype: torch.dtype, device: Any) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False, dtype=dtype, device=device)
        self.up_proj = nn.Linear(d, inter, bias=False, dtype=dtype, device=device)
        self.down_proj = nn.Linear(inter, d, bias=False, dtype=dtype, device=device)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n_e, d) → (n_e, d)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class RoutedExperts(nn.ModuleList):
    """The experts of one MoE block as ``ExpertMLP`` modules, called as transformers calls its fused
    experts: ``(hidden (N, d), top_k_index (N, k), top_k_weights (N, k)) → (N, d)``. Each expert runs on
    the tokens routed to it only, weighted by its routing weight (transformers' eager loop)."""

    @classmethod
    def from_fused(cls, fused: nn.Module) -> RoutedExperts:
        gate_up, down = (getattr(fused, p).data for p in FUSED_EXPERTS)  # (E, 2I, d), (E, d, I)
        E, two_inter, d = gate_up.shape
        inter = two_inter // 2
        out = cls()
        for e in range(E):
            mlp = ExpertMLP(d, inter, fused.act_fn, gate_up.dtype, gate_up.device)
            mlp.gate_proj.weight.data.copy_(gate_up[e, :inter])  # (I, d)
            mlp.up_proj.weight.data.copy_(gate_up[e, inter:])  # (I, d)
            mlp.down_proj.weight.data.copy_(down[e])  # (d, I)
            out.append(mlp)
        return out

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)  # (N, d)
        for e, expert in enumerate(self):
            token_idx, slot = torch.where(top_k_index == e)  # tokens routed to e, and which of their k choices
            if token_idx.numel() == 0:
                continue
            y = expert(hidden_states[token_idx]) * top_k_weights[token_idx, slot, None]  # (n_e, d)
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out


def is_fused_experts(module: nn.Module) -> bool:
    params = [getattr(module, p, None) for p in FUSED_EXPERTS]
    return all(isinstance(p, nn.Parameter) and p.dim() == 3 for p in params) and hasattr(module, "act_fn")


def unfuse_experts(model: nn.Module) -> int:
    """Replace every fused experts module by ``RoutedExperts`` (in place); returns how many were replaced."""
    fused = [name for name, mod in model.named_modules() if is_fused_experts(mod)]
    for name in fused:
        set_module(model, name, RoutedExperts.from_fused(model.get_submodule(name)))
    if fused:
        log.info("unfused the experts of %d MoE blocks into per-expert linear layers", len(fused))
    return len(fused)


# ------------------------------------------------------------------------------------- running blocks
def run_block(block: nn.Module, inps: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run one decoder block over the calibration inputs ``inps`` (n, T, d), one window at a time."""
    outs = torch.empty_like(inps)
    for j in range(inps.shape[0]):
        out = block(inps[j : j + 1], **kwargs)
        outs[j] = out[0] if isinstance(out, tuple) else out
    return outs


@contextmanager
def on_device(block: nn.Module, device: str) -> Iterator[nn.Module]:
    """Run with ``block`` on ``device``, then put it back where it was (one layer at a time)."""
    home = next(block.parameters()).device
    block.to(device)
    try:
        yield block
    finally:
        block.to(home)
