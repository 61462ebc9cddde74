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
from harness.results.report import build_tables, mark_baseline, to_latex, to_markdown
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


def test_perplexity_interval_covers_the_true_perplexity_at_the_stated_rate():
    mu, sigma, n = 3.0, 0.4, 40  # per-window mean NLLs; the true perplexity is exp(E[nll]) = e^3
    cov = coverage(lambda r: r.normal(mu, sigma, n), np.exp(mu), lambda x, seed: stats.ppl_interval(x, 1000, seed))
    assert 0.90 <= cov <= 0.985, cov


def test_accuracy_interval_covers_the_true_accuracy_at_the_stated_rate():
    cov = coverage(lambda r: r.random(200) < 0.6, 0.6, lambda x, seed: stats.mean_interval(x, 1000, seed))
    assert 0.90 <= cov <= 0.985, cov


def test_suite_mean_interval_resamples_each_task_on_its_own():
    ps = [0.8, 0.3, 0.55, 0.25, 0.5]
    cov = coverage(lambda r: [r.random(120) < p for p in ps], np.mean(ps),
                   lambda xs, seed: stats.suite_mean_interval(xs, 1000, seed))
    assert 0.90 <= cov <= 0.985, cov


def test_a_wrong_interval_would_fail_the_coverage_check():
    """The check has teeth: an interval of half the width covers far less than 95%."""
    def narrow(x, seed):
        iv = stats.ppl_interval(x, 1000, seed)
        mid, h = (iv.low + iv.high) / 2, iv.half_width() / 2
        return stats.Interval(mid - h, mid + h, 0.95, "halved", 1000, seed)

    assert coverage(lambda r: r.normal(3.0, 0.4, 40), np.exp(3.0), narrow) < 0.8


def test_paired_test_finds_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 0.5, 40)  # windows vary a lot; the paired difference is small but consistent
    b = a + 0.02 + rng.normal(0, 0.01, 40)
    res = stats.paired_test(b, a, "ppl")
    assert res.significant and res.ci.low > 0 and res.diff == pytest.approx(np.exp(b.mean()) - np.exp(a.mean()))
    same = stats.paired_test(a, a.copy(), "ppl")
    assert not same.significant and same.p_value == 1.0 and same.diff == 0
    flags = sum(stats.paired_test(a + rng.normal(0, 0.01, 40), a + rng.normal(0, 0.01, 40), "ppl",
                                  n_resamples=500, seed=i).significant for i in range(100))
    assert flags <= 12  # about 5% false positives under the null
    x = (rng.random(400) < 0.5).astype(float)
    y = x.copy()
    y[:40] = 1.0  # 40 items planted right in B: +~5 points
    res = stats.paired_test(y, x, "score")
    assert res.significant and res.diff > 0.03


def test_paired_suite_test_finds_a_planted_difference_in_the_mean_and_not_a_null_one():
    rng = np.random.default_rng(3)
    a = [(rng.random(n) < p).astype(float) for n, p in ((300, 0.6), (200, 0.4), (250, 0.5))]
    b = [x.copy() for x in a]
    b[0][:30] = 1.0  # 30 items of the first task planted right in B
    res = stats.paired_suite_test(b, a)
    planted = np.mean([(y - x).mean() for x, y in zip(a, b, strict=True)])
    assert res.significant and res.diff == pytest.approx(planted) and res.ci.low > 0 and res.units == 750
    same = stats.paired_suite_test(a, [x.copy() for x in a])
    assert same.p_value == 1.0 and same.diff == 0
    flags = 0
    for i in range(100):  # two runs that each flip 5% of the items at random: no real difference
        c = [np.where(rng.random(len(x)) < 0.05, 1 - x, x) for x in a]
        e = [np.where(rng.random(len(x)) < 0.05, 1 - x, x) for x in a]
        flags += stats.paired_suite_test(c, e, n_resamples=500, seed=i).significant
    assert flags <= 12
    with pytest.raises(ValueError, match="same items"):
        stats.paired_suite_test(a, [a[0][:10], a[1], a[2]])


