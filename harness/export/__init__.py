"""Export a quantized model as a checkpoint the serving ecosystem loads (``save=true save_format=<format>``).

One module per format: ``gptq`` (vLLM, SGLang, transformers through GPTQModel) and ``compressed_tensors``
(llm-compressor's ``pack-quantized``; vLLM, transformers through ``compressed-tensors``). The harness's own
packed layout (``harness.packed.checkpoint``, ``save_format=packed``) stays the default.

``check_export`` refuses before the model is loaded what a format cannot hold (widths, bit widths, a method
whose layers are not one uniform grid or keep a per-input-channel activation scale, MoE experts); ``plan_check``
refuses, once the bit plan is known and before any layer is quantized, a plan that gives the shards of one fused
layer (q/k/v, gate/up) different grids, which vLLM and SGLang cannot load. ``export`` writes the folder from the
fake-quant model and the methods' grids (before packing replaces the layers).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from harness.errors import ConfigError
from harness.export import compressed_tensors, gptq
from harness.export.common import collect_codes, fused_mismatch, is_moe, layer_widths
from harness.quantize.primitives import QuantSpec

log = logging.getLogger(__name__)

PACKED = "packed"
FORMATS = {gptq.NAME: gptq, compressed_tensors.NAME: compressed_tensors}
SAVE_FORMATS = (PACKED, *FORMATS)


def check_format(fmt: Any) -> str:
    if fmt not in SAVE_FORMATS:
        raise ConfigError(f"save_format={fmt!r} is unknown; use one of {', '.join(SAVE_FORMATS)}")
    return fmt


def check_export(fmt: str, refusal: str | None, bit_widths: tuple[int, ...], arch: Any,
                 dynamic_groups: bool = False) -> None:
    """One line, before any model is loaded, for an export this run cannot write. ``refusal``: the method's
    ``export_refusal()``; ``arch``: the model's transformers config; ``dynamic_groups``: act-order with
    dynamic groups (a permuted ``g_idx``)."""
    if refusal:
        raise ConfigError(f"save_format={fmt}: {refusal}")
    if dynamic_groups and not FORMATS[fmt].DYNAMIC_GROUPS:
        raise ConfigError(f"save_format={fmt} cannot hold act-order with dynamic groups (a permuted g_idx; "
                          f"compressed-tensors 0.20 removed actorder='group'); set method.static_groups=true "
                          f"or use save_format=gptq")
    if is_moe(arch):
        raise ConfigError(f"save_format={fmt}: exporting mixture-of-experts models is not supported (the harness "
                          f"quantizes unfused per-expert layers, the formats name transformers' fused experts); "
                          f"use save_format=packed")
    FORMATS[fmt].check_widths(layer_widths(arch), tuple(bit_widths))


def plan_check(fmt: str):
    """The check of the bit plan the quantizing driver runs before quantizing (``plan_specs``)."""

    def check(specs: dict[str, QuantSpec]) -> None:
        why = fused_mismatch(specs)
        if why:
            raise ConfigError(f"save_format={fmt}: {why}; tie them with method.units=fused, or use "
                              f"save_format=packed")
    return check


def export(fmt: str, model: nn.Module, tokenizer: Any, grids: dict[str, Any], layers_info: dict[str, dict[str, Any]],
           sym: bool, folder: Path) -> dict[str, Any]:
    """Write ``folder`` in format ``fmt`` from the fake-quant ``model`` and the methods' ``grids``; returns the
    record's ``export`` entry (format, path, bytes, quantization config, seconds)."""
    t0 = time.perf_counter()
    codes = collect_codes(model, grids, layers_info, sym)
    out = FORMATS[fmt].export(model, tokenizer, codes, Path(folder))
    out.update(path=str(folder), seconds=time.perf_counter() - t0)
    log.info("exported %s checkpoint to %s (%.1f MB)", fmt, folder, out["bytes"] / 2**20)
    return out
