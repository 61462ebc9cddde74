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
import io
import json
import logging
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.results import published, stats
from harness.results.records import REFERENCE_DIR, load_records, row_label, seed_of, task_protocol

log = logging.getLogger(__name__)

REFERENCE_LAYOUT = "aptq_table1"  # the paper table rendered beside the reference tables

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


def _interval_half(m: dict[str, Any], metric: str, raw: list[float] | None, is_ppl: bool, seed: int
                   ) -> float | None:
    """Recomputed from the raw results with today's method (``stats``) when the record has them, so
    every published interval is under one method; else the record's own interval, if any."""
    if raw:
        iv = stats.ppl_interval(raw, seed) if is_ppl else stats.mean_interval(raw, seed)
        return iv.half_width()
    ci = m.get(f"{metric}_ci")
    return (ci["high"] - ci["low"]) / 2 if isinstance(ci, dict) else None


def _cell(m: dict[str, Any], metric: str, seed: int) -> Cell:
    if "window_nll" in m and metric == "ppl":
        raw, kind, units = m["window_nll"], "ppl", str(m.get("tokens_sha256"))
    elif metric in (m.get("per_item") or {}):
        raw, kind, units = m["per_item"][metric], "score", str(m["per_item"]["doc_id"])
    else:
        raw, kind, units = None, "", ""
    return Cell(float(m[metric]), _interval_half(m, metric, raw, kind == "ppl", seed), raw, kind, units)


def _suite_cell(m: dict[str, Any], seed: int) -> Cell:
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
    if arrays and all(arrays):
        half = stats.suite_mean_interval(arrays, seed).half_width()
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
                out.append((Column(f"{sub} {sm['metric']}{suffix}", lower, pct),
                            _cell(sm, sm["metric"], stats.seed_for(rec["run_id"], sub, sm["metric"]))))
        metric = m.get("metric") if isinstance(m.get(m.get("metric")), (int, float)) else prim["metric"]
        if metric == "mean" and "tasks" in m:
            out.append((Column(f"{task} mean{suffix}", lower, pct, suite_mean=True),
                        _suite_cell(m, stats.seed_for(rec["run_id"], task))))
        elif isinstance(m.get(metric), (int, float)):
            parts = (rec["run_id"], task) if metric == "ppl" else (rec["run_id"], task, metric)
            seed = stats.seed_for(*parts)
            out.append((Column(f"{task} {metric}{suffix}", lower, pct), _cell(m, metric, seed)))
    return out


def _merge_seeds(per_seed: dict[str, dict[Column, Cell]]) -> dict[Column, Cell]:
    """One row's cells from its records, one per calibration seed: a single seed as it is; several
    give mean ± std over the seeds that have the column (the per-seed values kept); a column that only
    one seed has keeps that seed's cell, interval included."""
    if len(per_seed) == 1:
        return next(iter(per_seed.values()))
    out: dict[Column, Cell] = {}
    columns = {c for cells in per_seed.values() for c in cells}
    for col in columns:
        having = [cells[col] for _, cells in sorted(per_seed.items()) if col in cells]
        if len(having) == 1:
            out[col] = having[0]
            continue
        vals = [cell.value for cell in having]
        summary = {**stats.seed_summary(vals), "seeds": [s for s, cells in sorted(per_seed.items()) if col in cells]}
        out[col] = Cell(summary["mean"], None, seeds=summary)
    return out


@dataclass
class Selection:
    """Which records and columns a table shows, and in which row order (``--models``, ``--methods``,
    ``--tasks``, ``--order``): model names and method labels by glob, tasks by name."""

    models: list[str] | None = None
    methods: list[str] | None = None
    tasks: list[str] | None = None
    order: str = "bits"  # bits (bit-width groups, then label) | label | <column name> (best first)

    def keeps(self, rec: dict[str, Any]) -> bool:
        ok_model = not self.models or any(fnmatch(rec["model"]["name"], g) for g in self.models)
        label = rec["method"]["label"]
        ok_method = not self.methods or any(fnmatch(label, g) or fnmatch(row_label(rec), g) for g in self.methods)
        return ok_model and ok_method

    def keeps_column(self, col: Column) -> bool:
        return not self.tasks or col.name.split(" ", 1)[0] in self.tasks or col.name.split(" ", 1)[0].split("/")[0] \
            in self.tasks


def bit_group(bits: float) -> int:
    """The bit-width group a row belongs to (rows are compared within a group): 16, 4, 3, 2 ..."""
    return 16 if bits >= 16 else int(bits + 1e-9)