def test_versus_draws_finds_a_run_better_than_the_control_and_not_one_of_its_own_draws():
    rng = np.random.default_rng(2)
    base = rng.normal(3.0, 0.5, 40)  # the windows' own difficulty, shared by every run

    def draw(shift):  # a run: the shared windows + its own offset (a draw's quality) + small noise
        return base + shift + rng.normal(0, 0.01, 40)

    draws = [draw(rng.normal(0.10, 0.05)) for _ in range(8)]
    good = stats.versus_draws(draw(-0.15), draws, "ppl")  # 5 draw-sd better than their mean
    assert good.significant and good.diff_mean < 0 and good.t_ci.high < 0 and good.beats == 8
    # A draw of the control itself is not flagged, at about the nominal rate over repetitions
    flags = 0
    for _ in range(100):
        ds = [draw(rng.normal(0.10, 0.05)) for _ in range(9)]
        flags += stats.versus_draws(ds[0], ds[1:], "ppl", n_resamples=200).significant
    assert flags <= 12
    with pytest.raises(ValueError, match="at least 2 draws"):
        stats.versus_draws(base, [base], "ppl")


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
            "metrics": {"wikitext2": {"ppl": ppl, "ppl_ci": stats.ppl_interval(nll).as_record(), "window_nll": nll,
                                      "text_sha256": "t", "tokens_sha256": "k", "windows": len(nll)}}}


def test_tables_show_intervals_aggregate_seeds_and_mark_the_baseline():
    rng = np.random.default_rng(0)
    base = rng.normal(3.5, 0.5, 40)
    recs = [_record("GPTQ", s, list(base + 0.1 + rng.normal(0, 0.03, 40))) for s in (0, 1, 2)]
    recs += [_record("RTN", 0, list(base + 0.2 + rng.normal(0, 0.01, 40))),
             _record("Same", 0, list(base + rng.normal(0, 0.005, 40))), _record("FP16", 0, list(base))]
    ((_, table),) = build_tables(recs, declared={}).items()
    rows = {label: cells for label, _, cells in table["rows"]}
    (col,) = table["columns"]
    assert rows["GPTQ"][col].seeds["n"] == 3 and rows["GPTQ"][col].seeds["values"] == \
        [r["metrics"]["wikitext2"]["ppl"] for r in recs[:3]]
    assert mark_baseline(table, "FP16") == "FP16"
    assert rows["Same"][col].not_different and not rows["RTN"][col].not_different
    md = to_markdown("t", table, "FP16")
    half = (recs[3]["metrics"]["wikitext2"]["ppl_ci"]["high"] - recs[3]["metrics"]["wikitext2"]["ppl_ci"]["low"]) / 2
    assert f"| RTN | 4 | 4 | {recs[3]['metrics']['wikitext2']['ppl']:.2f} ± {half:.2g} |" in md
    assert "(n=3)" in md and "≈" in md and "GPTQ, seeds 0, 1, 2: wikitext2 ppl" in md
    assert "$\\pm$" in to_latex("t", table)


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
    (row,) = compare(resolve(b["run_id"], folder), resolve(a["run_id"][:30], folder), n_resamples=200)
    assert row["task"] == "wikitext2" and row["diff"] == pytest.approx(
        b["metrics"]["wikitext2"]["ppl"] - a["metrics"]["wikitext2"]["ppl"])
    (same,) = compare(a, copy.deepcopy(a), n_resamples=200)
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
    with pytest.raises(ConfigError, match="matches 2 records"):
        resolve("RTN", folder)


def test_compare_cli(tiny_cfg, tmp_path, run_cli):
    a = execute(tiny_cfg("method=rtn", "bits=4", "task=[wikitext2]"))
    b = execute(tiny_cfg("method=fp16", "task=[wikitext2]"))
    out = tmp_path / "cmp.json"
    res = run_cli("harness.compare", a["run_id"], "FP16", "--results-dir", str(tmp_path / "results"),
                  "--n-resamples", "200", "--json", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["a"] == a["run_id"] and got["b"] == b["run_id"] and got["results"][0]["metric"] == "ppl"
    res = run_cli("harness.compare", a["run_id"], "nope", "--results-dir", str(tmp_path / "results"))
    assert res.returncode == 2 and "no record under" in res.stderr and "Traceback" not in res.stderr
    write_atomic(tmp_path / "results" / "records" / "x.json", {"schema": 2})  # unreadable: skipped with one line
