"""The method interface every quantization plugin implements, and the helpers around it.

A method is a class with
- ``name``: the key in ``conf/method/<name>.yaml`` and in ``method=<name>``;
- ``Config``: a dataclass of its options, validated in ``__post_init__``. Its fields have no defaults:
  every default lives in ``conf/method/<name>.yaml``, the one file a user reads and overrides, which
  Hydra composes, the record keeps in its resolved config, and which interpolates the cross-method
  knobs (``${bits}``). Defaults in both places drifted apart; code outside a Hydra run (tests,
  benchmarks) takes them from the YAML with ``default_config(**overrides)``;
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
  first pass over the full-precision model (``harness.quantize.sensitivity``) whose per-layer scores the
  driver passes to ``plan_bits`` as an argument (no state is left on the method between the passes);
- ``plan_bits(layers, scores)``: the per-layer bit plan as a ``BitPlan`` (mixed precision methods
  override it and return their allocation info with it);
- ``quantize_layer(name, layer, spec)``: replace ``layer.weight`` by its quantized version and
  return a ``LayerResult``: per-layer info for the record and, when it can be packed, the grid.

What a configured method can do is declared, so the harness refuses an impossible run before it
loads anything (``capabilities()``): whether it quantizes at all, needs calibration data, mixes bit
widths, which bit widths and knobs it uses, and whether (or why not) the packed 2/4-bit format can
hold its result (``pack_refusal``). ``run_tag()`` is the readable part of its run id.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from harness.errors import ConfigError
from harness.packed.packing import PACK_BITS, check_group_size
from harness.quantize.driver import BitPlan, LayerResult
from harness.quantize.layers import run_block
from harness.quantize.primitives import QuantSpec
from harness.util import build_config, composed_options


@dataclass(frozen=True)
class Capabilities:
    """What one configured method does, known before any model is loaded (kept in the record)."""

    quantizes: bool
    needs_calibration: bool
    mixed_precision: bool
    bit_widths: tuple[int, ...]  # the grids its layers may use (PB-LLM: the salient grid)
    knobs: tuple[str, ...]
    packable: bool
    not_packable_because: str | None = None


class Method(ABC):
    """Base class of quantization methods (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    knobs: ClassVar[frozenset[str]] = frozenset()
    #: True when ``add_batch`` must see calibration activations before ``quantize_layer``.
    needs_calibration: ClassVar[bool] = False
    #: True when ``plan_bits`` may give layers different bit widths.
    mixed_precision: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def needs_sensitivity(self) -> bool:
        """True when ``plan_bits`` needs ``scores`` (a first full-precision pass)."""
        return False

    def sensitivity_key(self) -> dict[str, Any]:
        """The options the sensitivities depend on (with the model and calibration: the cache key)."""
        return {}

    @property
    def sensitivity_pass(self) -> str:
        """Which first pass gives the scores (``harness.quantize.sensitivity``): ``blocks`` (``collect`` +
        ``layer_sensitivity``), ``gradient`` or ``truth`` (``harness.quantize.loss_sensitivity``)."""
        return "blocks"

    #: the table of a loss-based pass that holds this method's scores (``fisher``, ``kfac``, ``dnll`` ...)
    sensitivity_table: str | None = None
    #: calibration windows a loss-based pass uses (the first ones; None: all)
    sensitivity_windows: int | None = None

    def solve(self, W: torch.Tensor, H: torch.Tensor, bits: int) -> torch.Tensor:
        """The method's quantization of ``W`` (d_out, d_in) float32 against the Hessian ``H`` (d_in, d_in) at
        ``bits``, returned (not written to any layer): what the loss-based sensitivities quantize with."""
        raise NotImplementedError(f"method {self.name} has no solver for the loss-based sensitivities")

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

    @classmethod
    def default_config(cls, **overrides: Any) -> Any:
        """``Config`` with the defaults of ``conf/method/<name>.yaml`` (as a run composes them) and ``overrides``."""
        return build_config(cls.Config, composed_options("method", cls.name, overrides), f"method {cls.name!r}")

    @property
    def quantizes(self) -> bool:
        """False for the full-precision baseline: no layer is touched."""
        return True

    def label(self) -> str:
        """Short human label for tables, e.g. ``RTN g64``."""
        return self.name

    def run_tag(self) -> str:
        """The readable part of the run id: the label, and ``w<bits>`` for a method with one ``bits`` knob
        (mixed precision carries its budget in the label; fp16 and PB-LLM have none)."""
        return f"{self.label()} w{self.config.bits}" if "bits" in self.knobs else self.label()

    def bit_widths(self) -> tuple[int, ...]:
        """The bit widths ``plan_bits`` may choose (default: the one ``config.bits``)."""
        return (self.config.bits,) if self.quantizes else ()

    def pack_refusal(self) -> str | None:
        """Why this configuration's result cannot be stored in the packed format; None when it can."""
        if not self.quantizes:
            return f"method={self.name} leaves the model as is (nothing to pack)"
        wrong = [b for b in self.bit_widths() if b not in PACK_BITS]
        if wrong:
            return f"the packed format stores 2- and 4-bit weights; bits={wrong[0]} cannot be packed (use bits=2 or 4)"
        try:
            check_group_size(getattr(self.config, "group_size", -1))
        except ConfigError as err:
            return str(err)
        return None

    def export_refusal(self) -> str | None:
        """Why the export formats (GPTQ, compressed-tensors: ``harness.export``) cannot hold this configuration's
        result, which they store as one uniform integer grid per layer and nothing else (not, e.g., AWQ's
        per-input-channel activation scales); None when they can (any of 2/3/4/8 bits)."""
        if not self.quantizes:
            return f"method={self.name} leaves the model as is (nothing to export)"
        return None

    def capabilities(self) -> Capabilities:
        refusal = self.pack_refusal()
        return Capabilities(quantizes=self.quantizes, needs_calibration=bool(self.needs_calibration),
                            mixed_precision=self.mixed_precision, bit_widths=tuple(self.bit_widths()),
                            knobs=tuple(sorted(self.knobs)), packable=refusal is None, not_packable_because=refusal)

    def spec(self, bits: int) -> QuantSpec:
        cfg = self.config
        return QuantSpec(bits=bits, group_size=getattr(cfg, "group_size", -1), sym=getattr(cfg, "sym", False))

    def add_batch(self, name: str, X: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """Accumulate statistics from the inputs ``X`` (B, T, d_in) of layer ``name``."""

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        """Bits for every quantized layer; the default is uniform ``config.bits``. ``scores``: the per-layer
        sensitivities of the first pass when ``needs_sensitivity``, else None."""
        return BitPlan({name: self.config.bits for name in layers})

    @abstractmethod
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        """Quantize ``layer.weight`` (d_out, d_in) in place; return its info (at least ``err``) and grid."""
