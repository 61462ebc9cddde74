"""Uncertainty of every figure, from the raw per-window / per-item results kept in the record.

- Perplexity ``exp(mean NLL)`` over n evaluation windows: a percentile bootstrap over windows
  (``scipy.stats.bootstrap``), seeded, ``n_resamples`` recorded. Windows are the resampling unit
  (tokens inside a window are not independent).
- Accuracy (per-item 0/1): lm-eval's standard error, and the same bootstrap over items.
- A suite mean (Table 2's mean of five task accuracies): each task resampled on its own items
  (independent samples), the statistic the mean of the task means.
- Paired comparison of two runs on the same windows / items: the difference A − B with a paired
  bootstrap interval (windows or items resampled jointly) and a two-sided p-value from a paired
  permutation test (sign flips of the per-unit differences, ``scipy.stats.permutation_test``).
  For perplexity the tested statistic is the mean NLL difference (ppl is monotone in it).
- A run against a random control's k draws (``versus_draws``): the draws are the replication unit;
  H0 "A is one more draw" is tested on the paired differences A − B_d with the prediction-interval
  t-test, plus how many single draws A beats or loses to with a significant paired test.

Display style (one, everywhere): ``value ± h`` where ``h`` is half the width of the 95% interval
(the exact, possibly asymmetric bounds are in the record as ``*_ci``); over calibration seeds,
``mean ± std (n=k)``. A figure without raw arrays (older records) shows ``± –``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95
N_RESAMPLES = 2000
SEED = 0
ALPHA = 0.05  # significance level of the paired tests


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float
    method: str
    n_resamples: int
    seed: int

    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def _bootstrap(samples: Sequence[np.ndarray], statistic, paired: bool, n_resamples: int, seed: int,
               level: float) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` (each sample a 1-D array)."""
    if min(len(s) for s in samples) < 2:
        v = float(statistic(*samples, axis=-1))
        return v, v
    res = stats.bootstrap(tuple(samples), statistic, paired=paired, vectorized=True, n_resamples=n_resamples,
                          confidence_level=level, method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _exp_mean(x, axis=-1):
    return np.exp(np.mean(x, axis=axis))


def ppl_interval(window_nll: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                 level: float = LEVEL) -> Interval:
    """Interval of ``exp(mean NLL)`` by bootstrap over windows; ``window_nll`` (n,) mean NLL per window."""
    lo, hi = _bootstrap([np.asarray(window_nll, dtype=np.float64)], _exp_mean, False, n_resamples, seed, level)
    return Interval(lo, hi, level, "bootstrap percentile over windows", n_resamples, seed)


def mean_interval(values: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                  level: float = LEVEL) -> Interval:
    """Interval of a mean of per-item values (accuracy: 0/1) by bootstrap over items."""
    lo, hi = _bootstrap([np.asarray(values, dtype=np.float64)], np.mean, False, n_resamples, seed, level)
    return Interval(lo, hi, level, "bootstrap percentile over items", n_resamples, seed)


def suite_mean_interval(per_task: Sequence[Sequence[float]], n_resamples: int = N_RESAMPLES, seed: int = SEED,
                        level: float = LEVEL) -> Interval:
    """Interval of the mean of task means, each task's items resampled on their own."""
    def mean_of_means(*xs, axis=-1):
        return np.mean([np.mean(x, axis=axis) for x in xs], axis=0)

    arrays = [np.asarray(v, dtype=np.float64) for v in per_task]
    lo, hi = _bootstrap(arrays, mean_of_means, False, n_resamples, seed, level)
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

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "ci": self.ci.as_record(), "significant": self.significant}


