"""Intervals, paired tests, seed aggregation and their display (harness.results.stats / report / compare).

The coverage tests draw many seeded samples from a known distribution and check that the 95%
interval covers the true value at about the stated rate: with 300 draws the rate's standard error
is ≈ 1.3 points, so [0.90, 0.985] fails a broken interval and passes a correct one."""
import copy
import json

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.results import stats
from harness.results.compare import compare, resolve
from harness.results.formats import latex_escape, to_latex, to_markdown
from harness.results.tables import build_tables, mark_baseline
from harness.run import execute
from harness.util import write_atomic

DRAWS = 300


def coverage(draw, truth, interval) -> float:
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(DRAWS):
        iv = interval(draw(rng), seed=i)
        hits += iv.low <= truth <= iv.high
    return hits / DRAWS


def ar1(rng, n: int, rho: float, mu: float = 3.0, sigma: float = 0.4) -> np.ndarray:
    """A stationary AR(1) series of window NLLs: mean mu, marginal sd sigma, lag-1 correlation rho."""
    e = rng.standard_normal(n + 100)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, len(e)):
        x[t] = rho * x[t - 1] + np.sqrt(1 - rho**2) * e[t]
    return mu + sigma * x[100:]


@pytest.mark.parametrize("n", [40, 256])
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.64, 0.8])
def test_perplexity_interval_covers_on_serially_correlated_windows(rho, n):
    """Consecutive windows of one text are correlated (the quick profile's WikiText-2: lag 1 ≈ +0.64):
    the block bootstrap keeps 95% coverage where the windows carry the information of a few."""
    cov = coverage(lambda r: ar1(r, n, rho), np.exp(3.0), lambda x, seed: stats.ppl_interval(x, seed, 1000))
    assert 0.90 <= cov <= 0.985, cov


def test_the_iid_bootstrap_fails_on_correlated_windows():
    """The check has teeth: resampling single windows (block 1) undercovers at the quick profile's ρ."""
    cov = coverage(lambda r: ar1(r, 40, 0.64), np.exp(3.0), lambda x, seed: stats.ppl_interval(x, seed, 1000, block=1))
    assert cov < 0.90, cov


def test_block_length_grows_with_correlation_and_is_recorded():
    rng = np.random.default_rng(5)
    short, long_ = stats.block_length(ar1(rng, 256, 0.0)), stats.block_length(ar1(rng, 256, 0.8))
    assert 1 <= short < long_ <= 256 // 3
    assert stats.block_length(ar1(rng, 40, 0.99)) <= 13  # at least 3 blocks
    iv = stats.ppl_interval(ar1(rng, 40, 0.64), seed=7)
    rec = iv.as_record()
    assert rec["block"] >= 2 and rec["n_resamples"] == stats.N_RESAMPLES and rec["seed"] == 7
    assert "block bootstrap" in rec["method"]


def test_seeds_are_derived_from_what_the_figure_is():
    assert stats.seed_for("run-a", "wikitext2") == stats.seed_for("run-a", "wikitext2")
    assert len({stats.seed_for(r, t) for r in ("run-a", "run-b") for t in ("wikitext2", "c4")}) == 4
    x = ar1(np.random.default_rng(0), 40, 0.3)
    assert stats.ppl_interval(x, 1) != stats.ppl_interval(x, 2)  # independent Monte Carlo errors


def test_accuracy_interval_covers_the_true_accuracy_at_the_stated_rate():
    cov = coverage(lambda r: r.random(200) < 0.6, 0.6, lambda x, seed: stats.mean_interval(x, seed, 1000))
    assert 0.90 <= cov <= 0.985, cov


def test_suite_mean_interval_resamples_each_task_on_its_own():
    ps = [0.8, 0.3, 0.55, 0.25, 0.5]
    cov = coverage(lambda r: [r.random(120) < p for p in ps], np.mean(ps),
                   lambda xs, seed: stats.suite_mean_interval(xs, seed, 1000))
    assert 0.90 <= cov <= 0.985, cov


