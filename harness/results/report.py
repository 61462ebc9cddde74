"""Paper-style tables from the run records: ``python -m harness.report [results_dir | --reference]``.

One table per (model, profile): tables never mix profiles or models. Rows are ``method @ avg
bits`` (sorted by bits, then method), columns the tasks' primary metrics (ppl ↓, acc ↑), as each task
declares them (``Task.primary_metric``, kept in the record). Nor do columns mix protocols: a column
is a task under one protocol, and its name carries every protocol field in which the table's records
of that task differ, and a perplexity BOS other than ``none`` always (``wikitext2 ppl [bos=per_window]``).
Zero-shot suites add Table-2 columns: each task's chosen metric (acc or acc_norm, in %) and the
suite mean. Writes ``<results_dir>/tables/<model>__<profile>.{md,tex}`` and ``leaderboard.md``, and prints
the tables with rich.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.results import stats
from harness.results.records import load_records, task_protocol
from harness.util import REPO_ROOT

log = logging.getLogger(__name__)

REFERENCE_DIR = REPO_ROOT / "reference"  # the measurements the project publishes


@dataclass(frozen=True)
class Column:
    """One table column: a task's (or a suite member's) primary metric, with its direction and format."""

    name: str  # e.g. "wikitext2 ppl", "piqa acc", "zeroshot mean", "wikitext2 ppl [bos=per_window]"
    lower_is_better: bool
    percent: bool
    suite_mean: bool = False  # a zero-shot suite's mean (Table 2's last column)

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "–"
        if self.percent:
            return f"{100 * value:.2f}"
        return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"

    def fmt_half(self, half: float) -> str:
        """An interval's half-width (or a std) with two significant digits, in the column's unit."""
        h = 100 * half if self.percent else half
        return f"{h:.0f}" if h >= 100 else f"{h:.2g}"

    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"


def task_primaries(plugins=None) -> dict[str, dict[str, Any]]:
    """Each registered task's declared primary metric (for records written before they were recorded)."""
    from harness.plugins.manager import make_plugins
    from harness.plugins.task import TaskEnv
    from harness.util import build_config

    plugins = plugins or make_plugins()
    env = TaskEnv(data_dir=None, cache_dir=Path("."), device="cpu")
    out = {}
    for name in plugins.tasks.names():
        cls = plugins.tasks.get(name)
        try:
            out[name] = cls(build_config(cls.Config, {}, name), env).primary_metric()
        except Exception:  # noqa: BLE001 - a task that needs options: its class attributes
            out[name] = {"metric": cls.primary, "lower_is_better": cls.lower_is_better, "percent": cls.percent}
    return out


@dataclass
class Cell:
    """One figure of a table: its value, the half-width of its 95% interval (None: no raw results),
    the raw per-unit results it came from (for paired tests), and over seeds their summary."""

    value: float
    half: float | None = None
    raw: list[float] | None = None
    paired_metric: str = ""  # "ppl" (per-window NLLs) or "score" (per-item 0/1)
    units: str = ""  # what the raw results are of (hash of the evaluated windows / item ids): pairs must match
    seeds: dict[str, Any] | None = None  # mean, std, n, values (a row over several calibration seeds)
    not_different: bool = False  # not significantly different from the baseline row (paired test)

    def text(self, col: Column, tex: bool = False) -> str:
        pm = "$\\pm$" if tex else "±"
        if self.seeds is not None and self.seeds["n"] > 1:
            out = f"{col.fmt(self.seeds['mean'])} {pm} {col.fmt_half(self.seeds['std'])} (n={self.seeds['n']})"
        else:
            half = col.fmt_half(self.half) if self.half is not None else ("--" if tex else "–")
            out = f"{col.fmt(self.value)} {pm} {half}"
        return out + ((" $\\approx$" if tex else " ≈") if self.not_different else "")


def _interval_half(m: dict[str, Any], metric: str, raw: list[float] | None, is_ppl: bool) -> float | None:
    ci = m.get(f"{metric}_ci")
    if isinstance(ci, dict):
        return (ci["high"] - ci["low"]) / 2
    if raw:  # raw results without a stored interval: recompute it
        iv = stats.ppl_interval(raw) if is_ppl else stats.mean_interval(raw)
        return iv.half_width()
    return None


def _cell(m: dict[str, Any], metric: str) -> Cell:
    if "window_nll" in m and metric == "ppl":
        raw, kind, units = m["window_nll"], "ppl", str(m.get("tokens_sha256"))
    elif metric in (m.get("per_item") or {}):
        raw, kind, units = m["per_item"][metric], "score", str(m["per_item"]["doc_id"])
    else:
        raw, kind, units = None, "", ""
    return Cell(float(m[metric]), _interval_half(m, metric, raw, kind == "ppl"), raw, kind, units)