def build_tables(records: list[dict[str, Any]], declared: dict[str, dict[str, Any]] | None = None,
                 selection: Selection | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Group records by (model, profile) → {"columns": [Column], "rows": [(label, bits, {Column: Cell})],
    "meta": {(label, bits): {"family", "effective_bits", "group", "records"}}}.

    A row is (label without seed tag, nominal avg bits). Records of one row that differ in seed are
    aggregated (``_merge_seeds``); of several records with the same seed (a re-run), the newest wins.
    Rows are ordered by bit-width group (highest first), then as ``selection.order`` says.
    """
    declared = task_primaries() if declared is None else declared
    selection = selection or Selection()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if selection.keeps(rec):
            groups[(rec["model"]["name"], rec["profile"])].append(rec)
    tables = {}
    for key, recs in groups.items():
        recs.sort(key=lambda r: r.get("finished", ""))
        tags = protocol_tags(recs)
        columns: list[Column] = []
        rows: dict[tuple[str, float], dict[str, dict[Column, Cell]]] = {}
        meta: dict[tuple[str, float], dict[str, Any]] = {}
        for rec in recs:
            q = rec["quantization"]
            bits = round(q["avg_bits"], 3)
            row = (row_label(rec), bits)
            cells = rows.setdefault(row, {}).setdefault(seed_of(rec), {})
            info = meta.setdefault(row, {"family": rec["method"]["name"], "group": bit_group(bits), "records": []})
            info["effective_bits"] = round(float(q.get("avg_bits_with_overhead", bits)), 3)
            info["records"].append(rec)
            for col, cell in cells_of(rec, declared, tags):
                if not selection.keeps_column(col):
                    continue
                if col not in columns:
                    columns.append(col)
                cells[col] = cell
        columns.sort(key=lambda c: (not c.lower_is_better, c.suite_mean))  # ppl | accuracies | means
        merged = {row: _merge_seeds(per_seed) for row, per_seed in rows.items()}
        tables[key] = {"columns": columns, "meta": meta,
                       "rows": [(lbl, b, merged[(lbl, b)]) for lbl, b in order_rows(merged, columns, selection.order)]}
    return tables


def order_rows(rows: dict[tuple[str, float], dict[Column, Cell]], columns: list[Column], order: str
               ) -> list[tuple[str, float]]:
    """Bit-width groups from the highest; inside a group by bits then label, by label, or by a column."""
    by_col = next((c for c in columns if c.name == order), None)
    if order not in ("bits", "label") and by_col is None:
        names = ", ".join(c.name for c in columns)
        raise ValueError(f"--order {order!r}: use bits, label or one of the columns ({names})")

    def key(row: tuple[str, float]):
        label, bits = row
        if order == "label":
            inner: tuple = (label,)
        elif by_col is not None:
            cell = rows[row].get(by_col)
            v = cell.value if cell else float("inf") if by_col.lower_is_better else float("-inf")
            inner = (v if by_col.lower_is_better else -v, label)
        else:
            inner = (-bits, label)
        return (-bit_group(bits), *inner)

    return sorted(rows, key=key)


def mark_baseline(table: dict[str, Any], baseline: str, adjustment: str = "holm") -> str | None:
    """Mark each cell not significantly different from the ``baseline`` row's: the paired test on the
    same windows / items (``stats.paired_test``), its p adjusted over all the table's comparisons
    (``adjustment``: holm | bh | none), ≈ when the adjusted p ≥ 0.05. Returns the baseline's label,
    or None if no row matches."""
    match = [r for r in table["rows"] if r[0] == baseline] or [r for r in table["rows"] if fnmatch(r[0], baseline)]
    if not match:
        return None
    base_label, _, base = match[0]
    tested: list[tuple[Cell, float]] = []
    for label, _, cells in table["rows"]:
        if label == base_label:
            continue
        for col, cell in cells.items():
            ref = base.get(col)
            if ref is None or not cell.raw or not ref.raw or cell.units != ref.units or len(cell.raw) != len(ref.raw):
                continue
            seed = stats.seed_for(label, col.name, base_label)
            tested.append((cell, stats.paired_test(cell.raw, ref.raw, cell.paired_metric, seed).p_value))
    adjusted = stats.adjust([p for _, p in tested], adjustment)
    for (cell, _), p in zip(tested, adjusted, strict=True):
        cell.not_different = p >= stats.ALPHA
    table["comparisons"] = {"baseline": base_label, "n": len(tested), "adjustment": adjustment}
    return base_label


def best_per_group(table: dict[str, Any]) -> dict[tuple[int, Column], float]:
    """The best value of each column within each bit-width group of two rows or more (shown bold)."""
    best: dict[tuple[int, Column], float] = {}
    for group in {bit_group(b) for _, b, _ in table["rows"]}:
        rows = [c for _, b, c in table["rows"] if bit_group(b) == group]
        if len(rows) < 2:
            continue
        for col in table["columns"]:
            vals = [c[col].value for c in rows if col in c]
            if vals:
                best[(group, col)] = min(vals) if col.lower_is_better else max(vals)
    return best


def fp16_cells(table: dict[str, Any]) -> dict[Column, Cell] | None:
    """The full-precision row's cells (the Δ reference), if the table has one."""
    return next((cells for label, b, cells in table["rows"] if table["meta"][(label, b)]["family"] == "fp16"), None)


def delta_text(col: Column, cell: Cell, ref: Cell | None) -> str:
    """Δ vs FP16 in the column's unit (perplexity, or accuracy points)."""
    if ref is None or cell is ref:
        return ""
    d = cell.value - ref.value
    return f"{100 * d:+.2f}" if col.percent else (f"{d:+.2f}" if abs(d) < 1e4 else f"{d:+.2e}")


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


LEGEND = ("Figures: value ± half-width of the 95% interval (perplexity: circular block bootstrap over the "
          "windows, block length from the data; accuracy: bootstrap over items; ± – where the record has no raw "
          "results); over calibration seeds: mean ± std (n=seeds). "
          "(Δ): difference to FP16. Bold: best within its bit-width group. Bits: nominal / effective (scales, "
          "zeros, fp16 columns and masks counted).")


def table_lines(table: dict[str, Any], tex: bool) -> list[tuple[int, list[str]]]:
    """(bit group, [method, bits, effective bits, cells ...]) for every row, formatted for Markdown or LaTeX."""
    best, ref = best_per_group(table), fp16_cells(table)
    out = []
    for label, bits, cells in table["rows"]:
        info = table["meta"][(label, bits)]
        vals = [latex_escape(label) if tex else label, f"{bits:g}", f"{info['effective_bits']:g}"]
        for c in table["columns"]:
            cell = cells.get(c)
            if cell is None:
                vals.append("--" if tex else "–")
                continue
            s = cell.text(c, tex=tex)
            if best.get((info["group"], c)) == cell.value:
                s = f"\\textbf{{{s}}}" if tex else f"**{s}**"
            if d := delta_text(c, cell, ref.get(c) if ref else None):
                s += f" {{\\scriptsize ({d})}}" if tex else f" ({d})"
            vals.append(s)
        out.append((info["group"], vals))
    return out


def to_markdown(title: str, table: dict[str, Any], baseline: str | None = None) -> str:
    cols = table["columns"]
    head = "| Method | Bits | Eff. bits | " + " | ".join(f"{c.name} {c.arrow()}" for c in cols) + " |"
    lines = [f"### {title}", "", head, "|" + "---|" * (len(cols) + 3)]
    previous = None
    for group, vals in table_lines(table, tex=False):
        if previous is not None and group != previous:
            lines.append("| " + " | ".join([f"*{group}-bit*"] + [""] * (len(cols) + 2)) + " |")
        previous = group
        lines.append("| " + " | ".join(vals) + " |")
    lines += ["", LEGEND]
    if baseline:
        cmp = table.get("comparisons", {})
        lines.append(f"≈: not significantly different from {baseline} (paired test on the same windows / items, "
                     f"p ≥ 0.05 after {cmp.get('adjustment', 'holm')} adjustment over {cmp.get('n', 0)} comparisons).")
    notes = seed_notes(table)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def latex_escape(s: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", s)


def to_latex(title: str, table: dict[str, Any]) -> str:
    """A booktabs table to ``\\input`` in a paper: rows grouped by bit width (a midrule between groups)."""
    cols = table["columns"]
    out = [
        "% needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
        f"\\caption{{{latex_escape(title)}. {latex_escape(LEGEND)}}}",
        "\\begin{tabular}{l" + "r" * (len(cols) + 2) + "}", "\\toprule",
        "Method & Bits & Eff. & " + " & ".join(
            latex_escape(c.name) + (" $\\downarrow$" if c.lower_is_better else " $\\uparrow$") for c in cols
        ) + " \\\\", "\\midrule",
    ]
    previous = None
    for group, vals in table_lines(table, tex=True):
        if previous is not None and group != previous:
            out.append("\\midrule")
        previous = group
        out.append(" & ".join(vals) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def pareto_ranks(points: list[tuple[float, float]], lower_is_better: bool) -> list[int]:
    """Pareto rank of each (effective bits, value) point: 1 = on the frontier (no other point has
    fewer-or-equal bits and a better-or-equal value, one of them strictly), 2 = on the frontier once
    rank 1 is removed, and so on."""
    sign = 1 if lower_is_better else -1
    pts = [(b, sign * v) for b, v in points]
    ranks = [0] * len(pts)
    left, rank = set(range(len(pts))), 0
    while left:
        rank += 1
        front = {i for i in left if not any(pts[j][0] <= pts[i][0] and pts[j][1] <= pts[i][1] and pts[j] != pts[i]
                                            for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
    return ranks


def leaderboard(tables: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Per (model, profile) and per figure of merit (mean perplexity over the ppl columns; each suite's
    mean accuracy): rows by Pareto rank in (effective bits, figure), never one ranking across bit widths."""
    lines = ["# Leaderboard", "", "Rank = Pareto rank in (effective bits, figure): rank 1 is the frontier, no "
             "method there is beaten by one with fewer bits. Within a rank, by bits.", ""]
    for (model, profile), table in sorted(tables.items()):
        ppl_cols = [c for c in table["columns"] if c.lower_is_better]
        figures: list[tuple[str, bool, dict[tuple[str, float], float]]] = []
        if ppl_cols:
            means = {(lbl, b): sum(cells[c].value for c in ppl_cols) / len(ppl_cols)
                     for lbl, b, cells in table["rows"] if all(c in cells for c in ppl_cols)}
            figures.append(("Mean ppl ↓", True, means))
        for col in (c for c in table["columns"] if c.suite_mean):
            figures.append((f"{col.name.replace(' mean', '', 1)} mean accuracy ↑", False,
                            {(lbl, b): cells[col].value for lbl, b, cells in table["rows"] if col in cells}))
        for name, lower, values in figures:
            if not values:
                continue
            rows = list(values)
            ranks = pareto_ranks([(table["meta"][r]["effective_bits"], values[r]) for r in rows], lower)
            lines += [f"## {model} · profile {profile} · {name}", "",
                      "| Pareto rank | Method | Bits | Eff. bits | Value |", "|---|---|---|---|---|"]
            eff = {r: table["meta"][r]["effective_bits"] for r in rows}
            for rank, row in sorted(zip(ranks, rows, strict=True), key=lambda t: (t[0], eff[t[1]])):
                v = values[row]
                text = f"{v:.2f}" if lower else f"{100 * v:.2f}"
                lines.append(f"| {rank} | {row[0]} | {row[1]:g} | {eff[row]:g} | {text} |")
            lines.append("")
    return "\n".join(lines)


def console_table(title: str, table: dict[str, Any], width: int) -> Table:
    """The table for a terminal or a log: wide when it fits, else one line per (row, column) so that an
    80-column log stays readable."""
    cols = table["columns"]
    wide = 28 + 8 + 16 * len(cols) <= width
    rt = Table(title=title, expand=False)
    if wide:
        rt.add_column("Method", overflow="fold")
        rt.add_column("Bits", justify="right")
        for c in cols:
            rt.add_column(c.name, justify="right", overflow="fold")
        for label, bits, cells in table["rows"]:
            rt.add_row(label, f"{bits:g}", *(cells[c].text(c) if c in cells else "–" for c in cols))
        return rt
    rt.add_column("Method", overflow="fold", max_width=max(12, width - 46))
    rt.add_column("Bits", justify="right")
    rt.add_column("Metric", overflow="fold", max_width=16)
    rt.add_column("Value", justify="right", overflow="fold")
    for label, bits, cells in table["rows"]:
        for i, c in enumerate(cc for cc in cols if cc in cells):
            rt.add_row(label if i == 0 else "", f"{bits:g}" if i == 0 else "", f"{c.name} {c.arrow()}",
                       cells[c].text(c))
    return rt


def render(results_dir: Path, console: Console | None = None, baseline: str | None = None,
           selection: Selection | None = None, out_dir: Path | None = None, plots: bool = True,
           layout: str | None = None, wandb: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write tables (Markdown, LaTeX), plots, the leaderboard and ``index.html`` for the records under
    ``results_dir`` into ``out_dir`` (default ``results_dir/tables``); return the files written.

    ``baseline`` (a row label or glob): cells not significantly different from that row's are marked ≈.
    ``layout`` (``aptq_table1`` | ``aptq_table2``): also the paper's table, in its layout, with the
    paper's own figures beside the measured rows. ``wandb`` (the config's W&B settings): also log
    the plots to a W&B run of the sweep's group.
    """
    from harness.results import html, paper
    from harness.results import plots as plotting

    console = console or Console()
    records = load_records(results_dir)
    tables = build_tables(records, selection=selection)
    out_dir = out_dir or results_dir / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    def write(name: str, text: str) -> None:
        written[name] = out_dir / name
        written[name].write_text(text, encoding="utf-8")

    figures: dict[tuple[str, str], dict[str, Path]] = {}
    for (model, profile), table in sorted(tables.items()):
        title = f"{model} · profile {profile}"
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{model}__{profile}")
        base = mark_baseline(table, baseline) if baseline else None
        if baseline and base is None:
            log.warning("no row of %s matches --baseline %r; nothing marked", title, baseline)
        write(f"{stem}.md", to_markdown(title, table, base))
        write(f"{stem}.tex", to_latex(title, table))
        if plots:
            figures[(model, profile)] = plotting.plot_table(table, out_dir / "plots", stem, title)
            written.update({p.name: p for p in figures[(model, profile)].values()})
        console.print(console_table(title, table, console.width))
    if layout:
        for name, text in paper.render_layout(layout, tables).items():
            write(name, text)
    if wandb:
        plotting.log_to_wandb(figures, results_dir, wandb)
    write("leaderboard.md", leaderboard(tables))
    write("index.html", html.page(tables, figures))
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
                         "from it (paired test on the same windows/items, Holm-adjusted p >= 0.05) are marked ≈")
    ap.add_argument("--models", default=None, help="comma-separated model names or globs")
    ap.add_argument("--methods", default=None, help="comma-separated method labels or globs (e.g. 'APTQ*,GPTQ')")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (columns)")
    ap.add_argument("--order", default="bits", help="row order inside a bit-width group: bits | label | a column")
    ap.add_argument("--layout", default=None, choices=["aptq_table1", "aptq_table2"],
                    help="also render the paper's table in its layout, the paper's own figures beside")
    ap.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    ap.add_argument("--wandb", default=None, choices=["offline", "online"], help="also log the plots to W&B")
    ap.add_argument("--check", action="store_true",
                    help="with --reference: write nothing; exit 1 if a published figure (reference/tables, the "
                         "generated blocks of README.md and docs/) differs from what the records give")
    args = ap.parse_args(argv)
    if args.reference and args.results_dir:
        ap.error("give a results_dir or --reference, not both")
    if args.check and not args.reference:
        ap.error("--check checks the published figures: use it with --reference")
    if args.check:
        raise SystemExit(check_published())
    folder = REFERENCE_DIR if args.reference else Path(args.results_dir or "results")
    def split(v):
        return (v.split(",") if v else None)
    selection = Selection(split(args.models), split(args.methods), split(args.tasks), args.order)
    layout = args.layout or (REFERENCE_LAYOUT if args.reference else None)
    try:
        written = render(folder, baseline=args.baseline, selection=selection, plots=not args.no_plots,
                         layout=layout, wandb={"mode": args.wandb} if args.wandb else None)
    except ValueError as err:
        log.error("%s", err)
        raise SystemExit(2) from None
    for path in written.values():
        log.info("wrote %s", path)
    if args.reference:
        for page in published.refresh():
            log.info("regenerated the figures in %s", page)


PUBLISHED_TABLES = ("*.md", "*.tex")  # compared by --check (plots and the HTML page are rendered from the same tables)


def check_published() -> int:
    """0 when reference/tables and every generated block match the reference records, else 1 (and why)."""
    problems = published.check()
    with tempfile.TemporaryDirectory() as tmp:
        render(REFERENCE_DIR, console=Console(file=io.StringIO()), out_dir=Path(tmp), plots=False,
               layout=REFERENCE_LAYOUT)
        for pattern in PUBLISHED_TABLES:
            for fresh in sorted(Path(tmp).glob(pattern)):
                old = REFERENCE_DIR / "tables" / fresh.name
                if not old.is_file() or old.read_text(encoding="utf-8") != fresh.read_text(encoding="utf-8"):
                    problems.append(f"reference/tables/{fresh.name} differs from the records")
    for p in problems:
        log.error("%s", p)
    if problems:
        log.error("run `python -m harness.report --reference` to regenerate, and commit the result")
        return 1
    log.info("every published figure matches the reference records")
    return 0


if __name__ == "__main__":
    main()
