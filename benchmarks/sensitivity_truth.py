"""Ground truth for the mixed-precision criteria: the measured loss increase of every linear layer
quantized alone, and the rank correlation of each criterion with it.

For the configured APTQ setting (default: the default model, quick profile, g64 + act-order, 2-bit
low width), every decoder linear layer is quantized alone to ``low_bits`` with GPTQ's solver and the
increase of the next-token NLL (and the KL to the full-precision logits) is measured on the first
``method.truth_windows`` calibration windows (C4 train docs: never evaluation text), reusing the
captured block inputs (``harness.quantize.loss_sensitivity.truth_pass``). The criteria
(``trace``, ``trace_x_err``, ``fisher``, ``kfac``, and the controls ``trace_inv``, ``random``) are
scored on the same calibration set. Everything goes through the harness's sensitivity cache with the
keys a run uses, so ``method.sensitivity=measured`` / ``fisher`` runs afterwards reuse these passes.

Writes ``<out>.json`` (per layer: every criterion and the truth; Spearman and Kendall with the truth
over all layers and within each layer type, with p-values; pass times) and ``<out>.png``.

    python benchmarks/sensitivity_truth.py                       # the default model, ~minutes
    python benchmarks/sensitivity_truth.py method.truth_windows=4 --out results/sensitivity/truth4
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import compose_cfg, load
from rich.console import Console
from rich.table import Table
from scipy import stats

from harness.plugins.manager import make_plugins
from harness.quantize.driver import MethodRun
from harness.quantize.layers import linear_layers, local_name
from harness.quantize.sensitivity import cached_sensitivities, windows_hash
from harness.quantize.sequential import capture_inputs
from harness.run import plan
from harness.util import write_atomic

DEFAULT = ["method=aptq", "ratio=0.75", "group_size=64", "act_order=true", "true_sequential=true"]
CRITERIA = ("trace", "trace_x_err", "fisher", "kfac", "trace_inv", "random")
TRUTH = ("dnll", "kl")


class Silent:
    """Stands in for the plugin hook relay: the benchmark needs no observers."""

    def __getattr__(self, name):
        return lambda **kw: None


def correlations(x: dict[str, float], y: dict[str, float], names: list[str]) -> dict[str, Any]:
    """Spearman and Kendall rank correlations of ``x`` with ``y`` over ``names`` (with two-sided p-values)."""
    a, b = np.array([x[n] for n in names]), np.array([y[n] for n in names])
    rho, p_rho = stats.spearmanr(a, b)
    tau, p_tau = stats.kendalltau(a, b)
    return {"n": len(names), "spearman": float(rho), "spearman_p": float(p_rho), "kendall": float(tau),
            "kendall_p": float(p_tau)}


def criterion_scores(method_opts: dict[str, Any], crit: str, model, inps, kwargs, key, cache_dir, windows,
                     plugins) -> tuple[dict[str, float], dict[str, Any]]:
    """One criterion's per-layer scores (as ``plan_scores`` sees them) and how they were obtained."""
    opts = {**method_opts, "sensitivity": crit}
    name = opts.pop("name")
    method = plugins.methods.get(name).from_options(opts)
    entry: dict[str, Any] = {"cached": None, "seconds": 0.0}
    if method.needs_sensitivity:
        entry = cached_sensitivities(model, MethodRun(method, Silent(), None), inps, kwargs, key, cache_dir, windows)
    scores = method.plan_scores(linear_layers(model), entry.get("scores"))
    return scores, {"cached": entry["cached"], "seconds": entry["seconds"], "tables": entry.get("tables")}


