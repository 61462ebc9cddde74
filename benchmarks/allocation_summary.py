"""Summary of mixed-precision allocation runs against the random control and uniform GPTQ.

Reads records (one or more ``records`` folders or files), groups the APTQ runs by (average-bit
budget, criterion, allocator), and prints / writes per run: WikiText-2 and C4 perplexity with their
bootstrap intervals over windows (records with raw per-window NLLs), the random draws' mean ± std
and bootstrap interval of the mean over draws, each run against the random draws of its budget
(``stats.versus_draws``: is it more than one more random draw?), and paired tests (same windows) of
each run against every other run it can be paired with that is named by ``--against`` (label
substrings). ``--md`` writes the Markdown table of the closing note.

    python benchmarks/allocation_summary.py /work/meas13/records reference/records --out results/allocation.json \
        --md results/allocation.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.results import stats
from harness.results.compare import unpairable
from harness.results.records import load_record
from harness.results.report import seed_of

TASKS = ("wikitext2", "c4")


def records(paths: list[str]) -> list[dict[str, Any]]:
    """The complete records under ``paths``; of several of one run (label, budget, seed), the newest."""
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    recs = [r for r in map(load_record, files) if r and r.get("status", "complete") == "complete" and "metrics" in r]
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in sorted(recs, key=lambda r: r.get("finished", "")):  # a re-run of the same draw: the newest (as the report)
        newest[(name(r), budget(r), seed_of(r))] = r
    return list(newest.values())


def name(r: dict[str, Any]) -> str:
    """The method label, with ``w<bits>`` for a method with one bit width (GPTQ-3 and GPTQ-4 share a label)."""
    label, bits = r["method"]["label"], r["method"]["options"].get("bits")
    return label if bits is None else f"{label} w{bits}"


def budget(r: dict[str, Any]) -> str:
    """What a random control must share with a run: the average bits, and the widths when not {low, high}
    (a {2, 3, 4} plan is compared with {2, 3, 4} random draws)."""
    q, opts = r["quantization"], r["method"]["options"]
    choices = (q.get("allocation") or {}).get("choices") or [opts.get("low_bits"), opts.get("high_bits")]
    plain = len(choices) == 2
    return f"{q['avg_bits']:.3f}" + ("" if plain else " b" + "".join(map(str, choices)))


def describe(r: dict[str, Any]) -> dict[str, Any]:
    q, m = r["quantization"], r["method"]
    opts = m["options"]
    row: dict[str, Any] = {"run_id": r["run_id"], "label": name(r), "avg_bits": round(q["avg_bits"], 4),
                           "budget": budget(r), "criterion": opts.get("sensitivity"),
                           "allocator": opts.get("allocator", "greedy"),
                           "seconds": (r.get("timings_s") or {}).get("total")}
    for t in TASKS:
        tm = r["metrics"].get(t)
        if tm is None:
            continue
        row[t] = {"ppl": tm["ppl"]}
        if "window_nll" in tm:
            iv = stats.ppl_interval(tm["window_nll"])
            row[t].update(lo=iv.low, hi=iv.high)
    return row


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for t in TASKS:
        if unpairable(a, b, t) is not None:
            continue
        res = stats.paired_test(window_nll(a, t), window_nll(b, t), "ppl")
        out[t] = {"diff": res.diff, "lo": res.ci.low, "hi": res.ci.high, "p": res.p_value}
    return out


def window_nll(r: dict[str, Any], t: str) -> list[float] | None:
    return (r["metrics"].get(t) or {}).get("window_nll")


def versus_random(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every non-random APTQ run against the random draws of the same budget (``budget``), per task."""
    out: dict[str, Any] = {}
    for ra in recs:
        opts = ra["method"]["options"]
        if opts.get("sensitivity") == "random" or ra["method"]["name"] != "aptq":
            continue
        draws = [r for r in recs if r["method"]["name"] == "aptq" and r["method"]["options"].get("sensitivity")
                 == "random" and budget(r) == budget(ra)]
        res = {}
        for t in TASKS:
            x = window_nll(ra, t)
            ys = [window_nll(r, t) for r in draws if unpairable(ra, r, t) is None]
            if x is not None and len(ys) >= 2:
                res[t] = stats.versus_draws(x, ys, "ppl").as_record()
        if res:
            out[ra["run_id"]] = {"label": name(ra), **res}
    return out