def _suite_cell(m: dict[str, Any]) -> Cell:
    """The suite mean; its raw results are the members' chosen per-item scores, concatenated when
    every member has the same number of items (then their mean is the mean of the task means)."""
    members = list((m.get("tasks") or {}).values())
    arrays = [sm.get("per_item", {}).get(sm.get("metric")) for sm in members]
    raw = units = None
    if arrays and all(arrays) and len({len(a) for a in arrays}) == 1:
        raw = [x for a in arrays for x in a]
        units = str([sm["per_item"]["doc_id"] for sm in members])
    ci = m.get("mean_ci")
    half = (ci["high"] - ci["low"]) / 2 if isinstance(ci, dict) else None
    if half is None and arrays and all(arrays):
        half = stats.suite_mean_interval(arrays).half_width()
    return Cell(float(m["mean"]), half, raw, "score" if raw else "", units or "")


def protocol_tags(records: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """``(run_id, task) → tag`` for the column names of one table: the protocol fields (``name`` aside)
    in which the records of that task differ, and ``bos`` whenever it is not ``none``; "" for none."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        for task in rec["metrics"]:
            by_task[task].append(rec)
    tags = {}
    for task, recs in by_task.items():
        protos = [task_protocol(r, task) for r in recs]
        fields = sorted({k for p in protos for k in p} - {"name"})
        differ = [k for k in fields if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in protos}) > 1]
        for rec, proto in zip(recs, protos, strict=True):
            shown = differ + (["bos"] if proto.get("bos", "none") != "none" and "bos" not in differ else [])
            tags[(rec["run_id"], task)] = ", ".join(f"{k}={proto.get(k)}" for k in shown)
    return tags


def cells_of(rec: dict[str, Any], declared: dict[str, dict[str, Any]],
             tags: dict[tuple[str, str], str] | None = None) -> list[tuple[Column, Cell]]:
    """(column, cell) pairs of one record. The record's own ``primary`` (schema 2) says which metric
    each task shows and its direction; older records use the registered task's declaration. A suite
    (``zeroshot``: per-task metrics under ``tasks``) gives one column per member task, with the metric
    the suite chose for it, then ``<suite> mean`` (Table 2). ``tags`` (``protocol_tags``) name the
    protocol in the column (default: this record alone, i.e. only a BOS other than ``none``)."""
    tags = protocol_tags([rec]) if tags is None else tags
    out = []
    for task, m in rec["metrics"].items():
        prim = (rec.get("primary") or {}).get(task) or declared.get(task)
        if prim is None:
            continue  # a task this harness does not know and the record does not describe
        lower, pct = bool(prim["lower_is_better"]), bool(prim["percent"])
        tag = tags.get((rec["run_id"], task))
        suffix = f" [{tag}]" if tag else ""
        for sub, sm in (m.get("tasks") or {}).items():
            if isinstance(sm.get(sm.get("metric")), (int, float)):
                out.append((Column(f"{sub} {sm['metric']}{suffix}", lower, pct), _cell(sm, sm["metric"])))
        metric = m.get("metric") if isinstance(m.get(m.get("metric")), (int, float)) else prim["metric"]
        if metric == "mean" and "tasks" in m:
            out.append((Column(f"{task} mean{suffix}", lower, pct, suite_mean=True), _suite_cell(m)))
        elif isinstance(m.get(metric), (int, float)):
            out.append((Column(f"{task} {metric}{suffix}", lower, pct), _cell(m, metric)))
    return out


SEED_TAG = re.compile(r"\s+seed\d+\b")


def row_label(rec: dict[str, Any]) -> str:
    """The method label without a per-draw seed tag: records that differ only in seed share a row."""
    return SEED_TAG.sub("", rec["method"]["label"])


def seed_of(rec: dict[str, Any]) -> str:
    """The draw a record is: its calibration seed, and a method's own seed when set apart from it
    (e.g. APTQ's random allocation with ``method.seed=1``)."""
    seed = int(rec.get("seed", 0))
    own = (rec["method"].get("options") or {}).get("seed")
    return str(seed) if own is None or own == seed else f"{seed}/{own}"


def _merge_seeds(per_seed: dict[str, dict[Column, Cell]]) -> dict[Column, Cell]:
    """One row's cells from its records, one per calibration seed: a single seed as it is; several
    give mean ± std over the seeds that have the column (the per-seed values kept)."""
    if len(per_seed) == 1:
        return next(iter(per_seed.values()))
    out: dict[Column, Cell] = {}
    columns = {c for cells in per_seed.values() for c in cells}
    for col in columns:
        vals = [cells[col].value for _, cells in sorted(per_seed.items()) if col in cells]
        summary = {**stats.seed_summary(vals), "seeds": [s for s, cells in sorted(per_seed.items()) if col in cells]}
        out[col] = Cell(summary["mean"], None, seeds=summary)
    return out


def build_tables(records: list[dict[str, Any]], declared: dict[str, dict[str, Any]] | None = None
                 ) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (model, profile) → {"columns": [Column], "rows": [(label, bits, {Column: Cell})]}.

    A row is (label without seed tag, avg bits). Records of one row that differ in seed are
    aggregated (``_merge_seeds``); of several records with the same seed (a re-run), the newest wins.
    """
    declared = task_primaries() if declared is None else declared
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["model"]["name"], rec["profile"])].append(rec)
    tables = {}
    for key, recs in groups.items():
        recs.sort(key=lambda r: r.get("finished", ""))
        tags = protocol_tags(recs)
        columns: list[Column] = []
        rows: dict[tuple[str, float], dict[str, dict[Column, Cell]]] = {}
        for rec in recs:
            bits = round(rec["quantization"]["avg_bits"], 3)
            cells = rows.setdefault((row_label(rec), bits), {}).setdefault(seed_of(rec), {})
            for col, cell in cells_of(rec, declared, tags):
                if col not in columns:
                    columns.append(col)
                cells[col] = cell
        columns.sort(key=lambda c: (not c.lower_is_better, c.suite_mean))  # ppl | accuracies | means
        ordered = sorted(rows.items(), key=lambda kv: (-kv[0][1], kv[0][0]))
        tables[key] = {"columns": columns,
                       "rows": [(lbl, b, _merge_seeds(per_seed)) for (lbl, b), per_seed in ordered]}
    return tables


def mark_baseline(table: dict[str, Any], baseline: str) -> str | None:
    """Mark each cell not significantly different from the ``baseline`` row's (paired permutation test
    on the same windows / items, p ≥ 0.05). Returns the baseline's label, or None if no row matches."""
    match = [r for r in table["rows"] if r[0] == baseline] or [r for r in table["rows"] if fnmatch(r[0], baseline)]
    if not match:
        return None
    base_label, _, base = match[0]
    for label, _, cells in table["rows"]:
        if label == base_label:
            continue
        for col, cell in cells.items():
            ref = base.get(col)
            if ref is None or not cell.raw or not ref.raw or cell.units != ref.units or len(cell.raw) != len(ref.raw):
                continue
            cell.not_different = not stats.paired_test(cell.raw, ref.raw, cell.paired_metric).significant
    return base_label


def best_per_column(table: dict[str, Any]) -> dict[Column, float]:
    best = {}
    for col in table["columns"]:
        vals = [c[col].value for _, _, c in table["rows"] if col in c]
        if vals:
            best[col] = min(vals) if col.lower_is_better else max(vals)
    return best


def seed_notes(table: dict[str, Any]) -> list[str]:
    """The per-seed values behind each aggregated row (Markdown bullet lines)."""
    out = []
    for label, _, cells in table["rows"]:
        parts = [f"{col.name} {' / '.join(col.fmt(v) for v in cell.seeds['values'])}"
                 for col, cell in cells.items() if cell.seeds and cell.seeds["n"] > 1]
        if parts:
            seeds = next(c.seeds["seeds"] for c in cells.values() if c.seeds)
            out.append(f"- {label}, seeds {', '.join(map(str, seeds))}: " + "; ".join(parts))
    return out


LEGEND = ("Figures: value ± half-width of the 95% bootstrap interval (over windows for perplexity, over items "
          "for accuracy; ± – where the record has no raw results); over calibration seeds: mean ± std (n=seeds).")


def to_markdown(title: str, table: dict[str, Any], baseline: str | None = None) -> str:
    cols = table["columns"]
    best = best_per_column(table)
    head = "| Method | Avg bits | " + " | ".join(f"{c.name} {c.arrow()}" for c in cols) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(cols) + 2)]
    for label, bits, cells in table["rows"]:
        vals = []
        for c in cols:
            cell = cells.get(c)
            s = cell.text(c) if cell else "–"
            vals.append(f"**{s}**" if cell and cell.value == best.get(c) else s)
        lines.append(f"| {label} | {bits:g} | " + " | ".join(vals) + " |")
    lines += ["", LEGEND]
    if baseline:
        lines.append(f"≈: not significantly different from {baseline} (paired permutation test, p ≥ 0.05).")
    notes = seed_notes(table)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def latex_escape(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def to_latex(title: str, table: dict[str, Any]) -> str:
    cols = table["columns"]
    best = best_per_column(table)
    out = [
        "\\begin{table}[t]", "\\centering", f"\\caption{{{latex_escape(title)}}}",
        "\\begin{tabular}{l" + "r" * (len(cols) + 1) + "}", "\\toprule",
        "Method & Avg bits & " + " & ".join(
            latex_escape(c.name) + (" $\\downarrow$" if c.lower_is_better else " $\\uparrow$") for c in cols
        ) + " \\\\", "\\midrule",
    ]
    for label, bits, cells in table["rows"]:
        vals = []
        for c in cols:
            cell = cells.get(c)
            s = cell.text(c, tex=True) if cell else "--"
            vals.append(f"\\textbf{{{s}}}" if cell and cell.value == best.get(c) else s)
        out.append(f"{latex_escape(label)} & {bits:g} & " + " & ".join(vals) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def leaderboard(tables: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Per (model, profile): rows ranked by mean perplexity over the ppl columns, and by each
    zero-shot suite's mean accuracy."""
    lines = ["# Leaderboard", ""]
    for (model, profile), table in sorted(tables.items()):
        ppl_cols = [c for c in table["columns"] if c.lower_is_better]
        ranked = []
        for label, bits, cells in table["rows"]:
            vals = [cells[c].value for c in ppl_cols if c in cells]
            if vals and len(vals) == len(ppl_cols):
                ranked.append((sum(vals) / len(vals), label, bits))
        if ranked:
            lines += [f"## {model} · profile {profile}", "",
                      "| Rank | Method | Avg bits | Mean ppl ↓ |", "|---|---|---|---|"]
            for i, (m, label, bits) in enumerate(sorted(ranked), 1):
                lines.append(f"| {i} | {label} | {bits:g} | {m:.2f} |")
            lines.append("")
        for col in (c for c in table["columns"] if c.suite_mean):
            acc = sorted(((cells[col].value, label, bits) for label, bits, cells in table["rows"] if col in cells),
                         reverse=True)
            lines += [f"## {model} · profile {profile} · {col.name.replace(' mean', '', 1)}", "",
                      "| Rank | Method | Avg bits | Mean accuracy ↑ |", "|---|---|---|---|"]
            lines += [f"| {i} | {label} | {bits:g} | {100 * m:.2f} |" for i, (m, label, bits) in enumerate(acc, 1)]
            lines.append("")
    return "\n".join(lines)


def render(results_dir: Path, console: Console | None = None, baseline: str | None = None) -> dict[str, Path]:
    """Write the tables for every record under ``results_dir``; return the files written.

    ``baseline`` (a row label or glob): cells not significantly different from that row's are marked ≈.
    """
    console = console or Console()
    tables = build_tables(load_records(results_dir))
    out_dir = results_dir / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for (model, profile), table in sorted(tables.items()):
        title = f"{model} · profile {profile}"
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{model}__{profile}")
        base = mark_baseline(table, baseline) if baseline else None
        if baseline and base is None:
            log.warning("no row of %s matches --baseline %r; nothing marked", title, baseline)
        for ext, text in (("md", to_markdown(title, table, base)), ("tex", to_latex(title, table))):
            path = out_dir / f"{stem}.{ext}"
            path.write_text(text, encoding="utf-8")
            written[f"{stem}.{ext}"] = path
        rt = Table(title=title)
        rt.add_column("Method")
        rt.add_column("Avg bits", justify="right")
        for c in table["columns"]:
            rt.add_column(c.name, justify="right")
        for label, bits, cells in table["rows"]:
            rt.add_row(label, f"{bits:g}", *(cells[c].text(c) if c in cells else "–" for c in table["columns"]))
        console.print(rt)
    lb = out_dir / "leaderboard.md"
    lb.write_text(leaderboard(tables), encoding="utf-8")
    written["leaderboard.md"] = lb
    if not tables:
        console.print(f"no complete records under {results_dir / 'records'}")
    return written


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", nargs="?", default=None, help="folder holding records/ (default: results)")
    ap.add_argument("--reference", action="store_true",
                    help=f"render the project's published records ({REFERENCE_DIR}) into its tables")
    ap.add_argument("--baseline", default=None,
                    help="row label (or glob) to compare every row with: cells not significantly different "
                         "from it (paired permutation test on the same windows/items, p >= 0.05) are marked ≈")
    args = ap.parse_args(argv)
    if args.reference and args.results_dir:
        ap.error("give a results_dir or --reference, not both")
    folder = REFERENCE_DIR if args.reference else Path(args.results_dir or "results")
    for path in render(folder, baseline=args.baseline).values():
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
