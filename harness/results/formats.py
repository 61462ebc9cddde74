"""Text forms of a table: Markdown, booktabs LaTeX, the leaderboard, the console (rich).

One Markdown emitter (``md_table``) serves the tables, the leaderboard, the paper layout and the
published blocks (``harness.results.published``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from rich.table import Table as RichTable

from harness.results.tables import Cell, Column, Table, best_per_group, fp16_cells, pareto_ranks

LATEX_SPECIALS = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
                  "^": r"\textasciicircum{}", "_": r"\_", "~": r"\textasciitilde{}", "%": r"\%"}


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub Markdown table, unpadded (cells as given; ``|`` inside a cell escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]

def delta_text(col: Column, cell: Cell, ref: Cell | None) -> str:
    """Δ vs FP16 in the column's unit (perplexity, or accuracy points)."""
    if ref is None or cell is ref:
        return ""
    d = cell.value - ref.value
    return f"{100 * d:+.2f}" if col.percent else (f"{d:+.2f}" if abs(d) < 1e4 else f"{d:+.2e}")


def seed_notes(table: Table) -> list[str]:
    """The per-seed values behind each aggregated row (Markdown bullet lines)."""
    out = []
    for label, _, cells in table.rows:
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


def table_lines(table: Table, tex: bool) -> list[tuple[int, list[str]]]:
    """(bit group, [method, bits, effective bits, cells ...]) for every row, formatted for Markdown or LaTeX."""
    best, ref = best_per_group(table), fp16_cells(table)
    out = []
    for label, bits, cells in table.rows:
        info = table.meta[(label, bits)]
        vals = [latex_escape(label) if tex else label, f"{bits:g}", f"{info.effective_bits:g}"]
        for c in table.columns:
            cell = cells.get(c)
            if cell is None:
                vals.append("--" if tex else "–")
                continue
            s = cell.text(c, tex=tex)
            if best.get((info.group, c)) == cell.value:
                s = f"\\textbf{{{s}}}" if tex else f"**{s}**"
            if d := delta_text(c, cell, ref.get(c) if ref else None):
                s += f" {{\\scriptsize ({d})}}" if tex else f" ({d})"
            vals.append(s)
        out.append((info.group, vals))
    return out


def to_markdown(title: str, table: Table, baseline: str | None = None) -> str:
    cols = table.columns
    rows: list[list[str]] = []
    previous = None
    for group, vals in table_lines(table, tex=False):
        if previous is not None and group != previous:
            rows.append([f"*{group}-bit*"] + [""] * (len(cols) + 2))
        previous = group
        rows.append(vals)
    header = ["Method", "Bits", "Eff. bits", *(f"{c.name} {c.arrow()}" for c in cols)]
    lines = [f"### {title}", "", *md_table(header, rows), "", LEGEND]
    if baseline:
        cmp = table.comparisons
        lines.append(f"≈: not significantly different from {baseline} (paired test on the same windows / items, "
                     f"p ≥ 0.05 after {cmp.get('adjustment', 'holm')} adjustment over {cmp.get('n', 0)} comparisons).")
    notes = seed_notes(table)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def latex_escape(s: str) -> str:
    """Every LaTeX special character made literal (``\\ { } $ & # ^ _ ~ %``)."""
    return re.sub(r"[\\{}$&#^_~%]", lambda m: LATEX_SPECIALS[m.group()], s)


def to_latex(title: str, table: Table) -> str:
    """A booktabs table to ``\\input`` in a paper: rows grouped by bit width (a midrule between groups)."""
    cols = table.columns
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


def leaderboard(tables: dict[tuple[str, str], Table]) -> str:
    """Per (model, profile) and per figure of merit (mean perplexity over the ppl columns; each suite's
    mean accuracy): rows by Pareto rank in (effective bits, figure), never one ranking across bit widths."""
    lines = ["# Leaderboard", "", "Rank = Pareto rank in (effective bits, figure): rank 1 is the frontier, no "
             "method there is beaten by one with fewer bits. Within a rank, by bits.", ""]
    for (model, profile), table in sorted(tables.items()):
        ppl_cols = [c for c in table.columns if c.lower_is_better]
        figures: list[tuple[str, bool, dict[tuple[str, float], float]]] = []
        if ppl_cols:
            means = {(lbl, b): sum(cells[c].value for c in ppl_cols) / len(ppl_cols)
                     for lbl, b, cells in table.rows if all(c in cells for c in ppl_cols)}
            figures.append(("Mean ppl ↓", True, means))
        for col in (c for c in table.columns if c.suite_mean):
            figures.append((f"{col.name.replace(' mean', '', 1)} mean accuracy ↑", False,
                            {(lbl, b): cells[col].value for lbl, b, cells in table.rows if col in cells}))
        for name, lower, values in figures:
            if not values:
                continue
            rows = list(values)
            ranks = pareto_ranks([(table.meta[r].effective_bits, values[r]) for r in rows], lower)
            eff = {r: table.meta[r].effective_bits for r in rows}
            body = [[str(rank), row[0], f"{row[1]:g}", f"{eff[row]:g}",
                     f"{values[row]:.2f}" if lower else f"{100 * values[row]:.2f}"]
                    for rank, row in sorted(zip(ranks, rows, strict=True), key=lambda t: (t[0], eff[t[1]]))]
            lines += [f"## {model} · profile {profile} · {name}", "",
                      *md_table(["Pareto rank", "Method", "Bits", "Eff. bits", "Value"], body), ""]
    return "\n".join(lines)


def console_table(title: str, table: Table, width: int) -> RichTable:
    """The table for a terminal or a log: wide when it fits, else one line per (row, column) so that an
    80-column log stays readable."""
    cols = table.columns
    wide = 28 + 8 + 16 * len(cols) <= width
    rt = RichTable(title=title, expand=False)
    if wide:
        rt.add_column("Method", overflow="fold")
        rt.add_column("Bits", justify="right")
        for c in cols:
            rt.add_column(c.name, justify="right", overflow="fold")
        for label, bits, cells in table.rows:
            rt.add_row(label, f"{bits:g}", *(cells[c].text(c) if c in cells else "–" for c in cols))
        return rt
    rt.add_column("Method", overflow="fold", max_width=max(12, width - 46))
    rt.add_column("Bits", justify="right")
    rt.add_column("Metric", overflow="fold", max_width=16)
    rt.add_column("Value", justify="right", overflow="fold")
    for label, bits, cells in table.rows:
        for i, c in enumerate(cc for cc in cols if cc in cells):
            rt.add_row(label if i == 0 else "", f"{bits:g}" if i == 0 else "", f"{c.name} {c.arrow()}",
                       cells[c].text(c))
    return rt


