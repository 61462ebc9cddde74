"""Paired comparison of two runs: ``python -m harness.compare A B [--reference | --results-dir DIR]``.

A and B are record files, run ids (or a unique prefix) or method labels (unique within the folder).
For every task both records evaluated, on the same windows (perplexity) or items (zero-shot): the
difference A − B with a 95% paired bootstrap interval and the p-value of a paired permutation test
(``harness.results.stats.paired_test``); for a zero-shot suite also its mean over tasks
(``paired_suite_test``). Two records whose protocols or evaluation data differ
are refused with one line: their numbers are not comparable unit by unit.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.errors import ConfigError
from harness.results import stats
from harness.results.records import load_record, load_records, readable, task_protocol
from harness.results.report import REFERENCE_DIR, row_label

log = logging.getLogger(__name__)


def resolve(ref: str, folder: Path) -> dict[str, Any]:
    """A record from a path, a run id (or unique prefix) or a unique method label under ``folder``."""
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        rec = load_record(path)
        if (why := readable(rec)) is not None:
            raise ConfigError(f"{path}: {why}")
        return rec
    recs = load_records(folder)
    for key in (lambda r: r["run_id"] == ref, lambda r: r["run_id"].startswith(ref),
                lambda r: r["method"]["label"] == ref, lambda r: row_label(r) == ref):
        hits = [r for r in recs if key(r)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            ids = ", ".join(r["run_id"] for r in hits[:4])
            raise ConfigError(f"{ref!r} matches {len(hits)} records under {folder} ({ids}, ...); give a run id")
    raise ConfigError(f"no record under {folder / 'records'} is {ref!r} (a file, run id or method label)")


def units(task_metrics: dict[str, Any], is_ppl: bool) -> tuple[Any, ...]:
    """What the raw results are of: the evaluated tokens (perplexity) or the items and their data."""
    if is_ppl:
        return (task_metrics.get("text_sha256"), task_metrics.get("tokens_sha256"), task_metrics.get("windows"))
    return ((task_metrics.get("data") or {}).get("data_sha256"), tuple(task_metrics["per_item"]["doc_id"]))


def check_pairable(a: dict[str, Any], b: dict[str, Any], task: str) -> None:
    pa, pb = task_protocol(a, task), task_protocol(b, task)
    if pa != pb:
        diff = sorted(k for k in set(pa or {}) | set(pb or {}) if (pa or {}).get(k) != (pb or {}).get(k))
        raise ConfigError(f"cannot pair {a['run_id']} and {b['run_id']} on {task}: their protocols differ "
                          f"({', '.join(f'{k}: {(pa or {}).get(k)} vs {(pb or {}).get(k)}' for k in diff[:3])})")


def unpairable(a: dict[str, Any], b: dict[str, Any], task: str) -> str | None:
    """Why the perplexities of ``a`` and ``b`` on ``task`` cannot be paired window by window (None: they can):
    no raw per-window NLLs, or what ``pairs`` refuses (a protocol that differs, different evaluated text)."""
    x, y = a["metrics"].get(task), b["metrics"].get(task)
    if x is None or y is None or "window_nll" not in x or "window_nll" not in y:
        return f"{a['run_id']} or {b['run_id']} has no per-window results for {task}"
    try:
        pairs(a, b, [task])
    except ConfigError as e:
        return str(e)
    return None


def pairs(a: dict[str, Any], b: dict[str, Any], tasks: list[str] | None) -> list[tuple[str, str, list, list]]:
    """(task, metric, raw A, raw B) for every task both records hold raw results of."""
    common = [t for t in a["metrics"] if t in b["metrics"] and (tasks is None or t in tasks)]
    if not common:
        raise ConfigError(f"{a['run_id']} and {b['run_id']} share no evaluated task"
                          + (f" among {', '.join(tasks)}" if tasks else ""))
    out = []
    for task in common:
        check_pairable(a, b, task)
        ma, mb = a["metrics"][task], b["metrics"][task]
        members = [(f"{task}/{s}", ma["tasks"][s], mb["tasks"].get(s)) for s in ma.get("tasks", {})] or \
            [(task, ma, mb)]
        for name, x, y in members:
            if y is None:
                continue
            for rec, m in ((a, x), (b, y)):
                if "window_nll" not in m and "per_item" not in m:
                    raise ConfigError(f"{rec['run_id']} has no raw per-window/per-item results for {name} "
                                      f"(an older record); run it again to compare it")
            is_ppl = "window_nll" in x
            if units(x, is_ppl) != units(y, is_ppl):
                raise ConfigError(f"cannot pair {a['run_id']} and {b['run_id']} on {name}: they were evaluated on "
                                  f"different {'text' if is_ppl else 'items'}")
            if is_ppl:
                out.append((name, "ppl", x["window_nll"], y["window_nll"]))
            else:
                metric = x.get("metric", "acc")
                out.append((name, metric, x["per_item"][metric], y["per_item"][metric]))
    return out


def compare(a: dict[str, Any], b: dict[str, Any], tasks: list[str] | None = None,
            n_resamples: int = 10_000, seed: int = stats.SEED) -> list[dict[str, Any]]:
    """One paired result per task (and per suite member) of A − B."""
    rows = []
    suites: dict[str, list[tuple[list, list]]] = {}
    for name, metric, x, y in pairs(a, b, tasks):
        res = stats.paired_test(x, y, "ppl" if metric == "ppl" else "score", n_resamples=n_resamples, seed=seed)
        rows.append({"task": name, **res.as_record(), "metric": metric})
        if "/" in name:
            suites.setdefault(name.split("/")[0], []).append((x, y))
    for suite, members in suites.items():  # the suite mean, when both ran every member of A's suite
        if len(members) == len(a["metrics"][suite].get("tasks", {})) > 1:
            res = stats.paired_suite_test([x for x, _ in members], [y for _, y in members], n_resamples, seed)
            rows.append({"task": f"{suite}/mean", **res.as_record(), "metric": "mean"})
    return rows


def show(a: dict[str, Any], b: dict[str, Any], rows: list[dict[str, Any]], console: Console) -> None:
    t = Table(title=f"A = {a['method']['label']} ({a['run_id']})\nB = {b['method']['label']} ({b['run_id']})")
    for col in ("task", "metric", "A", "B", "A − B [95% CI]", "p", "differ?"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for r in rows:
        scale = 1 if r["metric"] == "ppl" else 100
        ci = r["ci"]
        t.add_row(r["task"], r["metric"], f"{scale * r['a']:.2f}", f"{scale * r['b']:.2f}",
                  f"{scale * r['diff']:+.2f} [{scale * ci['low']:+.2f}, {scale * ci['high']:+.2f}]",
                  f"{r['p_value']:.3g}", "yes" if r["significant"] else "no")
    console.print(t)
    console.print(f"paired bootstrap ({rows[0]['ci']['n_resamples']} resamples) and paired permutation test over "
                  f"the same windows/items; 'differ?' is p < {stats.ALPHA}" if rows else "nothing to compare")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--results-dir", default="results", help="folder holding records/ (default: results)")
    ap.add_argument("--reference", action="store_true", help=f"look the records up in {REFERENCE_DIR}")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task both evaluated)")
    ap.add_argument("--n-resamples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=stats.SEED)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    folder = REFERENCE_DIR if args.reference else Path(args.results_dir)
    try:
        a, b = resolve(args.a, folder), resolve(args.b, folder)
        rows = compare(a, b, args.tasks.split(",") if args.tasks else None, args.n_resamples, args.seed)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    show(a, b, rows, Console())
    if args.json:
        Path(args.json).write_text(json.dumps({"a": a["run_id"], "b": b["run_id"], "results": rows}, indent=2))
        log.info("wrote %s", args.json)
