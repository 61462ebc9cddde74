"""The report on frozen fixture records (``tests/fixtures/records``, see its README): every format,
with content checks (rows, bold best per bit-width group, Δ vs FP16, effective bits, intervals or
dashes, the Pareto frontier), plots, the paper's layout, an 80-column console, and the HTML page in a
real headless browser."""
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool
from rich.console import Console

from harness.results import stats
from harness.results.records import load_records
from harness.results.report import RenderOptions, render
from harness.results.tables import Column, Selection, build_tables, pareto_ranks

REPO = Path(__file__).resolve().parent.parent
STEM = "SmolLM2-135M-Instruct__quick"
FIXTURES = REPO / "tests" / "fixtures"  # frozen records: pins move with rendering, never with new measurements


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    console = Console(file=io.StringIO(), width=80)
    written = render(FIXTURES, RenderOptions(out_dir=out, layout="aptq_table1"), console)
    return out, written, console.file.getvalue()


def half(run: str, task: str) -> str:
    """The half-width the report must show for a fixture's perplexity: recomputed from its windows."""
    (rec,) = [r for r in load_records(FIXTURES) if r["run_id"].endswith(run)]
    iv = stats.ppl_interval(rec["metrics"][task]["window_nll"], stats.seed_for(rec["run_id"], task))
    return Column("x", True, False).fmt_half(iv.half_width())


def test_markdown_groups_by_bit_width_bolds_the_best_and_shows_delta_and_effective_bits(rendered):
    out, _, _ = rendered
    md = (out / f"{STEM}.md").read_text()
    assert "| Method | Bits | Eff. bits | wikitext2 ppl ↓ | c4 ppl ↓ |" in md
    w, c = half("0cf724c2d1", "wikitext2"), half("0cf724c2d1", "c4")
    assert f"| APTQ g64 act ts | 4 | 4.312 | **33.14 ± {w}** (+3.96) | **31.26 ± {c}** (+2.46) |" in md  # 4-bit best
    w = half("5c35f115ad", "wikitext2")
    assert f"| APTQ-75% g64 act ts fisher knapsack b234 | 3.5 | 3.805 | **37.95 ± {w}** (+8.76) |" in md  # 3-bit best
    assert f"| APTQ-3 g64 act ts | 3 | 3.297 | 55.29 ± {half('c78e387202', 'wikitext2')} (+26.10) |" in md
    assert f"| GPTQ g64 act ts | 3 | 3.297 | 75.97 ± {half('f5966954a6', 'wikitext2')} (+46.78) |" in md  # not bold
    w, c = half("5daa3d8e8b", "wikitext2"), half("5daa3d8e8b", "c4")
    assert f"| FP16 | 16 | 16 | 29.19 ± {w} | 28.81 ± {c} |" in md  # alone in its group: not bold, no Δ
    assert "| APTQ-75% | 3.5 | 3.529 | 548.74 ± – (+519.55) | 328.26 ± – (+299.45) |" in md  # no raw results
    assert md.index("*4-bit*") < md.index("| APTQ g64 act ts |") < md.index("*3-bit*") < md.index("*2-bit*")
    draws = re.search(r"APTQ-75% g64 act ts random \| 3\.5 \| 3\.805 \| 79\.49 ± 9\.1 \(n=4\)", md)
    assert draws  # the random control's draws: mean ± std over them
    # a zero-shot column that only one of APTQ's three seeds evaluated keeps its interval (per-item data)
    assert re.search(r"\| APTQ \| 4 \| 4\.029 \| 40\.36 ± 0\.5 \(n=3\) .* \*\*62\.00 ± 4\.\d\*\*", md)


