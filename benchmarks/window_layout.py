"""What the quick profile's window layout does to the evidence: consecutive vs spread windows.

FP16 on the default model, every non-overlapping 512-token window of WikiText-2 test scored once;
then three layouts read off the same per-window NLLs: the quick profile's first 40 consecutive
windows, 40 windows spread evenly over the text, and every window (the full text at 512 tokens).
For each: perplexity, lag-1..3 autocorrelation of the window NLLs, the block length the interval
chooses, and the 95% interval (``stats.ppl_interval``). Writes JSON::

    python benchmarks/window_layout.py --out reference/benchmarks/window_layout.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.inputs.data import load_corpus, resolve_data_dir
from harness.inputs.model import embedded_default_folder
from harness.inputs.windows import joined_ids, sequential_windows
from harness.results import stats
from tasks.perplexity import window_nlls


def autocorr(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float(np.dot(x[:-lag], x[lag:]) / np.dot(x, x))


def layout(name: str, nll: np.ndarray) -> dict:
    iv = stats.ppl_interval(nll, stats.seed_for("window_layout", name))
    return {"layout": name, "windows": len(nll), "ppl": float(np.exp(nll.mean())),
            "lag1": autocorr(nll, 1), "lag2": autocorr(nll, 2), "lag3": autocorr(nll, 3),
            "block": iv.block, "low": iv.low, "high": iv.high, "half_width": iv.half_width()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--quick", type=int, default=40, help="windows of the quick profile")
    ap.add_argument("--cache-dir", default=str(Path("~/.cache/quant-harness").expanduser()))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    cache = Path(a.cache_dir)
    folder = embedded_default_folder(cache)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = joined_ids(load_corpus("wikitext2_test", resolve_data_dir(None)), tok, cache_dir=cache)
    windows = sequential_windows(ids, a.seqlen)  # (n, seqlen): every window, in text order
    t0 = time.perf_counter()
    with torch.inference_mode():
        nll = window_nlls(model, windows, 4, "cpu").numpy()  # (n,)
    spread = np.linspace(0, len(nll) - 1, a.quick).round().astype(int)
    doc = {"command": "python benchmarks/window_layout.py", "model": folder.name, "seqlen": a.seqlen,
           "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
           "layouts": [layout("first (quick profile)", nll[: a.quick]), layout("spread evenly", nll[spread]),
                       layout("all windows", nll)]}
    text = json.dumps(doc, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
