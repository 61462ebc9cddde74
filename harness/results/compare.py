"""Paired comparison of runs: ``python -m harness.compare A B [C D ...] [--reference | --results-dir DIR]``.

Arguments come in pairs (A − B, C − D, ...). Each names one record: a record file, a run id (or a
unique prefix), or a selector ``LABEL[@key=value,...]`` — a method label (as in the tables, with or
without the seed tag) narrowed by ``seed=`` (the calibration seed), ``draw=`` (a method's own seed,
e.g. a random allocation's), ``run=`` (run-id prefix), ``bits=``, ``profile=`` or any method option
(``group_size=64``, ``sensitivity=fisher``). A selector that matches several records lists them, each
with a selector that names it alone. Of re-runs of one configuration, the newest counts.

For every task both records evaluated, on the same windows (perplexity) or items (zero-shot): the
difference A − B with a 95% paired interval and a two-sided p (``harness.results.stats.paired_test``:
block bootstrap and block sign-flips over windows, bootstrap and sign-flips over items, plus the
exact McNemar test for 0/1 items); for a zero-shot suite also its mean over tasks. The p-values of
all rows are adjusted together (``--adjust holm`` by default, ``bh`` or ``none``) and the table says
which differences survive. Two records whose protocols or evaluation data differ are refused with
one line: their numbers are not comparable unit by unit.
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
from harness.results.records import (
    REFERENCE_DIR,
    load_record,
    load_records,
    readable,
    row_label,
    seed_of,
    task_protocol,
)

log = logging.getLogger(__name__)


def _fields(rec: dict[str, Any]) -> dict[str, str]:
    """What a selector's ``key=value`` can test on a record, as strings."""
    opts = {k: str(v) for k, v in (rec["method"].get("options") or {}).items()}
    out = {**opts, "seed": str(rec.get("seed", 0)), "bits": f"{rec['quantization']['avg_bits']:g}",
           "profile": str(rec.get("profile")), "run": rec["run_id"].rsplit("__", 1)[-1]}
    out["draw"] = opts.get("seed", out["seed"])
    return out


def _matches(rec: dict[str, Any], label: str, conds: dict[str, str]) -> bool:
    if label not in (rec["method"]["label"], row_label(rec)):
        return False
    f = _fields(rec)
    return all(f.get(k) is not None and (f[k].startswith(v) if k == "run" else f[k] == v) for k, v in conds.items())


def _parse(ref: str) -> tuple[str, dict[str, str]]:
    label, _, rest = ref.partition("@")
    conds = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"{ref!r}: a selector is LABEL@key=value,... (got {part!r})")
        conds[key.strip()] = value.strip()
    return label.strip(), conds


