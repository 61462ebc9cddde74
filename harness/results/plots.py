"""Quality against bits: one plot per table column (each task's perplexity on a log scale, each
suite's mean accuracy) against **effective** bits per weight (scales, zeros, fp16 columns and
masks counted), PNG and SVG.

One marker and colour per method family (readable in greyscale: the markers differ too), interval
bars where the rows have them (95% interval half-widths, or the std over seeds), FP16 as a dashed
reference line, and the Pareto frontier (no point on it is beaten by one with fewer bits) as a step
line through its members.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from harness.results.tables import Table, pareto_ranks  # noqa: E402

STYLE = {  # family -> (marker, colour); colours from the colour-blind safe Okabe-Ito set
    "rtn": ("s", "#E69F00"), "gptq": ("o", "#0072B2"), "aptq": ("D", "#D55E00"), "owq": ("^", "#009E73"),
    "pbllm": ("v", "#CC79A7"), "fp16": ("*", "#000000"),
}
OTHER = ("P", "#56B4E9")


def frontier(points: list[tuple[float, float]], lower_is_better: bool) -> list[int]:
    """Indices of the Pareto-optimal points in (bits ↓, value ↓ or ↑), sorted by bits."""

    ranks = pareto_ranks(points, lower_is_better)
    return sorted((i for i, r in enumerate(ranks) if r == 1), key=lambda i: points[i][0])


def series(table: Table, col) -> list[dict[str, Any]]:
    """The plotted points of one column: (effective bits, value, error, family, label)."""
    out = []
    for label, bits, cells in table.rows:
        cell = cells.get(col)
        if cell is None:
            continue
        meta = table.meta[(label, bits)]
        err = cell.seeds["std"] if cell.seeds and cell.seeds["n"] > 1 else cell.half
        out.append({"x": meta.effective_bits, "y": cell.value, "err": err, "family": meta.family,
                    "label": label})
    return out


def plot_column(table: Table, col, title: str, stem: Path) -> list[Path]:
    pts = series(table, col)
    if not pts:
        return []
    scale = 100.0 if col.percent else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ref = [p for p in pts if p["family"] == "fp16"]
    quant = [p for p in pts if p["family"] != "fp16"]
    for p in ref:
        ax.axhline(scale * p["y"], color="black", linestyle="--", linewidth=1, label=f"{p['label']} (reference)")
    for family in sorted({p["family"] for p in quant}):
        fam = [p for p in quant if p["family"] == family]
        marker, colour = STYLE.get(family, OTHER)
        ax.errorbar([p["x"] for p in fam], [scale * p["y"] for p in fam],
                    yerr=[scale * (p["err"] or 0) for p in fam], fmt=marker, color=colour, markersize=7,
                    markeredgecolor="black", markeredgewidth=0.6, capsize=3, linestyle="none", label=family)
    if quant:
        front = frontier([(p["x"], p["y"]) for p in quant], col.lower_is_better)
        fx, fy = [quant[i]["x"] for i in front], [scale * quant[i]["y"] for i in front]
        ax.step(fx, fy, where="post", color="grey", linewidth=1.2, linestyle=":", label="Pareto frontier")
    if col.lower_is_better:
        ax.set_yscale("log")
    ax.set_xlabel("effective bits per weight")
    ax.set_ylabel(f"{col.name} {col.arrow()}" + (" (%)" if col.percent else ""))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def plot_table(table: Table, folder: Path, stem: str, title: str) -> dict[str, Path]:
    """Every column's plot for one (model, profile) table → {"<column> png|svg": path}."""
    out = {}
    for col in table.columns:
        name = re.sub(r"[^A-Za-z0-9._]+", "_", col.name).strip("_")  # "a b [limit=500]": a_b_limit_500
        for path in plot_column(table, col, f"{title}: {col.name}", folder / f"{stem}__{name}"):
            out[f"{col.name} {path.suffix[1:]}"] = path
    return out


def log_to_wandb(figures: dict[tuple[str, str], dict[str, Path]], results_dir: Path, settings: dict[str, Any]
                 ) -> str | None:
    """Log every PNG plot to one W&B run (``job_type=report``, the sweep's group when there is one);
    returns the run's id, or None when W&B is disabled or fails (the files are already written)."""
    if settings.get("mode", "offline") == "disabled" or not figures:
        return None
    try:
        import wandb

        run = wandb.init(project=settings.get("project", "quant-harness"), entity=settings.get("entity"),
                         mode=settings.get("mode", "offline"), dir=str(results_dir), group=settings.get("group"),
                         job_type="report", name="report", reinit="finish_previous",
                         settings=wandb.Settings(quiet=True))
        run.log({f"plots/{model}__{profile}/{key.removesuffix(' png')}": wandb.Image(str(path))
                 for (model, profile), paths in figures.items() for key, path in paths.items()
                 if key.endswith(" png")})
        run.finish()
        return run.id
    except Exception as err:  # noqa: BLE001 - plots on disk are the result; W&B is a copy
        import logging

        logging.getLogger(__name__).warning("W&B logging of the plots failed (%s: %s)", type(err).__name__, err)
        return None
