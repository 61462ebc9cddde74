"""Paper-style tables from the run records: ``python -m harness.report [results_dir | --reference]``.

One table per (model, profile): tables never mix profiles or models. Rows are ``method @ avg
bits`` (sorted by bits, then method), columns the tasks' primary metrics (ppl ↓, acc ↑), as each task
declares them (``Task.primary_metric``, kept in the record).
Zero-shot suites add Table-2 columns: each task's chosen metric (acc or acc_norm, in %) and the
suite mean. Writes ``<results_dir>/tables/<model>__<profile>.{md,tex}`` and ``leaderboard.md``, and prints
the tables with rich.
"""
from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.results.records import load_records
from harness.util import REPO_ROOT

log = logging.getLogger(__name__)

REFERENCE_DIR = REPO_ROOT / "reference"  # the measurements the project publishes

@dataclass(frozen=True)
class Column:
    """One table column: a task's (or a suite member's) primary metric, with its direction and format."""

    name: str  # e.g. "wikitext2 ppl", "piqa acc", "zeroshot mean"
    lower_is_better: bool
    percent: bool

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "–"
        if self.percent:
            return f"{100 * value:.2f}"
        return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"

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


def cells_of(rec: dict[str, Any], declared: dict[str, dict[str, Any]]) -> list[tuple[Column, float]]:
    """(column, value) pairs of one record. The record's own ``primary`` (schema 2) says which metric
    each task shows and its direction; older records use the registered task's declaration. A suite
    (``zeroshot``: per-task metrics under ``tasks``) gives one column per member task, with the metric
    the suite chose for it, then ``<suite> mean`` (Table 2)."""
    out = []
    for task, m in rec["metrics"].items():
        prim = (rec.get("primary") or {}).get(task) or declared.get(task)
        if prim is None:
            continue  # a task this harness does not know and the record does not describe
        lower, pct = bool(prim["lower_is_better"]), bool(prim["percent"])
        for sub, sm in (m.get("tasks") or {}).items():
            if isinstance(sm.get(sm.get("metric")), (int, float)):
                out.append((Column(f"{sub} {sm['metric']}", lower, pct), float(sm[sm["metric"]])))
        metric = m.get("metric") if isinstance(m.get(m.get("metric")), (int, float)) else prim["metric"]
        if isinstance(m.get(metric), (int, float)):
            out.append((Column(f"{task} {metric}", lower, pct), float(m[metric])))
    return out


def row_label(rec: dict[str, Any]) -> str:
    return rec["method"]["label"]


def build_tables(records: list[dict[str, Any]], declared: dict[str, dict[str, Any]] | None = None
                 ) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (model, profile) → {"columns": [Column], "rows": [(label, bits, {Column: value})]}.

    When several records share a row label and bits (a re-run), the newest one wins.
    """
    declared = task_primaries() if declared is None else declared
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["model"]["name"], rec["profile"])].append(rec)
    tables = {}
    for key, recs in groups.items():
        recs.sort(key=lambda r: r.get("finished", ""))
        columns: list[Column] = []
        rows: dict[tuple[str, float], dict[Column, float]] = {}
        for rec in recs:
            bits = round(rec["quantization"]["avg_bits"], 3)
            cells = rows.setdefault((row_label(rec), bits), {})
            for col, value in cells_of(rec, declared):
                if col not in columns:
                    columns.append(col)
                cells[col] = value
        columns.sort(key=lambda c: (not c.lower_is_better, c.name.endswith(" mean")))  # ppl | accuracies | means
        ordered = sorted(rows.items(), key=lambda kv: (-kv[0][1], kv[0][0]))
        tables[key] = {"columns": columns, "rows": [(lbl, b, cells) for (lbl, b), cells in ordered]}
    return tables


def best_per_column(table: dict[str, Any]) -> dict[str, float]:
    best = {}
    for col in table["columns"]:
        vals = [c[col] for _, _, c in table["rows"] if col in c]
        if vals:
            best[col] = min(vals) if col.lower_is_better else max(vals)
    return best


def to_markdown(title: str, table: dict[str, Any]) -> str:
    cols = table["columns"]
    best = best_per_column(table)
    head = "| Method | Avg bits | " + " | ".join(f"{c.name} {c.arrow()}" for c in cols) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(cols) + 2)]
    for label, bits, cells in table["rows"]:
        vals = []
        for c in cols:
            s = c.fmt(cells.get(c))
            vals.append(f"**{s}**" if c in cells and cells[c] == best.get(c) else s)
        lines.append(f"| {label} | {bits:g} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


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
            s = c.fmt(cells.get(c)).replace("–", "--")
            vals.append(f"\\textbf{{{s}}}" if c in cells and cells[c] == best.get(c) else s)
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
            vals = [cells[c] for c in ppl_cols if c in cells]
            if vals and len(vals) == len(ppl_cols):
                ranked.append((sum(vals) / len(vals), label, bits))
        if ranked:
            lines += [f"## {model} · profile {profile}", "",
                      "| Rank | Method | Avg bits | Mean ppl ↓ |", "|---|---|---|---|"]
            for i, (m, label, bits) in enumerate(sorted(ranked), 1):
                lines.append(f"| {i} | {label} | {bits:g} | {m:.2f} |")
            lines.append("")
        for col in (c for c in table["columns"] if c.name.endswith(" mean")):
            acc = sorted(((cells[col], label, bits) for label, bits, cells in table["rows"] if col in cells),
                         reverse=True)
            lines += [f"## {model} · profile {profile} · {col.name.removesuffix(' mean')}", "",
                      "| Rank | Method | Avg bits | Mean accuracy ↑ |", "|---|---|---|---|"]
            lines += [f"| {i} | {label} | {bits:g} | {100 * m:.2f} |" for i, (m, label, bits) in enumerate(acc, 1)]
            lines.append("")
    return "\n".join(lines)


def render(results_dir: Path, console: Console | None = None) -> dict[str, Path]:
    """Write the tables for every record under ``results_dir``; return the files written."""
    console = console or Console()
    tables = build_tables(load_records(results_dir))
    out_dir = results_dir / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for (model, profile), table in sorted(tables.items()):
        title = f"{model} · profile {profile}"
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{model}__{profile}")
        for ext, text in (("md", to_markdown(title, table)), ("tex", to_latex(title, table))):
            path = out_dir / f"{stem}.{ext}"
            path.write_text(text, encoding="utf-8")
            written[f"{stem}.{ext}"] = path
        rt = Table(title=title)
        rt.add_column("Method")
        rt.add_column("Avg bits", justify="right")
        for c in table["columns"]:
            rt.add_column(c.name, justify="right")
        for label, bits, cells in table["rows"]:
            rt.add_row(label, f"{bits:g}", *(c.fmt(cells.get(c)) for c in table["columns"]))
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
    args = ap.parse_args(argv)
    if args.reference and args.results_dir:
        ap.error("give a results_dir or --reference, not both")
    folder = REFERENCE_DIR if args.reference else Path(args.results_dir or "results")
    for path in render(folder).values():
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
