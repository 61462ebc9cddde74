"""Paper-style tables from run records: typed columns, cells and rows (no rendering here).

One table per (model, profile): tables never mix profiles or models. Rows are ``method @ avg bits``
(sorted by bit-width group, then as the selection orders them), columns the tasks' primary metrics
(ppl ↓, acc ↑), as the record declares them (``primary``; older records: ``records.LEGACY_PRIMARY``).
Nor do columns mix protocols: a column is a task under one protocol, and its name carries every
protocol field in which the table's records of that task differ, and a perplexity BOS other than
``none`` always (``wikitext2 ppl [bos=per_window]``). Zero-shot suites add Table-2 columns: each
task's chosen metric (acc or acc_norm, in %) and the suite mean. Every interval is recomputed from
the record's raw results (``harness.results.stats``), seeded by the run id.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from harness.results import stats
from harness.results.records import LEGACY_PRIMARY, row_label, seed_of, task_protocol


def fmt_half(h: float) -> str:
    """A half-width or a std with two significant digits (the one display style for ``± h``)."""
    return f"{h:.0f}" if h >= 100 else f"{h:.2g}"


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
        """An interval's half-width (or a std) in the column's unit (``fmt_half``)."""
        return fmt_half(100 * half if self.percent else half)

    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"


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
    columns = list(dict.fromkeys(c for cells in per_seed.values() for c in cells))  # first seen first: deterministic
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
    order: str = "bits"  # bits (bit-width groups, then label) | label | bytes | <column name> (best first)
    max_bytes: float | None = None  # a byte budget: only rows storing at most this many bytes per weight

    def keeps(self, rec: dict[str, Any]) -> bool:
        ok_model = not self.models or any(fnmatch(rec["model"]["name"], g) for g in self.models)
        label = rec["method"]["label"]
        ok_method = not self.methods or any(fnmatch(label, g) or fnmatch(row_label(rec), g) for g in self.methods)
        ok_bytes = self.max_bytes is None or bytes_per_weight(rec["quantization"]) <= self.max_bytes + 1e-9
        return ok_model and ok_method and ok_bytes

    def keeps_column(self, col: Column) -> bool:
        return not self.tasks or col.name.split(" ", 1)[0] in self.tasks or col.name.split(" ", 1)[0].split("/")[0] \
            in self.tasks


def bytes_per_weight(q: dict[str, Any]) -> float:
    """Bytes per decoder linear weight of a record's ``quantization``: everything stored counted (scales,
    zeros, masks, width maps, fp16 columns; unquantized layers at 2 bytes), i.e. effective bits / 8. Records
    written before the field existed derive it from ``avg_bits_with_overhead``."""
    if "bytes_per_weight" in q:
        return float(q["bytes_per_weight"])
    return float(q.get("avg_bits_with_overhead", q["avg_bits"])) / 8


def bit_group(bits: float) -> int:
    """The bit-width group a row belongs to (rows are compared within a group): 16, 4, 3, 2 ..."""
    return 16 if bits >= 16 else int(bits + 1e-9)


@dataclass
class RowMeta:
    """What a row is, beside its cells: the method family, the bit-width group, the effective bits
    (scales, zeros, fp16 columns counted) and the records it was made of."""

    family: str
    group: int
    effective_bits: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes_per_weight(self) -> float:
        return self.effective_bits / 8


@dataclass
class Table:
    """One (model, profile) table: columns, rows ``(label, bits, {Column: Cell})`` in display order,
    each row's ``RowMeta``, and (after ``mark_baseline``) what was compared with what."""

    columns: list[Column]
    rows: list[tuple[str, float, dict[Column, Cell]]]
    meta: dict[tuple[str, float], RowMeta]
    comparisons: dict[str, Any] = field(default_factory=dict)


