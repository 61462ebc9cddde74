"""The report: ``python -m harness.report [results_dir | --reference] [--check]``.

Builds the tables (``harness.results.tables``) from every readable record under ``results_dir``
(or the published ``reference/``), and writes, per (model, profile), ``tables/<model>__<profile>.md``
and ``.tex`` (``harness.results.formats``), plots, ``leaderboard.md`` and ``index.html``, and prints
the tables with rich. With ``--reference`` it also regenerates the published figures of the README
and docs/ (``harness.results.published``); ``--reference --check`` writes nothing and exits 1 when a
published figure differs from what the records give.
"""
from __future__ import annotations

import argparse
import io
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.results import html, paper, published
from harness.results import plots as plotting
from harness.results.formats import console_table, leaderboard, to_latex, to_markdown
from harness.results.records import REFERENCE_DIR, load_records
from harness.results.tables import Selection, Table, build_tables, mark_baseline

log = logging.getLogger(__name__)

REFERENCE_LAYOUT = "aptq_table1"  # the paper table rendered beside the reference tables


@dataclass
class RenderOptions:
    """What ``render`` writes. ``baseline`` (a row label or glob): cells not significantly different from
    that row's are marked ≈ (p adjusted over the table by ``adjustment``). ``layout`` (``aptq_table1`` |
    ``aptq_table2``): also the paper's table in its layout, the paper's own figures beside. ``wandb``
    (the config's W&B settings): also log the plots to a W&B run of the sweep's group."""

    selection: Selection = field(default_factory=Selection)
    baseline: str | None = None
    adjustment: str = "holm"
    out_dir: Path | None = None  # default: <results_dir>/tables
    plots: bool = True
    layout: str | None = None
    wandb: dict[str, Any] | None = None


def _table_files(title: str, stem: str, table: Table, options: RenderOptions) -> dict[str, str]:
    base = mark_baseline(table, options.baseline, options.adjustment) if options.baseline else None
    if options.baseline and base is None:
        log.warning("no row of %s matches --baseline %r; nothing marked", title, options.baseline)
    return {f"{stem}.md": to_markdown(title, table, base), f"{stem}.tex": to_latex(title, table)}


def render(results_dir: Path, options: RenderOptions | None = None, console: Console | None = None
           ) -> dict[str, Path]:
    """Write tables (Markdown, LaTeX), plots, the leaderboard and ``index.html`` for the records under
    ``results_dir``; return the files written."""
    options = options or RenderOptions()
    console = console or Console()
    tables = build_tables(load_records(results_dir), selection=options.selection)
    out_dir = options.out_dir or results_dir / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    written: dict[str, Path] = {}
    figures: dict[tuple[str, str], dict[str, Path]] = {}
    for (model, profile), table in sorted(tables.items()):
        title = f"{model} · profile {profile}"
        stem = re.sub(r"[^A-Za-z0-9._]+", "-", f"{model}__{profile}")
        texts.update(_table_files(title, stem, table, options))
        if options.plots:
            figures[(model, profile)] = plotting.plot_table(table, out_dir / "plots", stem, title)
            written.update({p.name: p for p in figures[(model, profile)].values()})
        console.print(console_table(title, table, console.width))
    if options.layout:
        texts.update(paper.render_layout(options.layout, tables))
    if options.wandb:
        plotting.log_to_wandb(figures, results_dir, options.wandb)
    texts["leaderboard.md"] = leaderboard(tables)
    texts["index.html"] = html.page(tables, figures)
    for name, text in texts.items():
        written[name] = out_dir / name
        written[name].write_text(text, encoding="utf-8")
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
    ap.add_argument("--adjust", default="holm", choices=["holm", "bh", "none"],
                    help="multiple-comparison adjustment of the --baseline tests over the table (default holm)")
    ap.add_argument("--models", default=None, help="comma-separated model names or globs")
    ap.add_argument("--methods", default=None, help="comma-separated method labels or globs (e.g. 'APTQ*,GPTQ')")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (columns)")
    ap.add_argument("--order", default="bits",
                    help="row order inside a bit-width group: bits | label | a column; bytes: all rows by stored "
                         "bytes per weight")
    ap.add_argument("--byte-budget", type=float, default=None, metavar="B",
                    help="only rows that store at most B bytes per weight (scales, zeros, masks, width maps and "
                         "fp16 columns counted; e.g. 0.42), to compare methods at equal storage")
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
    selection = Selection(split(args.models), split(args.methods), split(args.tasks), args.order, args.byte_budget)
    options = RenderOptions(selection, args.baseline, args.adjust, plots=not args.no_plots,
                            layout=args.layout or (REFERENCE_LAYOUT if args.reference else None),
                            wandb={"mode": args.wandb} if args.wandb else None)
    try:
        written = render(folder, options)
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
        render(REFERENCE_DIR, RenderOptions(out_dir=Path(tmp), plots=False, layout=REFERENCE_LAYOUT),
               Console(file=io.StringIO()))
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
