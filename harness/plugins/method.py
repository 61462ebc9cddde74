"""The method interface every quantization plugin implements, and the helpers around it.

A method is a class with
- ``name``: the key in ``conf/method/<name>.yaml`` and in ``method=<name>``;
- ``Config``: a dataclass of its options, validated in ``__post_init__``;
- ``knobs``: which top-level knobs (``bits``, ``group_size``, ``sym``, ``ratio``, ``act_order``,
  ``true_sequential``) its config
  interpolates, so an override of a knob it does not use is reported instead of silently ignored;
- ``add_batch(name, X)``: statistics hook (calibrated methods accumulate e.g. a Hessian from the
  layer inputs ``X``); RTN needs none;
- ``collect(block, modules, inps, kwargs)``: how the layer-by-layer driver feeds ``add_batch`` for
  some linear ``modules`` of one decoder ``block``; the default runs the block over the calibration
  inputs with forward hooks (GPTQ). A method whose statistics need more than a layer's inputs
  (APTQ: gradients of the attention output) overrides it;
- ``needs_sensitivity`` / ``layer_sensitivity`` / ``sensitivity_key``: mixed-precision methods get a
  first pass over the full-precision model (``harness.quantize.sensitivity``) whose per-layer scores reach
  ``plan_bits`` through ``self.sensitivities``;
- ``plan_bits(layers)``: the per-layer bit plan (mixed precision methods override it);
- ``quantize_layer(name, layer, spec)``: replace ``layer.weight`` by its quantized version and
  return per-layer info for the record.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from harness.quantize.layers import run_block
from harness.quantize.primitives import QuantSpec
from harness.util import build_config


class Method(ABC):
    """Base class of quantization methods (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    knobs: ClassVar[frozenset[str]] = frozenset()
    #: True when ``add_batch`` must see calibration activations before ``quantize_layer``.
    needs_calibration: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config
        #: per-layer sensitivity scores from the first pass (mixed-precision methods only)
        self.sensitivities: dict[str, float] | None = None

    @property
    def needs_sensitivity(self) -> bool:
        """True when ``plan_bits`` needs ``self.sensitivities`` (a first full-precision pass)."""
        return False

    def sensitivity_key(self) -> dict[str, Any]:
        """The options the sensitivities depend on (with the model and calibration: the cache key)."""
        return {}

    def layer_sensitivity(self, name: str, layer: nn.Linear) -> float:
        """Sensitivity of ``layer`` from the statistics ``add_batch`` collected; frees them."""
        raise NotImplementedError(f"method {self.name} has no sensitivity")

    @torch.no_grad()
    def collect(self, block: nn.Module, modules: dict[str, nn.Linear], inps: torch.Tensor,
                kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Feed ``add_batch`` with the inputs of ``modules`` (full name → module) of ``block``.

        ``inps`` (n, T, d) are the block's calibration inputs, ``kwargs`` its captured keyword
        arguments. Default: one pass of the block with forward hooks on the modules. Returns the
        block's outputs (n, T, d) if the pass computed them (the sensitivity pass reuses them), or None.
        """
        handles = [mod.register_forward_hook(lambda _m, inp, _out, name=name: self.add_batch(name, inp[0].data))
                   for name, mod in modules.items()]
        try:
            return run_block(block, inps, kwargs)
        finally:
            for h in handles:
                h.remove()

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Method:
        return cls(build_config(cls.Config, options, f"method {cls.name!r}"))

    @property
    def quantizes(self) -> bool:
        """False for the full-precision baseline: no layer is touched."""
        return True

    def label(self) -> str:
        """Short human label for tables, e.g. ``RTN w4 g-1``."""
        return self.name

    def spec(self, bits: int) -> QuantSpec:
        cfg = self.config
        return QuantSpec(bits=bits, group_size=getattr(cfg, "group_size", -1), sym=getattr(cfg, "sym", False))

    def add_batch(self, name: str, X: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Accumulate statistics from the inputs ``X`` (B, T, d_in) of layer ``name``."""

    def plan_bits(self, layers: dict[str, nn.Linear]) -> dict[str, int]:
        """Bits for every quantized layer; the default is uniform ``config.bits``."""
        return {name: self.config.bits for name in layers}

    @abstractmethod
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> dict[str, Any]:
        """Quantize ``layer.weight`` (d_out, d_in) in place; return info (at least ``err``)."""
