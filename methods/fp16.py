"""Full-precision baseline: the model as loaded, no layer quantized.

The name follows the papers' tables ("FP16"); on a CPU the model runs in its load dtype
(fp32 by default, see ``model.dtype``), which the record states.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.plugins.hookspecs import hookimpl
from harness.plugins.method import Method
from harness.quantize.driver import BitPlan, LayerResult
from harness.quantize.primitives import QuantSpec


@dataclass
class Fp16Config:
    pass


class Fp16(Method):
    name = "fp16"
    Config = Fp16Config
    knobs = frozenset()

    @property
    def quantizes(self) -> bool:
        return False

    def label(self) -> str:
        return "FP16"

    def plan_bits(self, layers: dict[str, nn.Linear], scores: dict[str, float] | None = None) -> BitPlan:
        return BitPlan({})

    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        raise RuntimeError("fp16 quantizes nothing")


@hookimpl
def harness_register_methods(register):
    register(Fp16)