def _cell(row: dict[str, Any], t: str) -> str:
    c = row.get(t)
    if c is None:
        return "–"
    return f"{c['ppl']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]" if "lo" in c else f"{c['ppl']:.2f}"


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The closing-note table: each run, its intervals, and its test against the random draws (each
    budget's draws summed up after its runs)."""
    lines = ["| avg bits | run | WikiText-2 [95% CI] | C4 [95% CI] | − random mean, WikiText-2 [95% CI], p "
             "| − random mean, C4 [95% CI], p |", "|---|---|---|---|---|---|"]
    order = sorted(rows, key=lambda r: (r["avg_bits"], r["criterion"] == "random", r["label"]))
    for i, r in enumerate(order):
        v = summary["versus_random"].get(r["run_id"], {})
        tests = [f"{v[t]['diff_mean']:+.2f} [{v[t]['t_ci']['low']:+.2f}, {v[t]['t_ci']['high']:+.2f}], "
                 f"p = {v[t]['p_value']:.2g}" if t in v else "–" for t in TASKS]
        lines.append(f"| {r['avg_bits']:.3f} | {r['label']} | {_cell(r, 'wikitext2')} | {_cell(r, 'c4')} | "
                     f"{tests[0]} | {tests[1]} |")
        if i + 1 < len(order) and order[i + 1]["avg_bits"] == r["avg_bits"]:
            continue
        for key, s in summary["random"].items():  # after the last row of these bits
            bits, _, widths = key.partition(" ")
            if bits != r["budget"].partition(" ")[0]:
                continue
            cells = [f"{s[t]['mean']:.2f} ± {s[t]['std']:.2f} (n={s[t]['n']})" if t in s else "–" for t in TASKS]
            lines.append(f"| {bits} | random draws{' ' + widths if widths else ''}, mean ± std | {cells[0]} | "
                         f"{cells[1]} | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--match", default="g64 act ts", help="label substring of the runs to summarise")
    ap.add_argument("--against", default="GPTQ,random,APTQ-75% g64 act ts",
                    help="comma-separated label substrings: paired tests of every run against these")
    ap.add_argument("--out", default=None)
    ap.add_argument("--md", default=None, help="write the Markdown table here")
    a = ap.parse_args()
    recs = [r for r in records(a.paths) if a.match in r["method"]["label"]]
    rows = [describe(r) for r in recs]
    random_rows = [r for r in rows if r["criterion"] == "random"]
    summary: dict[str, Any] = {"runs": rows}
    by_budget: dict[str, list] = {}
    for r in random_rows:
        by_budget.setdefault(r["budget"], []).append(r)
    summary["random"] = {}
    for key, rr in by_budget.items():
        summary["random"][key] = {}
        for t in TASKS:
            vals = [r[t]["ppl"] for r in rr if t in r]
            s = stats.seed_summary(vals)
            if len(vals) > 1:
                iv = stats.mean_interval(vals)
                s.update(mean_lo=iv.low, mean_hi=iv.high)
            summary["random"][key][t] = s
    against = [s for s in a.against.split(",") if s]
    tests = []
    for ra in recs:
        for rb in recs:
            if ra is rb or not any(s in rb["method"]["label"] for s in against):
                continue
            res = paired(ra, rb)
            if res:
                tests.append({"a": name(ra), "b": name(rb), **res})
    summary["paired"] = tests
    summary["versus_random"] = versus_random(recs)
    text = json.dumps(summary, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    if a.md:
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text(markdown(rows, summary))
    for r in rows:
        cells = [f"{t} {r[t]['ppl']:.2f}" + (f" [{r[t]['lo']:.2f}, {r[t]['hi']:.2f}]" if "lo" in r[t] else "")
                 for t in TASKS if t in r]
        print(f"{r['label']:<48} {r['avg_bits']:.3f}  " + "  ".join(cells))
    print(json.dumps(summary["random"], indent=1))
    for t in tests:
        print(f"{t['a']}  −  {t['b']}: " + "; ".join(
            f"{k} {v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] p={v['p']:.3g}" for k, v in t.items()
            if k in TASKS))


if __name__ == "__main__":
    main()
