"""Mixed-precision allocation runs against the random control and uniform baselines.

Groups APTQ records by average-bit budget (and the widths, when not {low, high}: a {2, 3, 4} plan
meets {2, 3, 4} random draws), and for each non-random run tests it against its budget's random
draws (``stats.versus_draws``: on log perplexity, the prediction interval of one more draw, its t p
and the exact rank p), with the p-values of the whole summary adjusted together (Holm). Used by
the report's published ``allocation`` block and by ``benchmarks/allocation_summary.py``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.results import stats
from harness.results.compare import unpairable
from harness.results.records import load_record, seed_of

TASKS = ("wikitext2", "c4")


def records(paths: Iterable[Path | str]) -> list[dict[str, Any]]:
    """The complete records under ``paths`` (folders or files); of several of one run (label, budget,
    seed), the newest (as the report)."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    recs = [r for r in map(load_record, files) if r and r.get("status", "complete") == "complete" and "metrics" in r]
    return newest(recs)


def newest(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in sorted(recs, key=lambda r: r.get("finished", "")):
        best[(name(r), budget(r), seed_of(r))] = r
    return list(best.values())


def name(r: dict[str, Any]) -> str:
    """The method label, with ``w<bits>`` for a method with one bit width (GPTQ-3 and GPTQ-4 share a label)."""
    label, bits = r["method"]["label"], r["method"]["options"].get("bits")
    return label if bits is None else f"{label} w{bits}"


def budget(r: dict[str, Any]) -> str:
    """What a random control must share with a run: the average bits, and the widths when not {low, high}."""
    q, opts = r["quantization"], r["method"]["options"]
    choices = (q.get("allocation") or {}).get("choices") or [opts.get("low_bits"), opts.get("high_bits")]
    return f"{q['avg_bits']:.3f}" + ("" if len(choices) == 2 else " b" + "".join(map(str, choices)))


def window_nll(r: dict[str, Any], t: str) -> list[float] | None:
    return (r["metrics"].get(t) or {}).get("window_nll")


def is_random(r: dict[str, Any]) -> bool:
    return r["method"]["name"] == "aptq" and r["method"]["options"].get("sensitivity") == "random"


def pairable(a: dict[str, Any], b: dict[str, Any], t: str) -> bool:
    """Same evaluated tokens and protocol on ``t`` (window by window)."""
    return unpairable(a, b, t) is None


def draws_for(run: dict[str, Any], recs: list[dict[str, Any]], t: str) -> list[dict[str, Any]]:
    """The random draws of ``run``'s budget that pair with it on ``t``."""
    return [r for r in recs if is_random(r) and budget(r) == budget(run) and r is not run and pairable(run, r, t)]


def versus_random(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every non-random APTQ run against its budget's random draws, per task, when there are at least
    ``stats.MIN_DRAWS``; the p-values (t and rank) Holm-adjusted over all the tests made here."""
    out = []
    for run in recs:
        if run["method"]["name"] != "aptq" or is_random(run):
            continue
        for t in TASKS:
            draws = draws_for(run, recs, t)
            if window_nll(run, t) is None or len(draws) < stats.MIN_DRAWS:
                continue
            res = stats.versus_draws(window_nll(run, t), [window_nll(d, t) for d in draws], "ppl",
                                     stats.seed_for(run["run_id"], t, "versus_draws"))
            out.append({"run_id": run["run_id"], "label": name(run), "budget": budget(run), "task": t,
                        **res.as_record()})
    for key in ("p_value", "rank_p"):
        for row, p in zip(out, stats.adjust([r[key] for r in out], "holm"), strict=True):
            row[f"{key}_holm"] = p
    return out