def _mean_diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def paired_test(a: Sequence[float], b: Sequence[float], metric: str, n_resamples: int = N_RESAMPLES,
                seed: int = SEED, level: float = LEVEL) -> Paired:
    """Paired difference of two runs' per-unit values (``metric="ppl"``: per-window mean NLLs, the
    difference is reported in perplexity; otherwise per-item scores, the difference of means)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired results need the same units: {x.shape} vs {y.shape}")
    rng = np.random.default_rng(seed)
    if metric == "ppl":
        def statistic(u, v, axis=-1):
            return _exp_mean(u, axis) - _exp_mean(v, axis)
    else:
        statistic = _mean_diff
    lo, hi = _bootstrap([x, y], statistic, True, n_resamples, seed, level)
    d = x - y
    if np.all(d == 0):
        p = 1.0
    else:
        res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_resamples,
                                     alternative="two-sided", random_state=rng, vectorized=True)
        p = float(res.pvalue)
    value_a = float(_exp_mean(x)) if metric == "ppl" else float(np.mean(x))
    value_b = float(_exp_mean(y)) if metric == "ppl" else float(np.mean(y))
    ci = Interval(lo, hi, level, "paired bootstrap percentile", n_resamples, seed)
    return Paired(metric, value_a, value_b, value_a - value_b, ci, p, len(d),
                  "paired permutation (sign flips) of the per-unit differences")


@dataclass(frozen=True)
class VersusDraws:
    """One run A against a random control's draws B_1..B_k on the same windows / items."""

    metric: str
    a: float
    draws: list[float]
    diff_mean: float  # mean over draws of (A − B_d)
    diff_std: float
    t_ci: Interval  # t interval of the mean difference over draws
    p_value: float  # H0: A is exchangeable with the draws (prediction-interval t-test)
    beats: int  # draws that A beats with a significant paired test (on the windows / items)
    loses: int  # draws that beat A with a significant paired test
    test: str

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "t_ci": self.t_ci.as_record(), "significant": self.significant}


def versus_draws(a: Sequence[float], draws: Sequence[Sequence[float]], metric: str, lower_is_better: bool = True,
                 n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> VersusDraws:
    """Is A more than one more draw of a random control B? The draws are the unit of replication
    (their spread is what a single draw cannot show). With the paired differences d_i = A − B_i
    (same windows / items, so the evaluation noise mostly cancels), H0 is that A is exchangeable
    with the draws: t = mean(d) / (sd(d)·√(1 + 1/k)), Student t with k − 1 degrees of freedom
    (the prediction-interval test; a one-sample t-test of mean(d) = 0 would instead flag about half
    of the control's own draws, which do differ from its mean). ``t_ci`` is the t interval of
    A − E[B] (sd(d)/√k). ``beats`` / ``loses`` count the single draws with a significant
    ``paired_test``."""
    if len(draws) < 2:
        raise ValueError(f"a test against a random control needs at least 2 draws, got {len(draws)}")
    per = [paired_test(a, b, metric, n_resamples, seed, level) for b in draws]
    d = np.array([p.diff for p in per])
    k = len(d)
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0.0:
        p_value, lo, hi = (1.0 if mean == 0 else 0.0), mean, mean
    else:
        t = stats.t(df=k - 1)
        p_value = float(2 * t.sf(abs(mean) / (sd * np.sqrt(1 + 1 / k))))
        q = float(t.ppf(0.5 + level / 2)) * sd / np.sqrt(k)
        lo, hi = mean - q, mean + q
    better = (lambda p: p.diff < 0) if lower_is_better else (lambda p: p.diff > 0)
    return VersusDraws(metric, per[0].a, [p.b for p in per], mean, sd,
                       Interval(lo, hi, level, f"t interval over {k} draws", 0, seed), p_value,
                       sum(p.significant and better(p) for p in per),
                       sum(p.significant and not better(p) for p in per),
                       "A exchangeable with the draws: t = mean(d)/(sd(d)·sqrt(1+1/k)), df k-1, d_i = A - B_i")


def paired_suite_test(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], n_resamples: int = N_RESAMPLES,
                      seed: int = SEED, level: float = LEVEL) -> Paired:
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
    ci = suite_mean_interval(d, n_resamples, seed, level)
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


def fmt_pm(value_text: str, half: float | None, fmt) -> str:
    """``value ± h`` (the display style), ``± –`` when there is no interval."""
    return f"{value_text} ± {fmt(half) if half is not None else '–'}"
