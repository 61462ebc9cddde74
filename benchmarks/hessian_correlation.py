"""APTQ's core claim on the real model: does the attention-aware H predict the attention-output error?

For chosen decoder layers of the model (default: the embedded SmolLM2-135M), random small
perturbations of q_proj/k_proj (and v_proj) are applied one at a time; the actual change of the
attention output ``ΔE`` is compared with ``½ tr(δW H δWᵀ)`` for APTQ's H and GPTQ's H
(``benchmarks/hessian_check.py``). Prints a table and writes JSON.

    python benchmarks/hessian_correlation.py --layers 0,10,20 --windows 8 --seqlen 256
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from _common import compose_cfg, load
from hessian_check import perturbation_study
from rich.console import Console
from rich.table import Table

from harness.quantize.layers import decoder_layers, run_block
from harness.quantize.sequential import capture_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="0,10,20", help="decoder layer indices")
    ap.add_argument("--windows", type=int, default=8, help="C4 calibration windows (docs 1000-1999)")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--perturb", type=int, default=96, help="perturbations per study")
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--rel-eps", type=float, default=1e-2)
    ap.add_argument("--out", default="results/benchmarks/hessian_correlation.json")
    ap.add_argument("overrides", nargs="*", help="harness config overrides, e.g. model=hf model.path=...")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    cfg = compose_cfg([f"calibration.nsamples={a.windows}", f"calibration.seqlen={a.seqlen}", *a.overrides])
    model, _, windows, device, _ = load(cfg)
    inps, kwargs = capture_inputs(model, windows, device)
    _, layers = decoder_layers(model)
    wanted = sorted(int(i) for i in a.layers.split(","))
    results = {}
    for i, block in enumerate(layers):
        if i in wanted:
            for targets in (("q_proj", "k_proj"), ("q_proj", "k_proj", "v_proj")):
                key = f"layer{i}:{'+'.join(t[0] for t in targets)}"
                results[key] = perturbation_study(block, inps, kwargs[i], targets=targets, n_perturb=a.perturb,
                                                  rel_eps=a.rel_eps, probes=a.probes, seed=i)
        if i >= wanted[-1]:
            break
        with torch.no_grad():
            inps = run_block(block, inps, kwargs[i])
    table = Table(title=f"Predicted vs actual attention-output error ({cfg['model']['name']}, "
                        f"{a.windows}×{a.seqlen} C4 windows, {a.perturb} perturbations, rel. size {a.rel_eps})")
    for col in ("layer:targets", "subset", "n", "Pearson APTQ", "Pearson GPTQ", "Spearman APTQ", "Spearman GPTQ",
                "pred/actual APTQ"):
        table.add_column(col, justify="right")
    for key, r in results.items():
        for subset, v in r.items():
            if isinstance(v, dict):
                table.add_row(key, subset, str(v["n"]), f"{v['pearson_aptq']:.3f}", f"{v['pearson_gptq']:.3f}",
                              f"{v['spearman_aptq']:.3f}", f"{v['spearman_gptq']:.3f}", f"{v['ratio_aptq']:.2f}")
    Console().print(table)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "model": cfg["model"]["name"], "results": results}, indent=2))
    Console().print(f"written {out}")


if __name__ == "__main__":
    main()