def build_tables(records: list[dict[str, Any]], declared: dict[str, dict[str, Any]] | None = None,
                 selection: Selection | None = None) -> dict[tuple[str, str], Table]:
    """Group records by (model, profile) into ``Table`` s. ``declared``: how to show tasks whose
    records do not say (default ``records.LEGACY_PRIMARY``).

    A row is (label without seed tag, nominal avg bits). Records of one row that differ in seed are
    aggregated (``_merge_seeds``); of several records with the same seed (a re-run), the newest wins.
    Rows are ordered by bit-width group (highest first), then as ``selection.order`` says.
    """
    declared = LEGACY_PRIMARY if declared is None else declared
    selection = selection or Selection()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if selection.keeps(rec):
            groups[(rec["model"]["name"], rec["profile"])].append(rec)
    tables: dict[tuple[str, str], Table] = {}
    for key, recs in groups.items():
        recs.sort(key=lambda r: r.get("finished", ""))
        tags = protocol_tags(recs)
        columns: list[Column] = []
        rows: dict[tuple[str, float], dict[str, dict[Column, Cell]]] = {}
        meta: dict[tuple[str, float], RowMeta] = {}
        for rec in recs:
            q = rec["quantization"]
            bits = round(q["avg_bits"], 3)
            row = (row_label(rec), bits)
            cells = rows.setdefault(row, {}).setdefault(seed_of(rec), {})
            info = meta.setdefault(row, RowMeta(rec["method"]["name"], bit_group(bits)))
            info.effective_bits = round(float(q.get("avg_bits_with_overhead", bits)), 3)
            info.records.append(rec)
            for col, cell in cells_of(rec, declared, tags):
                if not selection.keeps_column(col):
                    continue
                if col not in columns:
                    columns.append(col)
                cells[col] = cell
        columns.sort(key=lambda c: (not c.lower_is_better, c.suite_mean))  # ppl | accuracies | means
        merged = {row: _merge_seeds(per_seed) for row, per_seed in rows.items()}
        order = order_rows(merged, columns, selection.order, meta)
        tables[key] = Table(columns, [(lbl, b, merged[(lbl, b)]) for lbl, b in order], meta)
    return tables


def order_rows(rows: dict[tuple[str, float], dict[Column, Cell]], columns: list[Column], order: str,
               meta: dict[tuple[str, float], RowMeta] | None = None) -> list[tuple[str, float]]:
    """Bit-width groups from the highest; inside a group by bits then label, by label, or by a column.
    ``bytes``: one list by stored bytes per weight, most first (rows lined up at a byte budget, across
    bit-width groups: a 3.5-bit mix beside a 4-bit g64 grid that stores as much)."""
    by_col = next((c for c in columns if c.name == order), None)
    if order not in ("bits", "label", "bytes") and by_col is None:
        names = ", ".join(c.name for c in columns)
        raise ValueError(f"--order {order!r}: use bits, label, bytes or one of the columns ({names})")
    if order == "bytes":
        return sorted(rows, key=lambda r: (-(meta[r].effective_bits if meta else r[1]), r[0]))

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


def mark_baseline(table: Table, baseline: str, adjustment: str = "holm") -> str | None:
    """Mark each cell not significantly different from the ``baseline`` row's: the paired test on the
    same windows / items (``stats.paired_test``), its p adjusted over all the table's comparisons
    (``adjustment``: holm | bh | none), ≈ when the adjusted p ≥ 0.05. Returns the baseline's label,
    or None if no row matches."""
    match = [r for r in table.rows if r[0] == baseline] or [r for r in table.rows if fnmatch(r[0], baseline)]
    if not match:
        return None
    base_label, _, base = match[0]
    tested: list[tuple[Cell, float]] = []
    for label, _, cells in table.rows:
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
    table.comparisons = {"baseline": base_label, "n": len(tested), "adjustment": adjustment}
    return base_label


def best_per_group(table: Table) -> dict[tuple[int, Column], float]:
    """The best value of each column within each bit-width group of two rows or more (shown bold)."""
    best: dict[tuple[int, Column], float] = {}
    for group in {bit_group(b) for _, b, _ in table.rows}:
        rows = [c for _, b, c in table.rows if bit_group(b) == group]
        if len(rows) < 2:
            continue
        for col in table.columns:
            vals = [c[col].value for c in rows if col in c]
            if vals:
                best[(group, col)] = min(vals) if col.lower_is_better else max(vals)
    return best


def fp16_cells(table: Table) -> dict[Column, Cell] | None:
    """The full-precision row's cells (the Δ reference), if the table has one."""
    return next((cells for label, b, cells in table.rows if table.meta[(label, b)].family == "fp16"), None)


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