def test_a_wrong_interval_would_fail_the_coverage_check():
    """The check has teeth: an interval of half the width covers far less than 95%."""
    def narrow(x, seed):
        iv = stats.ppl_interval(x, seed, 1000)
        mid, h = (iv.low + iv.high) / 2, iv.half_width() / 2
        return stats.Interval(mid - h, mid + h, 0.95, "halved", 1000, seed)

    assert coverage(lambda r: r.normal(3.0, 0.4, 40), np.exp(3.0), narrow) < 0.85


def test_paired_test_finds_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 0.5, 40)  # windows vary a lot; the paired difference is small but consistent
    b = a + 0.02 + rng.normal(0, 0.01, 40)
    res = stats.paired_test(b, a, "ppl", seed=0)
    assert res.significant and res.ci.low > 0 and res.diff == pytest.approx(np.exp(b.mean()) - np.exp(a.mean()))
    same = stats.paired_test(a, a.copy(), "ppl", seed=0)
    assert not same.significant and same.p_value == 1.0 and same.diff == 0
    flags = sum(stats.paired_test(a + rng.normal(0, 0.01, 40), a + rng.normal(0, 0.01, 40), "ppl",
                                  seed=i, n_resamples=500).significant for i in range(100))
    assert flags <= 12  # about 5% false positives under the null
    x = (rng.random(400) < 0.5).astype(float)
    y = x.copy()
    y[:40] = 1.0  # 40 items planted right in B: +~5 points
    res = stats.paired_test(y, x, "score", seed=0)
    assert res.significant and res.diff > 0.03
    assert res.mcnemar_p == pytest.approx(2 * 0.5 ** int(np.sum(y != x)))  # every discordant item one way


def test_mcnemar_is_the_exact_binomial_on_discordant_items():
    a = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 38, dtype=float)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 38, dtype=float)
    assert stats.mcnemar(a, b) == pytest.approx(0.0386, abs=1e-4)  # binomtest(10, 12): 2·P(X ≥ 10)
    assert stats.mcnemar(a, a) == 1.0


def test_block_sign_flips_are_exact_for_few_blocks():
    d = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert stats.block_sign_flip_p(d, 2, 10_000, np.random.default_rng(0)) == pytest.approx(2 / 8)
    assert stats.block_sign_flip_p(d, 1, 10_000, np.random.default_rng(0)) == pytest.approx(2 / 64)


def test_adjust_holm_and_bh():
    p = [0.01, 0.04, 0.03]
    assert stats.adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert stats.adjust(p, "bh") == pytest.approx([0.03, 0.04, 0.04])
    assert stats.adjust(p, "none") == p
    with pytest.raises(ValueError, match="holm, bh, none"):
        stats.adjust(p, "bonferoni")


def test_paired_suite_test_finds_a_planted_difference_in_the_mean_and_not_a_null_one():
    rng = np.random.default_rng(3)
    a = [(rng.random(n) < p).astype(float) for n, p in ((300, 0.6), (200, 0.4), (250, 0.5))]
    b = [x.copy() for x in a]
    b[0][:30] = 1.0  # 30 items of the first task planted right in B
    res = stats.paired_suite_test(b, a, 0)
    planted = np.mean([(y - x).mean() for x, y in zip(a, b, strict=True)])
    assert res.significant and res.diff == pytest.approx(planted) and res.ci.low > 0 and res.units == 750
    same = stats.paired_suite_test(a, [x.copy() for x in a], 0)
    assert same.p_value == 1.0 and same.diff == 0
    flags = 0
    for i in range(100):  # two runs that each flip 5% of the items at random: no real difference
        c = [np.where(rng.random(len(x)) < 0.05, 1 - x, x) for x in a]
        e = [np.where(rng.random(len(x)) < 0.05, 1 - x, x) for x in a]
        flags += stats.paired_suite_test(c, e, i, n_resamples=500).significant
    assert flags <= 12
    with pytest.raises(ValueError, match="same items"):
        stats.paired_suite_test(a, [a[0][:10], a[1], a[2]], 0)


