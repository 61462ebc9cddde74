"""``index.html``: the leaderboard as one self-contained static page (no server, no network).

Per (model, profile): a table that sorts by any column (click its header) and filters by method
(type in the box), and the quality-vs-bits plots, embedded as PNG data. The page needs nothing but
a browser. A URL fragment ``#sort=<column index>&dir=asc|desc&filter=<text>`` applies a sort and a
filter on load, which lets a headless browser check the sorting (``scripts/check_html.py``).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from harness.results.formats import LEGEND
from harness.results.tables import Table, best_per_group

SCRIPT = r"""
function sortTable(t, col, dir) {
  const body = t.tBodies[0], rows = Array.from(body.rows);
  const key = r => { const c = r.cells[col]; const v = c.dataset.v;
                     return v === undefined || v === "" ? null : (isNaN(+v) ? v : +v); };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null) return 1; if (y === null) return -1;
    const s = x < y ? -1 : x > y ? 1 : 0; return dir === "asc" ? s : -s; });
  rows.forEach(r => body.appendChild(r));
  Array.from(t.tHead.rows[0].cells).forEach((h, i) => h.dataset.sort = i === col ? dir : "");
}
function filterTable(t, text) {
  const q = text.toLowerCase();
  Array.from(t.tBodies[0].rows).forEach(r => r.style.display =
    r.cells[0].textContent.toLowerCase().includes(q) ? "" : "none");
}
document.querySelectorAll("table.board").forEach(t => {
  Array.from(t.tHead.rows[0].cells).forEach((h, i) => h.addEventListener("click", () =>
    sortTable(t, i, h.dataset.sort === "asc" ? "desc" : "asc")));
  const box = document.getElementById(t.id + "-filter");
  box.addEventListener("input", () => filterTable(t, box.value));
});
const frag = new URLSearchParams(location.hash.slice(1));
document.querySelectorAll("table.board").forEach(t => {
  if (frag.has("sort")) sortTable(t, +frag.get("sort"), frag.get("dir") || "asc");
  if (frag.has("filter")) { document.getElementById(t.id + "-filter").value = frag.get("filter");
                            filterTable(t, frag.get("filter")); }
});
document.body.dataset.ready = "1";
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #111; }
table.board { border-collapse: collapse; font-size: 14px; }
table.board th, table.board td { border-bottom: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.board th:first-child, table.board td:first-child { text-align: left; }
table.board th { cursor: pointer; background: #f2f2f2; position: sticky; top: 0; }
table.board th[data-sort="asc"]::after { content: " ▲"; } table.board th[data-sort="desc"]::after { content: " ▼"; }
td.best { font-weight: bold; } .plots img { width: 31%; min-width: 300px; margin: 4px; border: 1px solid #ddd; }
input.filter { margin: 0.5em 0; padding: 4px; width: 20em; } .legend { color: #555; font-size: 12px; max-width: 60em; }
"""


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def section(i: int, title: str, table: Table, figures: dict[str, Path]) -> str:

    tid = f"board{i}"
    best = best_per_group(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["Method", "Bits", "Eff. bits", *(f"{c.name} {c.arrow()}" for c in table.columns)])
    rows = []
    for label, bits, cells in table.rows:
        meta = table.meta[(label, bits)]
        tds = [f'<td data-v="{html.escape(label)}">{html.escape(label)}</td>', f'<td data-v="{bits}">{bits:g}</td>',
               f'<td data-v="{meta.effective_bits}">{meta.effective_bits:g}</td>']
        for c in table.columns:
            cell = cells.get(c)
            if cell is None:
                tds.append('<td data-v="">–</td>')
                continue
            cls = ' class="best"' if best.get((meta.group, c)) == cell.value else ""
            tds.append(f'<td data-v="{cell.value}"{cls}>{html.escape(cell.text(c))}</td>')
        rows.append(f"<tr data-family=\"{html.escape(meta.family)}\">{''.join(tds)}</tr>")
    imgs = "".join(f'<img alt="{html.escape(k)}" src="{_embed(p)}">' for k, p in figures.items() if k.endswith("png"))
    return (f"<section><h2>{html.escape(title)}</h2>"
            f'<input class="filter" id="{tid}-filter" placeholder="filter methods, e.g. APTQ">'
            f'<table class="board" id="{tid}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="legend">{html.escape(LEGEND)} Click a header to sort.</p>'
            f'<div class="plots">{imgs}</div></section>')


def page(tables: dict[tuple[str, str], dict[str, Any]], figures: dict[tuple[str, str], dict[str, Path]]) -> str:
    parts = [section(i, f"{model} · profile {profile}", table, figures.get((model, profile), {}))
             for i, ((model, profile), table) in enumerate(sorted(tables.items()))]
    body = "".join(parts) or "<p>No complete records.</p>"
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>quant-harness leaderboard"
            f"</title><style>{STYLE}</style></head><body><h1>quant-harness leaderboard</h1>{body}"
            f"<script>{SCRIPT}</script></body></html>\n")
