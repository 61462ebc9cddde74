"""Round-to-nearest (RTN): min-max uniform quantization of each weight, no calibration.

Identical to GPTQ's RTN baseline (``--nearest``): per-channel or grouped min-max grid that
includes 0, symmetric or asymmetric (see ``harness.quantize.primitives``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.plugins.method import Method
from harness.quantize.driver import LayerResult
from harness.quantize.primitives import Grid, QuantSpec, check_bits, relative_error, rtn


@dataclass
class RtnConfig:
    """RTN's options; their defaults live in ``conf/method/rtn.yaml`` only (``Method.default_config``)."""

    bits: int
    group_size: int  # -1: per output channel
    sym: bool

    def __post_init__(self) -> None:
        check_bits(self.bits)
        QuantSpec(self.bits, self.group_size, self.sym)  # validates group_size
        if not isinstance(self.sym, bool):
            raise ConfigError(f"sym={self.sym!r} must be true or false")


class Rtn(Method):
    name = "rtn"
    Config = RtnConfig
    knobs = frozenset({"bits", "group_size", "sym"})

    def label(self) -> str:
        g = "" if self.config.group_size == -1 else f" g{self.config.group_size}"
        return f"RTN{g}{' sym' if self.config.sym else ''}"

    @torch.no_grad()
    def quantize_layer(self, name: str, layer: nn.Linear, spec: QuantSpec) -> LayerResult:
        W = layer.weight.data  # (d_out, d_in)
        qw = rtn(W, spec, layer=name)
        err = relative_error(W, qw.Q)
        layer.weight.data.copy_(qw.Q)
        return LayerResult({"err": err}, Grid(qw.scale, qw.zero))


@hookimpl
def harness_register_methods(register):
    register(Rtn)