def test_versus_draws_finds_a_run_better_than_the_control_and_not_one_of_its_own_draws():
    rng = np.random.default_rng(2)
    base = rng.normal(3.0, 0.5, 40)  # the windows' own difficulty, shared by every run

    def draw(shift):  # a run: the shared windows + its own offset (a draw's quality) + small noise
        return base + shift + rng.normal(0, 0.01, 40)

    draws = [draw(rng.normal(0.10, 0.05)) for _ in range(19)]
    good = stats.versus_draws(draw(-0.15), draws, "ppl", seed=0)  # 5 draw-sd better than their mean
    assert good.significant and good.a < good.prediction.low and good.beats == 19
    assert good.rank_p == pytest.approx(1 / 20)  # better than all 19: the smallest rank p there is
    assert good.prediction.low < good.center < good.prediction.high
    # the prediction interval is what p tests: A inside it ⇔ p ≥ 0.05
    mid = stats.versus_draws(draw(0.10), draws, "ppl", seed=0)
    assert (mid.prediction.low <= mid.a <= mid.prediction.high) == (mid.p_value >= 0.05)
    # A draw of the control itself is not flagged, at about the nominal rate over repetitions
    flags = 0
    for i in range(100):
        ds = [draw(rng.normal(0.10, 0.05)) for _ in range(9)]
        flags += stats.versus_draws(ds[0], ds[1:], "ppl", seed=i, n_resamples=200).significant
    assert flags <= 12
    with pytest.raises(ValueError, match="at least 3 draws"):
        stats.versus_draws(base, [base, base], "ppl", seed=0)


