"""Output error of quantization methods on one decoder layer of a real model, on real calibration inputs.

A cheap proxy (seconds to minutes on a CPU) for comparing methods before the full runs: the
inputs ``X`` of every linear layer of decoder layer ``--layer`` (FP model, calibration windows
of the run's config), its Hessian, and per method the relative output error
``‖(W − Q) Xᵀ‖_F / ‖W Xᵀ‖_F`` (each layer quantized alone; no propagation between layers).

    python benchmarks/layer_error.py                       # layer 0, 8 windows of the quick profile
    python benchmarks/layer_error.py --layer 15 --windows 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.inputs.model import ModelConfig, load_model  # noqa: E402
from harness.inputs.windows import CalibrationSpec, calibration_windows  # noqa: E402
from harness.quantize.layers import block_linears, decoder_layers, run_block  # noqa: E402
from harness.quantize.primitives import QuantSpec, rtn  # noqa: E402
from harness.quantize.sequential import capture_inputs  # noqa: E402
from harness.util import build_config  # noqa: E402
from methods.gptq import Gptq, gptq_quantize  # noqa: E402
from methods.owq import Owq, allocate_fp16_columns, layer_bits, owq_quantize  # noqa: E402
from methods.pbllm import Pbllm, pb_quantize  # noqa: E402


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from harness.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(hcompose(config_name="config", overrides=overrides), resolve=True)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (model=..., profile=...)")
    args = ap.parse_args()
    cfg = compose(args.overrides)
    cache = Path(cfg["cache_dir"]).expanduser()
    model, tok, _ = load_model(build_config(ModelConfig, dict(cfg["model"]), "model"), "cpu", cache)
    from harness.inputs.data import resolve_data_dir

    calib = build_config(CalibrationSpec, dict(cfg["calibration"]), "calibration")
    windows, _ = calibration_windows(calib, tok, resolve_data_dir(cfg.get("data_dir")), cache)
    inps, kwargs = capture_inputs(model, windows[: args.windows], "cpu")
    _, layers = decoder_layers(model)
    for i in range(args.layer):
        inps = run_block(layers[i], inps, kwargs[i])
    block = layers[args.layer]
    linears = block_linears(block)
    stats, xs = Gptq(Gptq.default_config()), {}

    def record(name: str, X: torch.Tensor) -> None:  # a forward hook must return None
        stats.add_batch(name, X)
        xs.setdefault(name, []).append(X[0])

    hooks = [m.register_forward_hook(lambda _m, inp, _o, n=n: record(n, inp[0])) for n, m in linears.items()]
    run_block(block, inps, kwargs[args.layer])
    for h in hooks:
        h.remove()
    all_shapes = {n: (m.out_features, m.in_features) for n, m in linears.items()}
    rows = []
    for name, lin in linears.items():
        W, H, X = lin.weight.data.float(), stats.H[name], torch.cat(xs[name])  # X: (tokens, d_in)
        ref = (W @ X.t()).norm()

        def err(Q, W=W, X=X, ref=ref):
            return float(((W - Q) @ X.t()).norm() / ref)

        row = {"layer": name}
        for bits in (4, 3):
            spec = QuantSpec(bits)
            row[f"RTN{bits}"] = err(rtn(W, spec).Q)
            row[f"GPTQ{bits}"] = err(gptq_quantize(W, H, spec, Gptq.default_config(bits=bits))[0])
            n_out = allocate_fp16_columns({k: all_shapes[k] for k in all_shapes}, bits, bits + 0.01)[name]
            row[f"OWQ{bits}.01({n_out}c,{layer_bits(*W.shape, bits, n_out):.3f}b)"] = err(
                owq_quantize(W, H, n_out, spec, Owq.default_config(bits=bits, target_bits=bits + 0.01))[0])
        for f in (0.1, 0.2, 0.3):
            for compensate, label in ((False, "PB"), (True, "GPTQ-PB")):
                cfg = Pbllm.default_config(salient_frac=f, salience="hessian", compensate=compensate)
                row[f"{label}{f:g}"] = err(pb_quantize(W, H, cfg)[0])
        rows.append(row)
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
