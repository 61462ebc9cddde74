"""Published figures, generated from the reference records: no figure in the README or docs is typed.

A Markdown page holds generated blocks between marker comments::

    <!-- generated:NAME (python -m harness.report --reference) -->
    | ... the table ... |
    <!-- /generated:NAME -->

``docs/published.yaml`` describes every block (which records, which tasks, which comparisons; records
are named with ``harness.results.compare``'s selectors). ``python -m harness.report --reference``
rewrites every block from ``reference/records``; ``--check`` rewrites nothing and exits non-zero,
naming each block whose text differs from what the records give (CI runs it). Block kinds:

- ``rows``: one row per method (one record, or several calibration seeds: mean ± std and the
  per-seed values), per task ``value ± h`` (``stats.ppl_interval`` / ``mean_interval``, seeded by the
  run id).
- ``paired``: A − B per task on the same windows / items, ``[95% CI]`` and p, with every p of the
  block Holm-adjusted (the adjusted p is shown; ``✓`` marks the differences that survive).
- ``zeroshot``: per-task accuracies of suite records and, for each pair, the paired difference with
  its p, the exact McNemar p and the Holm-adjusted p.
- ``allocation``: allocation runs at one budget against the random draws (``harness.results.allocation``).
- ``intervals``: the record's stored (iid) interval beside today's block-bootstrap one, and the block length.
"""
from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError
from harness.results import allocation, stats
from harness.results.compare import compare, resolve
from harness.results.formats import md_table
from harness.results.records import REFERENCE_DIR, load_records
from harness.results.tables import bytes_per_weight, fmt_half
from harness.util import REPO_ROOT

SPEC_FILE = REPO_ROOT / "docs" / "published.yaml"
PAGES = ("README.md", "docs/*.md")
BLOCK = re.compile(r"(?P<open><!-- generated:(?P<name>[\w.-]+)[^>]*-->\n)(?P<body>.*?)"
                   r"(?P<close><!-- /generated:(?P=name) -->)", re.DOTALL)
TASK_NAMES = {"wikitext2": "WikiText-2", "c4": "C4", "piqa": "PIQA", "hellaswag": "HellaSwag", "arc_easy": "ARC-E",
              "arc_challenge": "ARC-C", "winogrande": "WinoGrande", "mean": "mean"}


def fmt_value(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.2e}"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def fmt_signed(v: float) -> str:
    return f"{v:+.2f}".replace("-", "−")


