"""Uncertainty of every figure, from the raw per-window / per-item results kept in the record.

- **Perplexity** ``exp(mean NLL)`` over n evaluation windows. Windows cut consecutively from one text
  (WikiText-2) are serially correlated (lag-1 correlation of the quick profile's window NLLs ≈ +0.64),
  so an iid bootstrap over windows is too narrow. The interval is a *circular block bootstrap*
  (Politis & Romano 1992) standard error of the mean NLL with a Student-t critical value on the
  number of blocks: ``mean ± t_{k−1}·√(k/(k−1))·sd*``, k = n/b, then ``exp``. The block length b is
  data-driven: ``BLOCK_SCALE`` × the Politis–White (2004, corrected 2009) circular-bootstrap length
  (``arch.bootstrap.optimal_block_length``), rounded up, within [1, n/3]. Why not Politis–White
  alone: its length minimises the MSE of the variance estimate, not the coverage error; on AR(1)
  series with 40 windows it covers 0.78 at ρ = 0.8. Why a t critical value: with b large, k = n/b
  blocks carry the information (few degrees of freedom), and a percentile interval on few blocks is
  both too narrow and limited by the bootstrap's support. ``tests/test_stats.py`` checks coverage
  on simulated AR(1) series (ρ ∈ {0, 0.3, 0.64, 0.8}, n ∈ {40, 256}) inside [0.90, 0.985], and
  that the iid bootstrap fails at ρ = 0.64. On independent windows (C4) the rule picks short blocks
  and costs little width.
- **Accuracy** (per-item 0/1) and a suite mean (Table 2's mean of task accuracies): items are
  independent, so a percentile bootstrap over items (each task resampled on its own items).
- **Paired comparison** of two runs on the same windows / items: A − B. Perplexity: the joint circular
  block bootstrap interval (as above, b chosen on the per-window NLL differences) and its dual
  two-sided t-test (p < 0.05 exactly when the interval excludes 0). Beside it, as a distribution-free
  check, the *block sign-flip* p (``sign_flip_p``: the per-window differences in consecutive blocks
  of b, each block's sign flipped together, exact over all 2^k flips when k is small). It is not the
  headline p because it cannot go below 2/2^k: with the 3 blocks of a strongly correlated 40-window
  text, 0.25, whatever the difference.
  Accuracy: the paired percentile bootstrap over items, a sign-flip permutation test, and the exact
  McNemar test (``mcnemar``) on the discordant items.
- **Against a random control's k draws** (``versus_draws``): on log perplexity (the draws are
  right-skewed in perplexity), the 95% prediction interval of one more draw, its t-test p (is A
  outside what one more draw would give?) and the exact rank p ``(1 + #draws at least as good)/(k+1)``,
  which assumes nothing about the draws' distribution but cannot go below 1/(k+1). Needs k ≥ 3.
- **Many comparisons**: ``adjust`` (Holm or Benjamini–Hochberg, ``statsmodels.multipletests``).
- Monte Carlo: one resample count (``N_RESAMPLES``) everywhere, and a seed per figure derived from the
  run id and the task (``seed_for``), so that two records' Monte Carlo errors are independent. The
  interval keeps its method, block length, resample count and seed.

Display style (one, everywhere): ``value ± h`` where ``h`` is half the width of the 95% interval
(the exact, possibly asymmetric bounds are in the record as ``*_ci``); over calibration seeds,
``mean ± std (n=k)``. A figure without raw arrays (older records) shows ``± –``.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95
N_RESAMPLES = 10_000  # every bootstrap and Monte Carlo permutation test
ALPHA = 0.05  # significance level of the paired tests
BLOCK_SCALE = 3  # × the Politis–White length: the rule the AR(1) coverage test validates
MAX_BLOCK_FRACTION = 1 / 3  # at least 3 blocks
MIN_DRAWS = 3  # versus_draws refuses fewer
ADJUSTMENTS = {"holm": "holm", "bh": "fdr_bh", "none": None}  # --adjust name → statsmodels method


def seed_for(*parts: object) -> int:
    """A bootstrap seed derived from what the figure is (run id, task, ...): independent Monte Carlo
    errors across records, and the same figure re-rendered gives the same interval."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    method: str
    n_resamples: int
    seed: int
    block: int = 1  # block length in windows (1: iid resampling)

    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def block_length(x: Sequence[float]) -> int:
    """``BLOCK_SCALE`` × Politis–White's circular block length of the series, in [1, n·MAX_BLOCK_FRACTION]."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    cap = max(1, int(n * MAX_BLOCK_FRACTION))
    if n < 6 or np.ptp(x) == 0:
        return 1
    from arch.bootstrap import optimal_block_length  # heavy import: only when a series needs it

    pw = float(optimal_block_length(x)["circular"].iloc[0])
    return int(np.clip(math.ceil(BLOCK_SCALE * pw), 1, cap))


def _block_indices(n: int, b: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Circular block bootstrap resample indices (n_resamples, n): ceil(n/b) blocks of b consecutive
    windows (wrapping around), each starting anywhere, cut to n."""
    starts = rng.integers(0, n, size=(n_resamples, -(-n // b)))  # (R, blocks)
    return ((starts[:, :, None] + np.arange(b)) % n).reshape(n_resamples, -1)[:, :n]  # (R, n)


def _block_se(replicates: np.ndarray, n: int, b: int) -> tuple[float, float]:
    """(standard error, degrees of freedom): √(k/(k−1))·sd of the bootstrap replicates and k − 1, with
    k = n/b blocks (iid: k = n). The factor undoes the bootstrap variance's (k−1)/k shrinkage."""
    k = n / b
    return float(math.sqrt(k / (k - 1)) * replicates.std(ddof=1)), k - 1


def _t_halfwidth(replicates: np.ndarray, n: int, b: int, level: float) -> float:
    """t_{k−1}·se (``_block_se``): the half-width of the interval."""
    se, df = _block_se(replicates, n, b)
    return float(stats.t.ppf(0.5 + level / 2, df) * se)


def ppl_interval(window_nll: Sequence[float], seed: int, n_resamples: int = N_RESAMPLES, level: float = LEVEL,
                 block: int | None = None) -> Interval:
    """Interval of ``exp(mean NLL)``; ``window_nll`` (n,) mean NLL per window, in evaluation order.
    ``block``: None chooses it from the data (``block_length``); 1 is the iid bootstrap."""
    x = np.asarray(window_nll, dtype=np.float64)  # (n,)
    n, m = len(x), float(np.mean(x))
    if n < 2:
        return Interval(math.exp(m), math.exp(m), level, "single window", 0, seed)
    b = block_length(x) if block is None else block
    idx = _block_indices(n, b, n_resamples, np.random.default_rng(seed))  # (R, n)
    h = _t_halfwidth(x[idx].mean(axis=1), n, b, level)
    return Interval(math.exp(m - h), math.exp(m + h), level, "circular block bootstrap, t on n/b blocks",
                    n_resamples, seed, b)


def _bootstrap_means(per_task: Sequence[np.ndarray], seed: int, n_resamples: int, level: float
                     ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the arrays' means, each array's items (iid)
    resampled on their own (one array: the plain mean)."""
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_resamples)
    for x in per_task:
        idx = rng.integers(0, len(x), size=(n_resamples, len(x)))  # (R, n)
        reps += x[idx].mean(axis=1) / len(per_task)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_interval(values: Sequence[float], seed: int, n_resamples: int = N_RESAMPLES,
                  level: float = LEVEL) -> Interval:
    """Interval of a mean of per-item values (accuracy: 0/1) by bootstrap over items (iid)."""
    lo, hi = _bootstrap_means([np.asarray(values, dtype=np.float64)], seed, n_resamples, level)
    return Interval(lo, hi, level, "bootstrap percentile over items", n_resamples, seed)


def suite_mean_interval(per_task: Sequence[Sequence[float]], seed: int, n_resamples: int = N_RESAMPLES,
                        level: float = LEVEL) -> Interval:
    """Interval of the mean of task means, each task's items resampled on their own."""
    arrays = [np.asarray(v, dtype=np.float64) for v in per_task]
    lo, hi = _bootstrap_means(arrays, seed, n_resamples, level)
    return Interval(lo, hi, level, "bootstrap percentile over items, per task", n_resamples, seed)


@dataclass(frozen=True)
class Paired:
    """A − B on the same units (windows or items)."""

    metric: str
    a: float
    b: float
    diff: float
    ci: Interval
    p_value: float
    units: int
    test: str
    mcnemar_p: float | None = None  # per-item 0/1 scores: exact McNemar on the discordant items
    sign_flip_p: float | None = None  # perplexity: block sign-flips (a distribution-free check of p)

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "ci": self.ci.as_record(), "significant": self.significant}


def block_sign_flip_p(d: np.ndarray, b: int, n_resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p of mean(d) = 0: the differences in consecutive blocks of b (the last one shorter),
    every block's sign flipped together; all 2^k flips when that is at most ``n_resamples``."""
    if np.all(d == 0):
        return 1.0
    sums = np.add.reduceat(d, np.arange(0, len(d), b))  # (k,) per-block sums
    k = len(sums)
    if 2 ** k <= n_resamples:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=k)))  # (2^k, k), exact
        null = signs @ sums
        return float(np.mean(np.abs(null) >= abs(sums.sum()) - 1e-12))
    signs = rng.choice((-1.0, 1.0), size=(n_resamples, k))
    null = signs @ sums
    return float((1 + np.sum(np.abs(null) >= abs(sums.sum()) - 1e-12)) / (n_resamples + 1))


def mcnemar(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact McNemar p (two-sided binomial on the discordant items) of two runs' 0/1 per-item scores."""
    x, y = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_test(a: Sequence[float], b: Sequence[float], metric: str, seed: int, n_resamples: int = N_RESAMPLES,
                level: float = LEVEL) -> Paired:
    """Paired difference of two runs' per-unit values. ``metric="ppl"``: per-window mean NLLs in
    evaluation order, the difference reported in perplexity, block bootstrap and block sign-flips;
    otherwise per-item scores (iid), the difference of means, plus McNemar when they are 0/1."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired results need the same units: {x.shape} vs {y.shape}")
    rng = np.random.default_rng(seed)
    d = x - y  # (n,)
    if metric == "ppl":
        return _paired_ppl(x, y, d, rng, seed, n_resamples, level)
    lo, hi = _bootstrap_means([d], seed, n_resamples, level)  # items resampled jointly: the differences
    p = block_sign_flip_p(d, 1, n_resamples, rng)
    binary = bool(np.all(np.isin(x, (0.0, 1.0))) and np.all(np.isin(y, (0.0, 1.0))))
    ci = Interval(lo, hi, level, "paired bootstrap percentile over items", n_resamples, seed)
    return Paired(metric, float(np.mean(x)), float(np.mean(y)), float(np.mean(d)), ci, p, len(d),
                  "paired sign-flip permutation over items", mcnemar(x, y) if binary else None)


def _paired_ppl(x, y, d, rng, seed, n_resamples, level) -> Paired:
    n = len(d)
    b = block_length(d)
    va, vb = math.exp(float(np.mean(x))), math.exp(float(np.mean(y)))
    if n < 2:
        ci = Interval(va - vb, va - vb, level, "single window", 0, seed)
        return Paired("ppl", va, vb, va - vb, ci, 1.0, n, "none")
    idx = _block_indices(n, b, n_resamples, rng)  # (R, n), A and B resampled jointly
    reps = np.exp(x[idx].mean(axis=1)) - np.exp(y[idx].mean(axis=1))  # (R,)
    se, df = _block_se(reps, n, b)
    h = float(stats.t.ppf(0.5 + level / 2, df) * se)
    ci = Interval(va - vb - h, va - vb + h, level, "paired circular block bootstrap, t on n/b blocks",
                  n_resamples, seed, b)
    p = 1.0 if np.all(d == 0) else float(2 * stats.t.sf(abs(va - vb) / se, df)) if se > 0 else 0.0
    return Paired("ppl", va, vb, va - vb, ci, p, n, f"block bootstrap t, b={b}, df={df:g} (the interval's dual)",
                  sign_flip_p=block_sign_flip_p(d, b, n_resamples, rng))


@dataclass(frozen=True)
class VersusDraws:
    """One run A against a random control's draws B_1..B_k on the same windows / items.

    On log perplexity for ``metric="ppl"`` (shown back in perplexity), else on the scores."""

    metric: str
    a: float
    draws: list[float]
    center: float  # geometric mean of the draws (ppl) or their mean
    prediction: Interval  # 95% prediction interval of one more draw: what ``p_value`` tests
    p_value: float  # two-sided t-test of "A is one more draw" (normal draws, on the log scale)
    rank_p: float  # exact, one-sided: (1 + #draws at least as good as A) / (k + 1)
    beats: int  # draws that A beats with a significant paired test (on the windows / items)
    loses: int  # draws that beat A with a significant paired test
    test: str

    @property
    def k(self) -> int:
        return len(self.draws)

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "prediction": self.prediction.as_record(), "k": self.k,
                "significant": self.significant}


def versus_draws(a: Sequence[float], draws: Sequence[Sequence[float]], metric: str, seed: int,
                 lower_is_better: bool = True, n_resamples: int = N_RESAMPLES, level: float = LEVEL) -> VersusDraws:
    """Is A more than one more draw of a random control B? The draws are the unit of replication. On
    the log scale for perplexity (z = mean NLL; the draws are right-skewed in perplexity), H0 "A is
    exchangeable with the draws": t = (z_A − mean z_B)/(sd z_B·√(1 + 1/k)), Student t with k − 1 df
    (the prediction-interval test; the interval shown is that prediction interval, so it and p agree),
    and the distribution-free rank p (one-sided, toward "A is better"), which needs k ≥ 19 to reach
    0.05. ``beats`` / ``loses`` count single draws with a significant ``paired_test``."""
    if len(draws) < MIN_DRAWS:
        raise ValueError(f"a test against a random control needs at least {MIN_DRAWS} draws, got {len(draws)}: "
                         "run more seeds of the control (method.seed=...)")
    back = math.exp if metric == "ppl" else float
    z_a, z_b = float(np.mean(a)), np.array([float(np.mean(b)) for b in draws])  # log ppl or score; (k,)
    k = len(z_b)
    mean, se = float(z_b.mean()), float(z_b.std(ddof=1)) * math.sqrt(1 + 1 / k)  # se of one more draw
    q = float(stats.t.ppf(0.5 + level / 2, k - 1)) * se
    if se == 0:
        p = 1.0 if z_a == mean else 0.0
    else:
        p = float(2 * stats.t(df=k - 1).sf(abs(z_a - mean) / se))
    better_or_equal = np.sum(z_b <= z_a) if lower_is_better else np.sum(z_b >= z_a)
    rank_p = float((1 + better_or_equal) / (k + 1))
    per = [paired_test(a, b, "ppl" if metric == "ppl" else "score", seed_for(seed, i), n_resamples, level)
           for i, b in enumerate(draws)]
    improves = (lambda r: r.diff < 0) if lower_is_better else (lambda r: r.diff > 0)
    pred = Interval(back(mean - q), back(mean + q), level, f"t prediction interval of one more draw, k={k}", 0, seed)
    return VersusDraws(metric, back(z_a), [back(z) for z in z_b], back(mean), pred, p, rank_p,
                       sum(r.significant and improves(r) for r in per),
                       sum(r.significant and not improves(r) for r in per),
                       "t = (z_A − mean z_B)/(sd z_B·√(1+1/k)), df k−1, z = log ppl; rank p exact, one-sided")


def adjust(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values of a family of tests: ``holm`` (family-wise error), ``bh`` (false discovery
    rate, Benjamini–Hochberg) or ``none``."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"unknown adjustment {method!r}: use one of {', '.join(ADJUSTMENTS)}")
    ps = [float(p) for p in p_values]
    if not ps or ADJUSTMENTS[method] is None:
        return ps
    return [float(v) for v in multipletests(ps, alpha=ALPHA, method=ADJUSTMENTS[method])[1]]


def paired_suite_test(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], seed: int,
                      n_resamples: int = N_RESAMPLES, level: float = LEVEL) -> Paired:
    """Paired difference of two runs' suite means (Table 2's mean of task accuracies): ``a``, ``b`` are
    per-task per-item scores on the same items. The statistic is the mean over tasks of the per-task
    mean differences; the interval resamples each task's items on their own, A and B jointly (that is,
    each task's per-item differences: ``suite_mean_interval`` of them); the p-value is a sign-flip
    permutation test of the per-item differences, flipped independently within every task."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired suite results need the same tasks: {len(a)} vs {len(b)}")
    if any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
        raise ValueError("paired suite results need the same items in every task")
    d = [np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64) for x, y in zip(a, b, strict=True)]
    observed = float(np.mean([x.mean() for x in d]))
    ci = suite_mean_interval(d, seed, n_resamples, level)
    if all(np.all(x == 0) for x in d):
        p = 1.0
    else:
        rng = np.random.default_rng(seed)
        null = np.mean([(rng.choice((-1.0, 1.0), size=(n_resamples, len(x))) * x).mean(axis=1) for x in d], axis=0)
        p = float((1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (n_resamples + 1))
    value_a = float(np.mean([np.mean(x) for x in a]))
    value_b = float(np.mean([np.mean(y) for y in b]))
    interval = Interval(ci.low, ci.high, level, "paired bootstrap percentile over items, per task", n_resamples, seed)
    return Paired("score", value_a, value_b, observed, interval, p, sum(len(x) for x in d),
                  "paired permutation (sign flips within each task) of the per-item differences")


def seed_summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean ± sample std over calibration seeds (std 0 for one seed), with the per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
            "values": [float(x) for x in v]}
