"""Paper-style tables from the run records: ``python -m harness.report [results_dir]``.

One table per (model, profile): tables never mix profiles or models. Rows are ``method @ avg
bits`` (sorted by bits, then method), columns the tasks' primary metrics (ppl ↓, acc ↑).
Zero-shot suites add Table-2 columns: each task's chosen metric (acc or acc_norm, in %) and the
suite mean. Writes ``<results_dir>/tables/<model>__<profile>.{md,tex}`` and ``leaderboard.md``, and prints
the tables with rich.
"""
from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.results.records import load_records

log = logging.getLogger(__name__)

PRIMARY = {"ppl": True, "mean": False, "acc_norm": False, "acc": False}  # metric -> lower is better


def primary_metric(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The value a table shows: the metric the task names (``"metric": "acc_norm"``), else the first
    of ``PRIMARY`` present."""
    chosen = metrics.get("metric")
    for key in ([chosen] if isinstance(chosen, str) else []) + list(PRIMARY):
        if isinstance(metrics.get(key), (int, float)):
            return key, float(metrics[key])
    return None


def cells_of(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, float]]:
    """(column, value) pairs of one record's metrics. A suite (``zeroshot``: per-task metrics under
    ``tasks`` and their ``mean``) gives one column per task, then ``<suite> mean`` (Table 2)."""
    out = []
    for task, m in metrics.items():
        for sub, sm in (m.get("tasks") or {}).items():
            if (pm := primary_metric(sm)) is not None:
                out.append((f"{sub} {pm[0]}", pm[1]))
        if (pm := primary_metric(m)) is not None:
            out.append((f"{task} {pm[0]}", pm[1]))
    return out


def row_label(rec: dict[str, Any]) -> str:
    return rec["method"]["label"]


def build_tables(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (model, profile) → {"columns": [...], "rows": [(label, bits, {col: value})]}.

    When several records share a row label and bits (a re-run), the newest one wins.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[(rec["model"]["name"], rec["profile"])].append(rec)
    tables = {}
    for key, recs in groups.items():
        recs.sort(key=lambda r: r.get("finished", ""))
        columns: list[str] = []
        rows: dict[tuple[str, float], dict[str, float]] = {}
        for rec in recs:
            bits = round(rec["quantization"]["avg_bits"], 3)
            cells = rows.setdefault((row_label(rec), bits), {})
            for col, value in cells_of(rec["metrics"]):
                if col not in columns:
                    columns.append(col)
                cells[col] = value
        columns.sort(key=lambda c: (not c.endswith(" ppl"), c.endswith(" mean")))  # ppl | accuracies | means
        ordered = sorted(rows.items(), key=lambda kv: (-kv[0][1], kv[0][0]))
        tables[key] = {"columns": columns, "rows": [(lbl, b, cells) for (lbl, b), cells in ordered]}
    return tables


def fmt(col: str, value: float | None) -> str:
    if value is None:
        return "–"
    if col.endswith(" ppl"):
        return f"{value:.2f}" if value < 1e4 else f"{value:.2e}"
    return f"{100 * value:.2f}"


def best_per_column(table: dict[str, Any]) -> dict[str, float]:
    best = {}
    for col in table["columns"]:
        vals = [c[col] for _, _, c in table["rows"] if col in c]
        if vals:
            best[col] = min(vals) if col.endswith(" ppl") else max(vals)
    return best


def to_markdown(title: str, table: dict[str, Any]) -> str:
    cols = table["columns"]
    best = best_per_column(table)
    head = "| Method | Avg bits | " + " | ".join(c + (" ↓" if c.endswith("ppl") else " ↑") for c in cols) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(cols) + 2)]
    for label, bits, cells in table["rows"]:
        vals = []
        for c in cols:
            s = fmt(c, cells.get(c))
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
            latex_escape(c) + (" $\\downarrow$" if c.endswith("ppl") else " $\\uparrow$") for c in cols
        ) + " \\\\", "\\midrule",
    ]
    for label, bits, cells in table["rows"]:
        vals = []
        for c in cols:
            s = fmt(c, cells.get(c)).replace("–", "--")
            vals.append(f"\\textbf{{{s}}}" if c in cells and cells[c] == best.get(c) else s)
        out.append(f"{latex_escape(label)} & {bits:g} & " + " & ".join(vals) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def leaderboard(tables: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Per (model, profile): rows ranked by mean perplexity over the ppl columns, and by each
    zero-shot suite's mean accuracy."""
    lines = ["# Leaderboard", ""]
    for (model, profile), table in sorted(tables.items()):
        ppl_cols = [c for c in table["columns"] if c.endswith(" ppl")]
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
        for col in (c for c in table["columns"] if c.endswith(" mean")):
            acc = sorted(((cells[col], label, bits) for label, bits, cells in table["rows"] if col in cells),
                         reverse=True)
            lines += [f"## {model} · profile {profile} · {col.removesuffix(' mean')}", "",
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
            rt.add_column(c, justify="right")
        for label, bits, cells in table["rows"]:
            rt.add_row(label, f"{bits:g}", *(fmt(c, cells.get(c)) for c in table["columns"]))
        console.print(rt)
    lb = out_dir / "leaderboard.md"
    lb.write_text(leaderboard(tables), encoding="utf-8")
    written["leaderboard.md"] = lb
    if not tables:
        console.print(f"no complete records under {results_dir / 'records'}")
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", nargs="?", default="results", help="folder holding records/ (default: results)")
    args = ap.parse_args(argv)
    for path in render(Path(args.results_dir)).values():
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