def test_seed_summary():
    s = stats.seed_summary([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    assert stats.seed_summary([5.0])["std"] == 0.0


def _record(label: str, seed: int, nll: list[float], finished: str = "2026-01-01", seqlen: int = 64) -> dict:
    ppl = float(np.exp(np.mean(nll)))
    return {"schema": 2, "run_id": f"m__{label}-{seed}-{seqlen}", "status": "complete", "finished": finished,
            "model": {"name": "m"}, "method": {"name": "x", "label": label, "options": {}}, "profile": "quick",
            "seed": seed, "quantization": {"avg_bits": 4.0}, "protocol": {"wikitext2": {"seqlen": seqlen}},
            "primary": {"wikitext2": {"metric": "ppl", "lower_is_better": True, "percent": False}},
            "metrics": {"wikitext2": {"ppl": ppl, "ppl_ci": stats.ppl_interval(nll, 0).as_record(), "window_nll": nll,
                                      "text_sha256": "t", "tokens_sha256": "k", "windows": len(nll)}}}


def test_tables_show_intervals_aggregate_seeds_and_mark_the_baseline():
    rng = np.random.default_rng(0)
    base = rng.normal(3.5, 0.5, 40)
    recs = [_record("GPTQ", s, list(base + 0.1 + rng.normal(0, 0.03, 40))) for s in (0, 1, 2)]
    recs += [_record("RTN", 0, list(base + 0.2 + rng.normal(0, 0.01, 40))),
             _record("Same", 0, list(base + rng.normal(0, 0.005, 40))), _record("FP16", 0, list(base))]
    ((_, table),) = build_tables(recs, declared={}).items()
    rows = {label: cells for label, _, cells in table.rows}
    (col,) = table.columns
    assert rows["GPTQ"][col].seeds["n"] == 3 and rows["GPTQ"][col].seeds["values"] == \
        [r["metrics"]["wikitext2"]["ppl"] for r in recs[:3]]
    assert mark_baseline(table, "FP16") == "FP16"
    assert rows["Same"][col].not_different and not rows["RTN"][col].not_different
    md = to_markdown("t", table, "FP16")
    # recomputed from the raw windows (today's method), seeded by the run id
    half = stats.ppl_interval(recs[3]["metrics"]["wikitext2"]["window_nll"],
                              stats.seed_for(recs[3]["run_id"], "wikitext2")).half_width()
    assert f"| RTN | 4 | 4 | {recs[3]['metrics']['wikitext2']['ppl']:.2f} ± {half:.2g} |" in md
    assert "(n=3)" in md and "≈" in md and "GPTQ, seeds 0, 1, 2: wikitext2 ppl" in md
    assert "$\\pm$" in to_latex("t", table)
    assert "after holm adjustment over" in md


def test_a_column_only_one_seed_has_keeps_its_interval():
    rng = np.random.default_rng(4)
    recs = [_record("APTQ", s, list(rng.normal(3.5, 0.3, 40))) for s in (0, 1)]
    extra = copy.deepcopy(recs[0]["metrics"]["wikitext2"])
    recs[0]["metrics"]["c4"] = extra  # only seed 0 evaluated c4
    recs[0]["primary"]["c4"] = recs[0]["primary"]["wikitext2"]
    ((_, table),) = build_tables(recs, declared={}).items()
    ((_, _, cells),) = table.rows
    by_name = {c.name: cell for c, cell in cells.items()}
    assert by_name["wikitext2 ppl"].seeds["n"] == 2
    assert by_name["c4 ppl"].seeds is None and by_name["c4 ppl"].half is not None


def test_latex_escape_makes_every_special_character_literal():
    assert latex_escape("a_b 50% & #1 $x$ {y} ~z^2 \\") == \
        r"a\_b 50\% \& \#1 \$x\$ \{y\} \textasciitilde{}z\textasciicircum{}2 \textbackslash{}"


def test_records_without_raw_results_render_with_a_dash():
    rec = _record("Old", 0, [3.0, 3.1])
    m = rec["metrics"]["wikitext2"]
    del m["ppl_ci"], m["window_nll"]
    ((_, table),) = build_tables([rec], declared={}).items()
    assert f"| Old | 4 | 4 | {m['ppl']:.2f} ± – |" in to_markdown("t", table)


def test_compare_pairs_two_runs_and_refuses_what_does_not_pair(tiny_cfg, tmp_path):
    a = execute(tiny_cfg("method=rtn", "bits=4", "task=[wikitext2]"))
    b = execute(tiny_cfg("method=rtn", "bits=3", "task=[wikitext2]"))
    assert len(a["metrics"]["wikitext2"]["window_nll"]) == 2 and a["metrics"]["wikitext2"]["window_tokens"] == 63
    folder = tmp_path / "results"
    (row,) = compare(resolve(b["run_id"], folder), resolve(a["run_id"][:30], folder))
    assert row["task"] == "wikitext2" and row["diff"] == pytest.approx(
        b["metrics"]["wikitext2"]["ppl"] - a["metrics"]["wikitext2"]["ppl"])
    (same,) = compare(a, copy.deepcopy(a))
    assert same["p_value"] == 1.0 and not same["significant"]

    other = copy.deepcopy(a)
    other["protocol"]["wikitext2"]["seqlen"] = 128
    with pytest.raises(ConfigError, match="protocols differ \\(seqlen: 64 vs 128\\)"):
        compare(a, other)
    other = copy.deepcopy(a)
    other["metrics"]["wikitext2"]["tokens_sha256"] = "another text"
    with pytest.raises(ConfigError, match="evaluated on different text"):
        compare(a, other)
    old = copy.deepcopy(a)
    del old["metrics"]["wikitext2"]["window_nll"]
    with pytest.raises(ConfigError, match="no raw per-window/per-item results"):
        compare(old, a)
    with pytest.raises(ConfigError, match="matches 2 records.*name one of RTN@bits=3; RTN@bits=4"):
        resolve("RTN", folder)
    assert resolve("RTN@bits=3", folder)["run_id"] == b["run_id"]


def test_compare_cli(tiny_cfg, tmp_path, run_cli):
    a = execute(tiny_cfg("method=rtn", "bits=4", "task=[wikitext2]"))
    b = execute(tiny_cfg("method=fp16", "task=[wikitext2]"))
    out = tmp_path / "cmp.json"
    res = run_cli("harness.compare", a["run_id"], "FP16", "--results-dir", str(tmp_path / "results"),
                  "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["pairs"] == [[a["run_id"], b["run_id"]]] and got["results"][0]["metric"] == "ppl"
    assert got["results"][0]["adjustment"] == "holm" and "p_adjusted" in got["results"][0]
    res = run_cli("harness.compare", a["run_id"], "nope", "--results-dir", str(tmp_path / "results"))
    assert res.returncode == 2 and "no record under" in res.stderr and "Traceback" not in res.stderr
    write_atomic(tmp_path / "results" / "records" / "x.json", {"schema": 2})  # unreadable: skipped with one line
