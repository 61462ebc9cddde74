"""Where the quantizable layers of a decoder-only model are, and how one decoder block is run.

Generic over transformers' LLaMA-like decoders (LLaMA, Mistral, Qwen2, ...): the decoder layers
are the ``nn.ModuleList`` with ``config.num_hidden_layers`` entries, and the quantized layers are
the ``nn.Linear`` modules inside them. Embeddings and ``lm_head`` stay in full precision, as in
GPTQ and APTQ.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a forward hook to end a pass early, once it has what it needs (drivers catch it)."""


def run_block(block: nn.Module, inps: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """Run one decoder block over the calibration inputs ``inps`` (n, T, d), one window at a time."""
    outs = torch.empty_like(inps)
    for j in range(inps.shape[0]):
        out = block(inps[j : j + 1], **kwargs)
        outs[j] = out[0] if isinstance(out, tuple) else out
    return outs


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (path, ModuleList) of the decoder layers of a causal LM."""
    n = getattr(model.config, "num_hidden_layers", None)
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and len(mod) > 0:
            return path, mod
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no ModuleList of {n} layers)")


@contextmanager
def on_device(block: nn.Module, device: str) -> Iterator[nn.Module]:
    """Run with ``block`` on ``device``, then put it back where it was (one layer at a time)."""
    home = next(block.parameters()).device
    block.to(device)
    try:
        yield block
    finally:
        block.to(home)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """All ``nn.Linear`` modules inside the decoder layers, by full module path, in model order."""
    path, layers = decoder_layers(model)
    out: dict[str, nn.Linear] = {}
    for i, block in enumerate(layers):
        for sub, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                out[f"{path}.{i}.{sub}"] = mod
    return out
