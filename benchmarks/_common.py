"""Shared set-up for the benchmark scripts: compose the harness config, load model and calibration."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.cli import CONF_DIR
from harness.inputs.data import resolve_data_dir
from harness.inputs.model import ModelConfig, load_model
from harness.inputs.windows import CalibrationSpec, calibration_windows
from harness.run import resolve_device


def compose_cfg(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def load(cfg: dict[str, Any]):
    """(model, tokenizer, calibration windows (n, seqlen), device, cache_dir) for a composed config."""
    cache_dir = Path(cfg["cache_dir"]).expanduser()
    device = resolve_device(cfg.get("device", "auto"))
    model, tok, _ = load_model(ModelConfig(**cfg["model"]), device, cache_dir, seed=cfg["seed"])
    spec = CalibrationSpec(**cfg["calibration"])
    windows, _ = calibration_windows(spec, tok, resolve_data_dir(cfg.get("data_dir")), cache_dir)
    return model, tok, windows, device, cache_dir
