"""Bit allocation: the knapsack is the optimum (checked by brute force), never exceeds the budget, and
the greedy rank cut is never better than it on the same costs."""
import itertools
import math

import pytest
import torch

import harness.quantize.allocation as alloc
from harness.quantize.allocation import allocate, budget_bits, greedy, knapsack, layer_costs


def instance(seed: int, n: int, unit: int = 7):
    g = torch.Generator().manual_seed(seed)
    numel = {f"l{i}": unit * int(k) for i, k in enumerate(torch.randint(1, 9, (n,), generator=g))}
    scores = {name: float(s) for name, s in zip(numel, torch.rand(n, generator=g).pow(3) * 10, strict=True)}
    return scores, numel


def brute_force(costs, numel, budget):
    """The least summed cost of every plan within the budget (all |choices|^n plans)."""
    names, total = list(numel), sum(numel.values())
    choices = sorted(next(iter(costs.values())))
    best = math.inf
    for bits in itertools.product(choices, repeat=len(names)):
        if sum(numel[n] * b for n, b in zip(names, bits, strict=True)) <= budget * total + 1e-9:
            best = min(best, sum(costs[n][b] for n, b in zip(names, bits, strict=True)))
    return best


def plan_bits(plan, numel):
    return sum(numel[n] * b for n, b in plan.items()) / sum(numel.values())


@pytest.mark.parametrize("choices", [(2, 4), (2, 3, 4)])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_knapsack_is_the_brute_force_optimum_within_the_budget(seed, ratio, choices):
    scores, numel = instance(seed, 7)
    costs = layer_costs(scores, choices, 2)
    budget = budget_bits(ratio, 4, 2)
    plan, info = knapsack(costs, numel, budget)
    assert plan_bits(plan, numel) <= budget + 1e-12 and info["exact"] and info["unit"] % 7 == 0
    assert set(plan.values()) <= set(choices) and list(plan) == list(numel)  # model order
    assert info["cost"] == pytest.approx(sum(costs[n][b] for n, b in plan.items()))
    assert info["cost"] == pytest.approx(brute_force(costs, numel, budget), rel=1e-12)
    # the paper's greedy rank cut on the same costs is feasible and never better
    g = greedy(scores, numel, ratio, 4, 2)
    assert plan_bits(g, numel) <= budget + 1e-12
    assert sum(costs[n][b] for n, b in g.items()) >= info["cost"] - 1e-9


def test_knapsack_beats_the_greedy_where_the_rank_cut_skips():
    """Budget 400 of 800 weights: greedy takes a (score 10, 300) then cannot fit b or c (200 each);
    the optimum is b + c (scores 9 + 9 > 10)."""
    numel = {"a": 300, "b": 200, "c": 200, "d": 100}
    scores = {"a": 10.0, "b": 9.0, "c": 9.0, "d": 0.0}
    assert greedy(scores, numel, 0.5, 4, 2) == {"a": 4, "b": 2, "c": 2, "d": 4}
    plan, info = allocate("knapsack", scores, numel, 0.5, 4, 2)
    assert plan == {"a": 2, "b": 4, "c": 4, "d": 2}
    assert info["budget_bits"] == 3.0 and info["achieved_bits"] == 3.0 and info["allocator"] == "knapsack"


def test_coarse_unit_rounds_sizes_up_and_stays_within_the_budget(monkeypatch):
    monkeypatch.setattr(alloc, "MAX_CAPACITY", 5)
    scores, numel = instance(3, 7, unit=1)
    for ratio in (0.3, 0.5, 0.8):
        budget = budget_bits(ratio, 4, 2)
        plan, info = knapsack(layer_costs(scores, (2, 3, 4), 2), numel, budget)
        assert not info["exact"] and plan_bits(plan, numel) <= budget + 1e-12


def test_extremes_and_ties():
    numel = {"a": 10, "b": 10}
    plan, info = allocate("knapsack", {"a": 1.0, "b": 1.0}, numel, 0.0, 4, 2)
    assert plan == {"a": 2, "b": 2} and info["achieved_bits"] == 2
    plan, _ = allocate("knapsack", {"a": 1.0, "b": 2.0}, numel, 1.0, 4, 2, (2, 3, 4))
    assert plan == {"a": 4, "b": 4}
    plan, _ = allocate("knapsack", {"a": 0.0, "b": 0.0}, numel, 1.0, 4, 2)  # no gain: the fewer bits
    assert plan == {"a": 2, "b": 2}
