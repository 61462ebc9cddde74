"""Coverage of the perplexity interval on serially correlated windows (``harness.results.stats``).

Simulates stationary AR(1) series of window NLLs (lag-1 correlation ρ; the quick profile's WikiText-2
windows have ρ ≈ +0.64) and counts how often the 95% interval of exp(mean) covers the true value, for
the iid bootstrap (block 1) and the harness's block bootstrap (block length from the data). Writes
the table the docs publish (``reference/benchmarks/interval_check.json``)::

    python benchmarks/interval_check.py --series 1000 --out reference/benchmarks/interval_check.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from harness.results import stats


def ar1(rng: np.random.Generator, n: int, rho: float, mu: float = 3.0, sigma: float = 0.4) -> np.ndarray:
    e = rng.standard_normal(n + 100)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, len(e)):
        x[t] = rho * x[t - 1] + np.sqrt(1 - rho**2) * e[t]
    return mu + sigma * x[100:]


def cell(rho: float, n: int, series: int, n_resamples: int) -> dict:
    rng = np.random.default_rng(0)
    truth = np.exp(3.0)
    hits = {"iid": 0, "block": 0}
    widths = {"iid": [], "block": []}
    blocks = []
    for i in range(series):
        x = ar1(rng, n, rho)
        for kind, block in (("iid", 1), ("block", None)):
            iv = stats.ppl_interval(x, seed=i, n_resamples=n_resamples, block=block)
            hits[kind] += iv.low <= truth <= iv.high
            widths[kind].append(iv.high - iv.low)
            if kind == "block":
                blocks.append(iv.block)
    return {"rho": rho, "n": n, "iid": hits["iid"] / series, "block": hits["block"] / series,
            "median_block": float(np.median(blocks)),
            "width_ratio": float(np.mean(widths["block"]) / np.mean(widths["iid"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--n-resamples", type=int, default=2000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    cells = [cell(rho, n, a.series, a.n_resamples) for n in (40, 256) for rho in (0.0, 0.3, 0.64, 0.8)]
    doc = {"command": f"python benchmarks/interval_check.py --series {a.series} --n-resamples {a.n_resamples}",
           "series": a.series, "n_resamples": a.n_resamples, "seconds": time.perf_counter() - t0, "cells": cells}
    text = json.dumps(doc, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
