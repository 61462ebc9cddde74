"""Packed checkpoints: a quantized model saved as safetensors plus its quantization config and bit map.

A checkpoint folder holds
- ``config.json`` and ``model.safetensors``: the model config and the packed model's state dict
  under its module paths (the ``QuantLinear`` buffers ``qweight`` / ``scales`` / ``zeros`` in place of
  the linear weights; embeddings, norms and ``lm_head`` in the model's dtype; a tied ``lm_head`` not
  stored twice), and the tokenizer files. The tensors are written directly, not with
  ``save_pretrained``: transformers renames some families' keys on save (Mixtral: ``.mlp.`` →
  ``.block_sparse_moe.``), and the bit map names the module paths the harness quantized;
- ``quantization.json``: format name and version, the packing layout, the per-layer bit map
  (bits, group size, and ``input_scale: true`` for a layer that keeps a per-input-channel activation scale,
  AWQ's: its ``input_scale`` fp16 (K,) tensor is then in ``model.safetensors``) for every packed layer, the
  method and the run that made it, and the SHA-256 of ``model.safetensors``.

``load_packed`` rebuilds the architecture from ``config.json``, puts a ``QuantLinear`` of the
recorded bits at every layer of the bit map and loads the tensors strictly: a missing or extra
tensor, a shape that does not fit the bit map, a changed file (hash) or an unreadable file is one
clear ``ConfigError``. Nothing is re-quantized, so the logits are those of the saved model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import ConfigError
from harness.packed.qlinear import QuantLinear, to_quant_linear
from harness.quantize.layers import unfuse_experts
from harness.util import atomic_output, file_sha256

log = logging.getLogger(__name__)

FORMAT = "quant-harness-packed"
FORMAT_VERSION = 2  # 2: the bit map's optional ``input_scale``
READ_VERSIONS = (1, 2)  # a version-1 checkpoint is a version-2 one without input scales
QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
LAYOUT = ("qweight int32 (K/P, N), P=32/bits, code k at bits (k%P)*bits of word k//P; scales, zeros fp16 (G, N); "
          "input_scale fp16 (K,) where the bit map says so: y = (x / input_scale) W^T")


def is_packed_checkpoint(folder: str | os.PathLike | None) -> bool:
    return folder is not None and (Path(folder).expanduser() / QUANT_FILE).is_file()


def save_packed(model: nn.Module, tokenizer: Any, folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the packed ``model`` to ``folder`` (atomically: a temporary folder renamed at the end).

    ``meta`` (method, run id, ...) is stored in ``quantization.json``. Returns sizes for the record.
    """
    bit_map = {name: {"bits": m.bits, "group_size": m.group_size, **({"input_scale": True} if m.input_scale is not None
                                                                      else {})}
               for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not bit_map:
        raise ConfigError("save=true needs a packed model (no QuantLinear layers found)")
    from safetensors.torch import save_file

    folder = Path(folder)
    state, seen = {}, set()
    for k, v in model.state_dict().items():  # tied tensors (lm_head = embeddings) once, under the first name
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            state[k] = v.contiguous()
    with atomic_output(folder) as tmp:
        model.config.save_pretrained(tmp)
        save_file(state, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        quant = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": LAYOUT,
                 "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                 "bit_map": bit_map, "weights_sha256": file_sha256(tmp / WEIGHTS_FILE), **meta}
        (tmp / QUANT_FILE).write_text(json.dumps(quant, indent=2, default=str))
    qls = [m for m in model.modules() if isinstance(m, QuantLinear)]
    n_packed = sum(m.in_features * m.out_features for m in qls)
    n_params = sum(p.numel() for p in model.parameters()) + n_packed  # tied embeddings counted once
    return {"path": str(folder), "bytes": (folder / WEIGHTS_FILE).stat().st_size,
            "packed_layer_bytes": sum(m.packed_bytes() for m in qls),
            "other_tensor_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "other_tensor_dtype": quant["dtype"],
            "fp16_model_bytes": 2 * n_params, "fp16_packed_layer_bytes": 2 * n_packed, "params": n_params}


def read_quant_config(folder: Path) -> dict[str, Any]:
    try:
        quant = json.loads((folder / QUANT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"checkpoint {folder}: cannot read {QUANT_FILE} ({err})") from None
    if quant.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {folder}: {QUANT_FILE} is not a {FORMAT} file (format={quant.get('format')!r})")
    if quant.get("format_version") not in READ_VERSIONS:
        raise ConfigError(f"checkpoint {folder}: format version {quant.get('format_version')} is not supported "
                          f"(this harness reads versions {', '.join(map(str, READ_VERSIONS))})")
    if not isinstance(quant.get("bit_map"), dict) or not quant["bit_map"]:
        raise ConfigError(f"checkpoint {folder}: {QUANT_FILE} has no bit_map")
    return quant


def load_packed(folder: str | os.PathLike, dtype: torch.dtype, device: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a packed model from ``folder``; returns (model in eval mode on ``device``, quantization.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder).expanduser()
    quant = read_quant_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ConfigError(f"checkpoint {folder}: {WEIGHTS_FILE} is missing")
    data = weights.read_bytes()  # read once: hashed, then parsed
    if hashlib.sha256(data).hexdigest() != quant.get("weights_sha256"):
        raise ConfigError(f"checkpoint {folder}: {WEIGHTS_FILE} does not match the SHA-256 in {QUANT_FILE} "
                          f"(corrupt or replaced); re-save it")
    try:
        state = load(data)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"checkpoint {folder}: cannot read {WEIGHTS_FILE} ({err})") from None
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    unfuse_experts(model)  # the layout the bit map names (MoE: one linear layer per expert), as at quantization
    to_quant_linear(model, quant["bit_map"])
    expected = model.state_dict()
    tied = {k for k in expected if k not in state and _is_tied(model, k)}
    missing = sorted(set(expected) - set(state) - tied)
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ConfigError(f"checkpoint {folder} does not match its {QUANT_FILE} bit map: {what} "
                          f"({len(missing)} missing, {len(extra)} unexpected tensors)")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ConfigError(f"checkpoint {folder} does not match its {QUANT_FILE} bit map: {k} has shape "
                              f"{tuple(v.shape)}, the bit map needs {tuple(expected[k].shape)}")
        if expected[k].dtype in (torch.int32, torch.float16) and v.dtype != expected[k].dtype:
            raise ConfigError(f"checkpoint {folder}: {k} is {v.dtype}, the packed format needs {expected[k].dtype}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.config.use_cache = False
    model.eval().to(device)
    return model, quant


def _is_tied(model: nn.Module, key: str) -> bool:
    """True for the output embedding weight of a model with tied embeddings (not saved separately)."""
    out = model.get_output_embeddings()
    if out is None or not getattr(model.config, "tie_word_embeddings", False):
        return False
    return any(p is out.weight for n, p in model.named_parameters(remove_duplicate=False) if n == key) or \
        key.endswith("lm_head.weight")