def _newest(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per configuration (label, seed, draw, bits, profile): the newest re-run."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in sorted(recs, key=lambda r: r.get("finished", "")):
        best[(r["method"]["label"], seed_of(r), r["quantization"]["avg_bits"], r.get("profile"),
              json.dumps(r["method"].get("options"), sort_keys=True, default=str))] = r
    return list(best.values())


def naming_selector(rec: dict[str, Any], among: list[dict[str, Any]]) -> str:
    """A selector that picks ``rec`` alone among ``among`` (falls back to its run id)."""
    label, f = row_label(rec), _fields(rec)
    conds: dict[str, str] = {}
    for key in ("seed", "draw", "bits", "profile", *sorted(rec["method"].get("options") or {})):
        if len([r for r in among if _matches(r, label, conds)]) == 1:
            break
        if any(_fields(r).get(key) != f.get(key) for r in among if _matches(r, label, conds)):
            conds[key] = f[key]
    if len([r for r in among if _matches(r, label, conds)]) != 1:
        return f"{label}@run={f['run']}"
    return label + ("@" + ",".join(f"{k}={v}" for k, v in conds.items()) if conds else "")


def resolve(ref: str, folder: Path, recs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One record from a path, a run id (or unique prefix) or a selector (module docstring);
    ``recs``: the records under ``folder`` when the caller has loaded them already."""
    path = Path(ref)
    if path.suffix == ".json" and path.is_file():
        rec = load_record(path)
        if (why := readable(rec)) is not None:
            raise ConfigError(f"{path}: {why}")
        return rec
    recs = load_records(folder) if recs is None else recs
    by_id = [r for r in recs if r["run_id"] == ref] or [r for r in recs if r["run_id"].startswith(ref)]
    if len(by_id) == 1:
        return by_id[0]
    label, conds = _parse(ref)
    hits = _newest([r for r in recs if _matches(r, label, conds)])
    if len(hits) == 1:
        return hits[0]
    if hits:
        names = "; ".join(sorted(naming_selector(r, hits) for r in hits)[:8])
        raise ConfigError(f"{ref!r} matches {len(hits)} records under {folder}: name one of {names}"
                          + (" ..." if len(hits) > 8 else ""))
    raise ConfigError(f"no record under {folder / 'records'} is {ref!r} (a file, run id or LABEL[@key=value,...])")


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


def compare(a: dict[str, Any], b: dict[str, Any], tasks: list[str] | None = None) -> list[dict[str, Any]]:
    """One paired result per task (and per suite member) of A − B, unadjusted."""
    rows = []
    suites: dict[str, list[tuple[list, list]]] = {}
    for name, metric, x, y in pairs(a, b, tasks):
        seed = stats.seed_for(a["run_id"], b["run_id"], name)
        res = stats.paired_test(x, y, "ppl" if metric == "ppl" else "score", seed)
        rows.append({"a_run": a["run_id"], "b_run": b["run_id"], "task": name, **res.as_record(), "metric": metric})
        if "/" in name:
            suites.setdefault(name.split("/")[0], []).append((x, y))
    for suite, members in suites.items():  # the suite mean, when both ran every member of A's suite
        if len(members) == len(a["metrics"][suite].get("tasks", {})) > 1:
            seed = stats.seed_for(a["run_id"], b["run_id"], suite)
            res = stats.paired_suite_test([x for x, _ in members], [y for _, y in members], seed)
            rows.append({"a_run": a["run_id"], "b_run": b["run_id"], "task": f"{suite}/mean", **res.as_record(),
                         "metric": "mean"})
    return rows


def adjust_rows(rows: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """Add ``p_adjusted`` and ``survives`` (adjusted p < α) to every row: one family of tests."""
    adjusted = stats.adjust([r["p_value"] for r in rows], method)
    return [{**r, "p_adjusted": p, "adjustment": method, "survives": p < stats.ALPHA}
            for r, p in zip(rows, adjusted, strict=True)]


def show(labels: dict[str, str], rows: list[dict[str, Any]], console: Console) -> None:
    t = Table(title="A − B, paired on the same windows / items")
    for col in ("A", "B", "task", "metric", "A value", "B value", "A − B [95% CI]", "p", "McNemar p", "p adj.",
                "differ?"):
        t.add_column(col, justify="left" if col in ("A", "B", "task", "metric") else "right", overflow="fold")
    for r in rows:
        scale = 1 if r["metric"] == "ppl" else 100
        ci = r["ci"]
        mc = r.get("mcnemar_p")
        diff = f"{scale * r['diff']:+.2f} [{scale * ci['low']:+.2f}, {scale * ci['high']:+.2f}]"
        t.add_row(labels[r["a_run"]], labels[r["b_run"]], r["task"], r["metric"], f"{scale * r['a']:.2f}",
                  f"{scale * r['b']:.2f}", diff,
                  f"{r['p_value']:.3g}", "" if mc is None else f"{mc:.3g}", f"{r['p_adjusted']:.3g}",
                  "yes" if r["survives"] else "no")
    console.print(t)
    if rows:
        console.print(f"{len(rows)} tests, p adjusted together ({rows[0]['adjustment']}); 'differ?': adjusted "
                      f"p < {stats.ALPHA}. Perplexity: circular block bootstrap and block sign-flips over windows; "
                      f"accuracy: bootstrap and sign-flips over items, McNemar exact; {stats.N_RESAMPLES} resamples.")
    else:
        console.print("nothing to compare")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n")[0])
    ap.add_argument("refs", nargs="+", metavar="A B", help="records in pairs: A B [C D ...] (A − B, C − D)")
    ap.add_argument("--results-dir", default="results", help="folder holding records/ (default: results)")
    ap.add_argument("--reference", action="store_true", help=f"look the records up in {REFERENCE_DIR}")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task both evaluated)")
    ap.add_argument("--adjust", default="holm", choices=list(stats.ADJUSTMENTS),
                    help="multiple-comparison adjustment over all rows (default holm)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    folder = REFERENCE_DIR if args.reference else Path(args.results_dir)
    if len(args.refs) % 2:
        log.error("give records in pairs (A B [C D ...]); got %d", len(args.refs))
        sys.exit(2)
    try:
        recs = [resolve(r, folder) for r in args.refs]
        rows = [row for a, b in zip(recs[::2], recs[1::2], strict=True)
                for row in compare(a, b, args.tasks.split(",") if args.tasks else None)]
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    rows = adjust_rows(rows, args.adjust)
    show({r["run_id"]: r["method"]["label"] for r in recs}, rows, Console())
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": [[a["run_id"], b["run_id"]] for a, b in
                                                         zip(recs[::2], recs[1::2], strict=True)],
                                               "results": rows}, indent=2))
        log.info("wrote %s", args.json)