def md(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(md_table(header, rows)) + "\n"


@dataclass
class Context:
    """The reference records, loaded once, and a selector → record lookup."""

    folder: Path
    records: list[dict[str, Any]]
    memo: dict[str, Any] = field(default_factory=dict)

    def get(self, selector: str) -> dict[str, Any]:
        return resolve(selector, self.folder, self.records)

    def ppl(self, rec: dict[str, Any], task: str) -> tuple[float, stats.Interval | None]:
        """A record's perplexity on ``task`` and its interval (computed once per record and task:
        several blocks show the same records)."""
        key = ("ppl", rec["run_id"], task)
        if key not in self.memo:
            m = rec["metrics"][task]
            raw = m.get("window_nll")
            self.memo[key] = (float(m["ppl"]),
                              stats.ppl_interval(raw, stats.seed_for(rec["run_id"], task)) if raw else None)
        return self.memo[key]

    def versus_random(self, match: str) -> list[dict[str, Any]]:
        """``allocation.versus_random`` of the records whose label contains ``match`` (computed once)."""
        if match not in self.memo:
            recs = allocation.newest([r for r in self.records if match in r["method"]["label"]])
            self.memo[match] = (recs, allocation.versus_random(recs))
        return self.memo[match]


def _bits(rec: dict[str, Any]) -> str:
    q = rec["quantization"]
    return f"{round(q['avg_bits'], 2):g} / {q.get('avg_bits_with_overhead', q['avg_bits']):.2f}"


def _bytes(rec: dict[str, Any]) -> str:
    return f"{bytes_per_weight(rec['quantization']):.3f}"


def _quantize_time(rec: dict[str, Any], ref: dict[str, Any]) -> str:
    t, t_ref = rec.get("timings_s", {}).get("quantize"), ref.get("timings_s", {}).get("quantize")
    if t is None or not t_ref:
        return "–"
    return f"{t:.0f} s ({t / t_ref:.2f}×)"


def rows_block(spec: dict[str, Any], ctx: Context) -> str:
    """``bytes: true`` adds the stored bytes per weight (``tables.bytes_per_weight``) after the bits;
    ``time_vs: <selector>`` adds the quantization time and its ratio to that record's (runs on one machine
    in one session, e.g. one multirun, or the ratio means little)."""
    tasks = spec.get("tasks", ["wikitext2", "c4"])
    with_bytes = bool(spec.get("bytes", False))
    time_ref = ctx.get(spec["time_vs"]) if spec.get("time_vs") else None
    out = []
    for row in spec["rows"]:
        recs = [ctx.get(s) for s in _as_list(row["select"])]
        cells = []
        for t in tasks:
            vals = [ctx.ppl(r, t) for r in recs if t in r["metrics"]]
            if not vals:
                cells.append("–")
            elif len(vals) == 1:
                v, iv = vals[0]
                cells.append(f"{fmt_value(v)} ± {fmt_half(iv.half_width()) if iv else '–'}")
            else:
                s = stats.seed_summary([v for v, _ in vals])
                cells.append(f"{fmt_value(s['mean'])} ± {fmt_half(s['std'])} "
                             f"({' / '.join(fmt_value(v) for v, _ in vals)})")
        out.append([row["name"], _bits(recs[0]), *([_bytes(recs[0])] if with_bytes else []), *cells,
                    *([_quantize_time(recs[0], time_ref)] if time_ref else [])])
    return md(["method", "bits / effective", *(["bytes / weight"] if with_bytes else []),
               *(TASK_NAMES.get(t, t) for t in tasks), *([spec.get("time_label", "quantize time (× ref)")]
                                                          if time_ref else [])], out)


def _paired_rows(spec: dict[str, Any], ctx: Context, tasks: list[str]) -> list[tuple[str, dict[str, dict]]]:
    out = []
    for row in spec["rows"]:
        a, b = ctx.get(row["a"]), ctx.get(row["b"])
        res = {r["task"]: r for r in compare(a, b, tasks)}
        out.append((row["name"], res))
    return out


def paired_block(spec: dict[str, Any], ctx: Context) -> str:
    tasks = spec.get("tasks", ["wikitext2", "c4"])
    results = _paired_rows(spec, ctx, tasks)
    flat = [res[t] for _, res in results for t in tasks if t in res]
    adjusted = stats.adjust([r["p_value"] for r in flat], spec.get("adjust", "holm"))
    for r, p in zip(flat, adjusted, strict=True):
        r["p_adj"] = p
    rows = []
    for name, res in results:
        cells = []
        for t in tasks:
            r = res.get(t)
            if r is None:
                cells.append("–")
                continue
            ci = r["ci"]
            mark = " ✓" if r["p_adj"] < stats.ALPHA else ""
            cells.append(f"{fmt_signed(r['diff'])} [{fmt_signed(ci['low'])}, {fmt_signed(ci['high'])}], "
                         f"p {fmt_p(r['p_value'])}, Holm {fmt_p(r['p_adj'])}{mark}")
        rows.append([name, *cells])
    header = ["A − B", *(f"{TASK_NAMES.get(t, t)} [95% CI], p, Holm p" for t in tasks)]
    return md(header, rows) + (f"\n{len(flat)} tests in this table, Holm-adjusted together; ✓: the difference "
                               "survives (adjusted p < 0.05).\n")


def zeroshot_block(spec: dict[str, Any], ctx: Context) -> str:
    suite = spec.get("suite", "zeroshot")
    rows = []
    members: list[str] = []
    for row in spec["rows"]:
        rec = ctx.get(row["select"])
        sm = rec["metrics"][suite]
        members = members or list(sm["tasks"])
        cells = []
        for t in members:
            m = sm["tasks"][t]
            metric = m["metric"]
            items = (m.get("per_item") or {}).get(metric)
            iv = stats.mean_interval(items, stats.seed_for(rec["run_id"], t, metric)) if items else None
            cells.append(f"{100 * m[metric]:.1f} ± {fmt_half(100 * iv.half_width()) if iv else '–'}")
        chosen = [sm["tasks"][t]["per_item"][sm["tasks"][t]["metric"]] for t in members]
        iv = stats.suite_mean_interval(chosen, stats.seed_for(rec["run_id"], suite))
        rows.append([row["name"], *cells, f"{100 * sm['mean']:.2f} ± {fmt_half(100 * iv.half_width())}"])
    for pair in spec.get("pairs", []):
        a, b = ctx.get(pair["a"]), ctx.get(pair["b"])
        res = {r["task"].split("/")[-1]: r for r in compare(a, b, [suite])}
        order = [*members, "mean"]
        adjusted = dict(zip(order, stats.adjust([res[t]["p_value"] for t in order], "holm"), strict=True))
        cells = []
        for t in order:
            r, ci = res[t], res[t]["ci"]
            mc = f", McNemar {fmt_p(r['mcnemar_p'])}" if r.get("mcnemar_p") is not None else ""
            lo, hi = fmt_signed(100 * ci["low"]), fmt_signed(100 * ci["high"])
            cells.append(f"{fmt_signed(100 * r['diff'])} [{lo}, {hi}], p {fmt_p(r['p_value'])}{mc}, "
                         f"Holm {fmt_p(adjusted[t])}")
        rows.append([pair["name"], *cells])
    return md(["method", *(TASK_NAMES.get(t, t) for t in members), "mean"], rows)


def allocation_block(spec: dict[str, Any], ctx: Context) -> str:
    want = spec["budget"]
    recs, found = ctx.versus_random(spec.get("match", ""))
    tests = {(t["run_id"], t["task"]): t for t in found}
    runs = sorted((r for r in recs if r["method"]["name"] == "aptq" and allocation.budget(r) == want
                   and not allocation.is_random(r) and allocation.window_nll(r, "wikitext2")),
                  key=lambda r: ctx.ppl(r, "wikitext2")[0] if "wikitext2" in r["metrics"] else math.inf)
    rows = []
    for r in runs:
        cells, vs = [], []
        for t in allocation.TASKS:
            v, iv = ctx.ppl(r, t)
            cells.append(f"{fmt_value(v)} ± {fmt_half(iv.half_width()) if iv else '–'}")
            x = tests.get((r["run_id"], t))
            vs.append("–" if x is None else versus_text(x))
        rows.append([allocation.name(r), *cells, *vs])
    draws = [r for r in recs if allocation.is_random(r) and allocation.budget(r) == want]
    if draws:
        cells = []
        for t in allocation.TASKS:
            vals = [float(d["metrics"][t]["ppl"]) for d in draws]
            geo = math.exp(sum(map(math.log, vals)) / len(vals))
            cells.append(f"{fmt_value(geo)} (geometric mean; {fmt_value(min(vals))}–{fmt_value(max(vals))})")
        rows.append([f"random draws (k = {len(draws)})", *cells, "", ""])
    header = ["allocation", "WikiText-2", "C4", "WikiText-2: one more draw's 95% PI, p, rank p, single draws beaten",
              "C4: the same"]
    n = len(tests)
    return md(header, rows) + (f"\nPI: prediction interval of one more random draw (log scale); p: is the run outside "
                               f"it (t, k − 1 df); rank p: exact, one-sided, at least 1/(k + 1); Holm over the "
                               f"{n} tests against random draws made here (every budget).\n")


def versus_text(x: dict[str, Any]) -> str:
    pi = f"[{fmt_value(x['prediction']['low'])}, {fmt_value(x['prediction']['high'])}]"
    return (f"{pi}, p {fmt_p(x['p_value'])} (Holm {fmt_p(x['p_value_holm'])}), rank p {fmt_p(x['rank_p'])} "
            f"(Holm {fmt_p(x['rank_p_holm'])}), beats {x['beats']} / {x['k']}")


def intervals_block(spec: dict[str, Any], ctx: Context) -> str:
    tasks = spec.get("tasks", ["wikitext2", "c4"])
    rows = []
    for row in spec["rows"]:
        rec = ctx.get(row["select"])
        cells = []
        for t in tasks:
            m = rec["metrics"][t]
            old = m.get("ppl_ci") or {}
            v, iv = ctx.ppl(rec, t)
            was = (old["high"] - old["low"]) / 2 if old else math.nan
            cells.append(f"{fmt_value(v)}: ± {fmt_half(was)} → ± {fmt_half(iv.half_width())} (b = {iv.block}, "
                         f"×{iv.half_width() / was:.1f})")
        rows.append([row["name"], *cells])
    header = [f"{TASK_NAMES.get(t, t)}: iid → block bootstrap (block length, ratio)" for t in tasks]
    return md(["method", *header], rows)


def sensitivity_block(spec: dict[str, Any], ctx: Context) -> str:
    """Rank correlation of each allocation criterion with the measured ΔNLL (``benchmarks/sensitivity_truth.py``)."""
    data = json.loads((REPO_ROOT / spec["file"]).read_text(encoding="utf-8"))
    types = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    rows = []
    for crit, corr in data["correlation_with_dnll"].items():
        a = corr["all"]
        within = " ".join(fmt_signed(corr[t]["spearman"]) for t in types if t in corr)
        rows.append([crit, f"{fmt_signed(a['spearman'])} ({a['spearman_p']:.2g})",
                     f"{fmt_signed(a['kendall'])} ({a['kendall_p']:.2g})", within])
    return md(["criterion", f"Spearman ρ (p), n = {next(iter(data['correlation_with_dnll'].values()))['all']['n']}",
               "Kendall τ (p)", "ρ within types (q k v o gate up down)"], rows)


def coverage_block(spec: dict[str, Any], ctx: Context) -> str:
    """The AR(1) coverage table written by ``benchmarks/interval_check.py``."""
    data = json.loads((REPO_ROOT / spec["file"]).read_text(encoding="utf-8"))
    rows = [[f"{c['rho']:g}", str(c["n"]), f"{c['iid']:.3f}", f"{c['block']:.3f}", f"{c['median_block']:g}",
             f"{c['width_ratio']:.2f}"] for c in data["cells"]]
    return md(["ρ", "windows", "iid bootstrap", "block bootstrap (this harness)", "median block length",
               "width, block / iid"], rows) + (f"\n{data['series']} simulated series per cell, {data['n_resamples']} "
                                               f"resamples each; `{data['command']}`.\n")


def window_layout_block(spec: dict[str, Any], ctx: Context) -> str:
    """Consecutive vs spread windows, from ``benchmarks/window_layout.py``'s JSON."""
    data = json.loads((REPO_ROOT / spec["file"]).read_text(encoding="utf-8"))
    rows = [[x["layout"], str(x["windows"]), f"{fmt_value(x['ppl'])} ± {fmt_half(x['half_width'])}",
             f"{x['lag1']:+.2f} / {x['lag2']:+.2f} / {x['lag3']:+.2f}", str(x["block"])] for x in data["layouts"]]
    return md(["WikiText-2 windows (FP16)", "windows", "ppl ± h", "autocorrelation, lag 1 / 2 / 3", "block length"],
              rows) + f"\n`{data['command']}`: {data['seqlen']}-token windows, every window scored once.\n"


KINDS: dict[str, Callable[[dict[str, Any], Context], str]] = {
    "rows": rows_block, "paired": paired_block, "zeroshot": zeroshot_block, "allocation": allocation_block,
    "intervals": intervals_block, "sensitivity": sensitivity_block, "coverage": coverage_block,
    "window_layout": window_layout_block,
}


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key in a mapping (PyYAML keeps the last one silently, so a
    block pasted twice would shadow the first without a word)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        repeated = sorted({k for k in keys if keys.count(k) > 1}, key=str)
        if repeated:
            raise ConfigError(f"line {node.start_mark.line + 1}: key {repeated[0]!r} appears more than once in one "
                              f"mapping; keep one")
        return super().construct_mapping(node, deep=deep)


def load_specs(path: Path = SPEC_FILE) -> dict[str, dict[str, Any]]:
    try:
        specs = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for name, spec in specs.items():
        if spec.get("kind") not in KINDS:
            raise ConfigError(f"{path}: block {name!r} has kind {spec.get('kind')!r}; use one of {', '.join(KINDS)}")
    return specs


def pages(root: Path = REPO_ROOT) -> list[Path]:
    return sorted({p for pattern in PAGES for p in root.glob(pattern)})


def render_pages(root: Path = REPO_ROOT, folder: Path | None = None) -> dict[Path, tuple[str, str]]:
    """Every page with generated blocks: ``{path: (current text, text with every block regenerated)}``."""
    specs = load_specs(root / "docs" / "published.yaml")
    folder = folder or REFERENCE_DIR
    ctx = Context(folder, load_records(folder))
    cache: dict[str, str] = {}
    out = {}
    for page in pages(root):
        text = page.read_text(encoding="utf-8")

        def fill(m: re.Match[str], page: Path = page) -> str:
            name = m["name"]
            if name not in specs:
                raise ConfigError(f"{page}: generated block {name!r} has no entry in docs/published.yaml")
            if name not in cache:
                cache[name] = KINDS[specs[name]["kind"]](specs[name], ctx)
            return m["open"] + cache[name] + m["close"]

        new = BLOCK.sub(fill, text)
        if BLOCK.search(text):
            out[page] = (text, new)
    return out


def refresh(root: Path = REPO_ROOT, folder: Path | None = None) -> list[Path]:
    """Rewrite every generated block; return the pages that changed."""
    changed = []
    for page, (old, new) in render_pages(root, folder or REFERENCE_DIR).items():
        if old != new:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


def check(root: Path = REPO_ROOT, folder: Path | None = None) -> list[str]:
    """One message (with a short diff) per page whose generated blocks differ from the records."""
    problems = []
    for page, (old, new) in render_pages(root, folder or REFERENCE_DIR).items():
        if old != new:
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), "published", "from the records",
                                        n=0, lineterm="")
            problems.append(f"{page.relative_to(root)}: generated figures differ from the reference records\n"
                            + "\n".join(list(diff)[2:14]))
    return problems