def scores_from_records(folder: Path, cfg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-criterion scores kept in earlier APTQ records (``quantization.sensitivity.scores``) of the same
    model and calibration set: criteria of the block pass (trace, trace_x_err) need not run again."""
    from harness.results.records import load_record

    out: dict[str, dict[str, float]] = {}
    want = {k: cfg["calibration"][k] for k in ("source", "nsamples", "seqlen", "seed")}
    for f in sorted(folder.glob("*.json")):
        r = load_record(f) or {}
        sens = (r.get("quantization") or {}).get("sensitivity")
        opts = (r.get("method") or {}).get("options") or {}
        if (not sens or r.get("method", {}).get("name") != "aptq" or r.get("model", {}).get("name") !=
                cfg["model"]["name"] or {k: (r.get("calibration") or {}).get(k) for k in want} != want
                or opts.get("hessian") != cfg["method"]["hessian"] or opts.get("probes") != cfg["method"]["probes"]):
            continue
        crit = opts.get("sensitivity", "trace")
        if crit == "trace_x_err" and (opts.get("group_size"), opts.get("low_bits")) != \
                (cfg["method"]["group_size"], cfg["method"]["low_bits"]):
            continue
        out.setdefault(crit, sens["scores"])
    if "trace" in out:
        out.setdefault("trace_inv", {n: 1.0 / max(v, 1e-30) for n, v in out["trace"].items()})
    return out


def plot(path: Path, per_layer: dict[str, dict[str, float]], corr: dict[str, Any], crits: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_layer)
    types = sorted({local_name(n) for n in names})
    truth_rank = stats.rankdata([per_layer[n]["dnll"] for n in names])
    cols = 3
    rows = -(-len(crits) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, crit in zip(axes.flat, crits, strict=False):
        rank = stats.rankdata([per_layer[n][crit] for n in names])
        for k, t in enumerate(types):
            idx = [i for i, n in enumerate(names) if local_name(n) == t]
            ax.scatter(truth_rank[idx], rank[idx], s=9, color=colors(k), label=t)
        c = corr[crit]["all"]
        ax.set_title(f"{crit}: ρ={c['spearman']:.2f}, τ={c['kendall']:.2f}", fontsize=10)
        ax.set_xlabel("rank of measured ΔNLL")
        ax.set_ylabel(f"rank of {crit}")
    for ax in axes.flat[len(crits):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, markerscale=1.5)
    fig.suptitle("Per-layer criteria vs the measured loss increase (each layer quantized alone)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/sensitivity/truth", help="output path without extension")
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--from-records", default=None, help="a records folder: take the block-pass criteria "
                    "(trace, trace_x_err, trace_inv = 1/trace) from APTQ records of this model and calibration set")
    ap.add_argument("overrides", nargs="*", help="harness config overrides (after the default APTQ setting)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose_cfg([*DEFAULT, "wandb.mode=disabled", *a.overrides])
    plugins = make_plugins()
    p = plan(cfg, plugins)  # cheap: the identity gives the harness's cache key for the model
    model, _, windows, device, cache_dir = load(cfg)
    key = {"model": {"model": p.identity["model"], "seed": cfg["seed"]}, "windows_sha256": windows_hash(windows)}
    inps, kwargs = capture_inputs(model, windows, device)
    method_opts = dict(cfg["method"])
    timings: dict[str, Any] = {}

    t0 = time.perf_counter()
    truth_scores, truth_info = criterion_scores(method_opts, "measured", model, inps, kwargs, key, cache_dir,
                                                windows, plugins)
    timings["measured"] = {"seconds": truth_info["seconds"], "cached": truth_info["cached"],
                           "wall": time.perf_counter() - t0}
    tables = truth_info["tables"]
    per_layer = {n: {"dnll": tables["dnll"][n], "kl": tables["kl"][n]} for n in truth_scores}
    crits = [c for c in a.criteria.split(",") if c]
    kept = scores_from_records(Path(a.from_records), cfg) if a.from_records else {}
    for crit in crits:
        t0 = time.perf_counter()
        if crit in kept:
            scores = kept[crit]
            timings[crit] = {"from_records": a.from_records}
            for n, v in scores.items():
                per_layer[n][crit] = v
            continue
        scores, info = criterion_scores(method_opts, crit, model, inps, kwargs, key, cache_dir, windows, plugins)
        timings[crit] = {"seconds": info["seconds"], "cached": info["cached"], "wall": time.perf_counter() - t0}
        for n, v in scores.items():
            per_layer[n][crit] = v
    names = list(per_layer)
    types = sorted({local_name(n) for n in names}, key=lambda t: names.index(next(n for n in names if n.endswith(t))))
    corr: dict[str, Any] = {}
    for crit in [*crits, "kl"]:
        row = {"all": correlations({n: per_layer[n][crit] for n in names}, {n: per_layer[n]["dnll"] for n in names},
                                   names)}
        for t in types:
            sub = [n for n in names if local_name(n) == t]
            row[t] = correlations({n: per_layer[n][crit] for n in sub}, {n: per_layer[n]["dnll"] for n in sub}, sub)
        if crit != "kl":
            row["all_vs_kl"] = correlations({n: per_layer[n][crit] for n in names},
                                            {n: per_layer[n]["kl"] for n in names}, names)
        corr[crit] = row

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    m = cfg["method"]
    write_atomic(out.with_suffix(".json"), {
        "model": cfg["model"]["name"], "profile": cfg["profile"]["name"], "overrides": [*DEFAULT, *a.overrides],
        "setting": {k: m[k] for k in ("low_bits", "high_bits", "group_size", "sym", "act_order", "static_groups",
                                      "percdamp", "blocksize", "truth_windows", "hessian", "probes", "seed")},
        "calibration": cfg["calibration"], "windows_sha256": key["windows_sha256"],
        "truth": "dnll: increase of the mean next-token NLL on the first truth_windows calibration windows with "
                 "the layer alone quantized to low_bits by GPTQ's solver; kl: mean KL(p_fp || p_q) per token",
        "correlation_with_dnll": corr, "timings_s": timings, "layers": per_layer,
        "torch_threads": torch.get_num_threads(),
    })
    plot(out.with_suffix(".png"), per_layer, corr, crits)

    table = Table(title=f"Rank correlation with the measured ΔNLL ({len(names)} layers; "
                        f"{m['truth_windows']} calibration windows)")
    table.add_column("criterion")
    table.add_column("all ρ / τ", justify="right")
    for t in types:
        table.add_column(f"{t} ρ", justify="right")
    for crit, row in corr.items():
        table.add_row(crit, f"{row['all']['spearman']:+.2f} / {row['all']['kendall']:+.2f}",
                      *[f"{row[t]['spearman']:+.2f}" for t in types])
    console = Console(width=160)
    console.print(table)
    console.print({k: round(v["wall"], 1) if "wall" in v else v for k, v in timings.items()}, "s wall per criterion")
    console.print(f"written {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