def test_latex_is_booktabs_with_a_rule_between_bit_width_groups(rendered):
    out, _, _ = rendered
    tex = (out / f"{STEM}.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and tex.count("\\midrule") >= 4
    w = half("0cf724c2d1", "wikitext2")
    assert f"APTQ g64 act ts & 4 & 4.312 & \\textbf{{33.14 $\\pm$ {w}}} {{\\scriptsize (+3.96)}}" in tex
    assert "GPTQ-PB 30\\% hessian" in tex


def test_pareto_frontier_and_leaderboard(rendered):
    out, _, _ = rendered
    ((_, table),) = build_tables(load_records(FIXTURES)).items()
    col = next(c for c in table.columns if c.name == "wikitext2 ppl")
    rows = [(lbl, b) for lbl, b, cells in table.rows if col in cells and table.meta[(lbl, b)].family != "fp16"]
    pts = [(table.meta[r].effective_bits, table.rows[[x[:2] for x in table.rows].index(r)][2][col].value)
           for r in rows]
    ranks = dict(zip(rows, pareto_ranks(pts, lower_is_better=True), strict=True))
    assert ranks[("APTQ g64 act ts", 4.0)] == 1 and ranks[("APTQ-75% g64 act ts fisher knapsack b234", 3.5)] == 1
    assert ranks[("APTQ", 4.0)] == 2  # per-channel APTQ-4 (4.03 eff. bits) is beaten by the 3.5-bit {2,3,4} mix (3.81)
    assert ranks[("GPTQ g64 act ts", 2.0)] == 1  # the fewest bits
    assert ranks[("OWQ 4.01", 4.01)] > 1 and ranks[("PB-LLM 30% hessian", 4.1)] > 1  # beaten with fewer bits
    lb = (out / "leaderboard.md").read_text()
    assert "| Pareto rank | Method | Bits | Eff. bits | Value |" in lb and "| 1 | APTQ g64 act ts |" in lb
    assert "LLaMA" not in lb  # the paper's figures are never ranked


def test_plots_are_written_as_png_and_svg(rendered):
    out, written, _ = rendered
    for name in ("wikitext2_ppl", "c4_ppl", "zeroshot_mean_limit_100", "zeroshot_mean_limit_500"):
        for ext in ("png", "svg"):
            path = out / "plots" / f"{STEM}__{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 5_000 and written[path.name] == path
    assert "Pareto frontier" in (out / "plots" / f"{STEM}__wikitext2_ppl.svg").read_text()


def test_the_paper_layout_shows_measured_rows_and_the_papers_figures_apart(rendered):
    out, _, _ = rendered
    md = (out / f"{STEM}__aptq_table1.md").read_text()
    assert "| Method (paper row) | Measured as | Avg bit | c4 ppl ↓ | wikitext2 ppl ↓ |" in md
    assert "| APTQ-75% | APTQ-75% | 3.5 | 328.26 ± – | 548.74 ± – |" in md
    assert "| PB-LLM-20% | GPTQ-PB 20% hessian | 3.4 |" in md
    paper = md[md.index("The paper's own figures"):]
    assert "| Paper: LLaMA-7B | Avg bit | c4 ppl | wikitext2 ppl |" in paper and "| GPTQ | 4 | 5.62 | 8.14 |" in paper


def test_the_console_table_fits_an_80_column_log(rendered):
    _, _, text = rendered
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "APTQ g64 act ts" in text and "wikitext2 ppl ↓" in text


def test_selection_of_methods_tasks_and_order():
    recs = load_records(FIXTURES)
    ((_, table),) = build_tables(recs, selection=Selection(methods=["APTQ*"], tasks=["c4"], order="c4 ppl")).items()
    assert [c.name for c in table.columns] == ["c4 ppl"]
    labels = [lbl for lbl, _, _ in table.rows]
    assert labels and all(lbl.startswith("APTQ") for lbl in labels)
    four = [cells for _, b, cells in table.rows if int(b) == 4]
    vals = [c[table.columns[0]].value for c in four]
    assert vals == sorted(vals)  # best first inside the 4-bit group


def test_the_html_page_is_self_contained(rendered):
    out, _, _ = rendered
    page = (out / "index.html").read_text()
    assert '<table class="board"' in page and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # no network


def test_the_html_page_sorts_and_filters_in_a_headless_browser(rendered, tmp_path):
    require_tool("chromium")
    out, _, _ = rendered
    shot = tmp_path / "leaderboard.png"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "check_html.py"), str(out / "index.html"),
                          "--column", "3", "--filter", "APTQ", "--screenshot", str(shot)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_a_sweep_logs_its_runs_and_its_plots_to_one_wandb_group(tmp_path, run_cli):
    res = run_cli("harness", "-m", "model=tiny_llama", "profile.seqlen=64", "profile.eval_windows=2",
                  "task=[wikitext2]", "wandb.mode=offline", f"results_dir={tmp_path}", "method=fp16,rtn")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # two runs and the report
    logs = [next(r.glob("*.wandb")).read_bytes() for r in runs]
    report = [b for b in logs if b"plots/tiny-llama__quick/wikitext2 ppl" in b]
    assert len(report) == 1 and b"report" in report[0]
    group = str(next((tmp_path / "multirun").glob("*/*")).as_posix()).encode()
    assert all(group in b for b in logs), group
