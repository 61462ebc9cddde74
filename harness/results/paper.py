"""The APTQ paper's Tables 1 and 2 in their layout: the measured rows in the paper's order, and the
paper's own LLaMA-7B/13B figures beside them (``reference/paper/aptq_dac2024.json``, transcribed
from the slides in ``shared/reference/``), labelled as the paper's and never mixed into a ranking.

A measured row fills a paper row when its method family and nominal bits match (FP16 → fp16 at 16,
GPTQ → gptq at 4, OWQ → owq at 4.01, PB-LLM-20% → pbllm at 3.4, APTQ-75% → aptq at 3.5, ...);
several measured rows can fill one paper row (e.g. per-channel and g64), each under its own label.
"""
from __future__ import annotations

import json
import re
from typing import Any

from harness.results.formats import md_table
from harness.results.tables import Table
from harness.util import REPO_ROOT

PAPER_FILE = REPO_ROOT / "reference" / "paper" / "aptq_dac2024.json"
#: paper row → (method family, nominal bits) of the measured rows that reproduce it
ROWS = {
    "aptq_table1": [("FP16", "fp16", 16), ("GPTQ", "gptq", 4), ("OWQ", "owq", 4.01), ("PB-LLM-20%", "pbllm", 3.4),
                    ("APTQ", "aptq", 4), ("APTQ-75%", "aptq", 3.5), ("APTQ-50%", "aptq", 3)],
    "aptq_table2": [("FP16", "fp16", 16), ("RTN", "rtn", 4), ("GPTQ", "gptq", 4), ("PB-LLM 30%", "pbllm", 4.1),
                    ("PB-LLM 10%", "pbllm", 2.7), ("APTQ", "aptq", 4), ("APTQ-90%", "aptq", 3.8),
                    ("APTQ-80%", "aptq", 3.6), ("APTQ-75%", "aptq", 3.5), ("APTQ-70%", "aptq", 3.4),
                    ("APTQ-60%", "aptq", 3.2), ("APTQ-50%", "aptq", 3)],
}


def paper_figures() -> dict[str, Any]:
    return json.loads(PAPER_FILE.read_text(encoding="utf-8"))


def measured_rows(layout: str, table: Table) -> list[tuple[str, str, float, dict]]:
    """(paper row, measured label, bits, cells) in the paper's order."""
    out = []
    for name, family, bits in ROWS[layout]:
        for label, b, cells in table.rows:
            if table.meta[(label, b)].family == family and abs(b - bits) < 1e-6:
                out.append((name, label, b, cells))
    return out


def paper_block(layout: str) -> list[str]:
    data = paper_figures()[layout]
    cols = data["columns"]
    models = data.get("models") or {data["model"]: data["rows"]}
    lines = [f"The paper's own figures ({data['source']}); a different model family and protocol, shown for "
             "reference only: not measured here and never ranked.", ""]
    for model, rows in models.items():
        body = [[name, f"{bits:g}", *(f"{v:g}" for v in vals)] for name, bits, vals in rows]
        lines += [*md_table([f"Paper: {model}", "Avg bit", *cols], body), ""]
    return lines


def render_layout(layout: str, tables: dict[tuple[str, str], Table]) -> dict[str, str]:
    """``{file name: Markdown}``: one file per (model, profile) table in the paper's layout."""
    cols_wanted = paper_figures()[layout]["columns"]
    out = {}
    for (model, profile), table in sorted(tables.items()):
        cols = [c for name in cols_wanted for c in table.columns if c.name == name]
        if not cols:
            continue
        title = f"{layout.replace('aptq_table', 'APTQ Table ')} — measured: {model} · profile {profile}"
        body = [[name, label, f"{bits:g}", *(cells[c].text(c) if c in cells else "–" for c in cols)]
                for name, label, bits, cells in measured_rows(layout, table)]
        header = ["Method (paper row)", "Measured as", "Avg bit", *(f"{c.name} {c.arrow()}" for c in cols)]
        lines = [f"### {title}", "", *md_table(header, body), "", *paper_block(layout)]
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{model}__{profile}")
        out[f"{stem}__{layout}.md"] = "\n".join(lines) + "\n"
    return out
