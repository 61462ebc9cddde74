"""Bit allocation of mixed-precision methods: which bit width each linear layer gets under a budget.

Both allocators read per-layer scores ``s_l`` (higher = more sensitive) and layer sizes ``n_l``
(weights). The budget is an average over the quantized weights, ``B = high·ratio + low·(1 − ratio)``
bits (``ratio`` = the fraction of weights at ``high`` when only {low, high} are used).

- ``greedy`` (APTQ's): layers high → low by score get ``high`` while the high-bit weights stay within
  ``ratio``; a layer that would overshoot is skipped and the scan goes on.
- ``knapsack``: minimise the summed per-layer cost ``Σ_l c_l(b_l)`` subject to ``Σ_l n_l b_l ≤ B Σ_l n_l``,
  exactly, by dynamic programming over weight units (``unit`` = the gcd of the layer sizes: 110,592
  weights on SmolLM2, 960 units in all). A score is the cost at ``low`` bits; at ``b`` bits it is
  ``s_l · 4^(low − b)`` (a uniform grid's squared error scales with its step², which halves per bit),
  so with {2, 4} the plan maximises ``Σ s_l`` over the 4-bit layers: a 0/1 knapsack. When the gcd
  makes the table too large, the layer sizes are rounded *up* to a coarser unit: the plan still never
  exceeds the budget, but is then optimal only for the rounded sizes (``exact: false`` in its info).
"""
from __future__ import annotations

import logging
import math
from functools import reduce
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ALLOCATORS = ("greedy", "knapsack")
MAX_CAPACITY = 200_000  # DP table columns; beyond it the unit is coarsened (sizes rounded up)


def budget_bits(ratio: float, high: int, low: int) -> float:
    """Average bits per quantized weight of the {low, high} mix with ``ratio`` of the weights at ``high``."""
    return high * ratio + low * (1 - ratio)


def greedy(scores: dict[str, float], numel: dict[str, int], ratio: float, high: int, low: int) -> dict[str, int]:
    """Greedy 2/4 plan: most sensitive first get ``high`` bits within ``ratio`` of the weights (model order)."""
    total = sum(numel.values())
    budget, used = ratio * total, 0
    order = sorted(numel, key=lambda n: -scores[n])  # stable: ties keep model order
    plan = {}
    for name in order:
        if used + numel[name] <= budget * (1 + 1e-12):
            plan[name], used = high, used + numel[name]
        else:
            plan[name] = low
    return {name: plan[name] for name in numel}


def layer_costs(scores: dict[str, float], choices: tuple[int, ...], low: int) -> dict[str, dict[int, float]]:
    """``c_l(b) = s_l · 4^(low − b)``: a score is the cost at ``low`` bits (module docstring)."""
    return {n: {b: float(s) * 4.0 ** (low - b) for b in choices} for n, s in scores.items()}


def knapsack(costs: dict[str, dict[int, float]], numel: dict[str, int], budget: float
             ) -> tuple[dict[str, int], dict[str, Any]]:
    """The plan ``{layer: bits}`` minimising ``Σ costs[l][b_l]`` with ``Σ n_l b_l ≤ budget · Σ n_l``.

    Dynamic programming over the extra bits above the lowest choice, in weight units: state ``c`` =
    extra bit-units used so far (≤ capacity), one row of back-pointers per layer. Returns the plan (model
    order) and its info (unit, exact, cost, achieved average bits).
    """
    names = list(numel)
    choices = sorted({b for c in costs.values() for b in c})
    low = choices[0]
    total = sum(numel.values())
    unit, exact = reduce(math.gcd, numel.values()), True
    capacity = math.floor((budget - low) * total / unit + 1e-9)
    if capacity < 0:
        raise ValueError(f"budget {budget} bits is below the lowest choice {low}")
    if capacity > MAX_CAPACITY:
        unit = math.ceil((budget - low) * total / MAX_CAPACITY)
        capacity, exact = math.floor((budget - low) * total / unit + 1e-9), False
        log.warning("knapsack: layer sizes share no coarse unit; rounded up to %d weights (optimal for the "
                    "rounded sizes, within the budget)", unit)
    units = {n: math.ceil(numel[n] / unit) for n in names}  # exact when unit divides every size
    INF = math.inf
    dp = np.full(capacity + 1, INF)
    dp[0] = 0.0
    back = np.zeros((len(names), capacity + 1), dtype=np.int16)  # index into choices
    for i, n in enumerate(names):
        new = np.full(capacity + 1, INF)
        arg = np.zeros(capacity + 1, dtype=np.int16)
        for k, b in enumerate(choices):
            w = (b - low) * units[n]  # extra bit-units of this layer at b bits
            if w > capacity:
                continue
            cand = np.full(capacity + 1, INF)
            cand[w:] = dp[: capacity + 1 - w] + costs[n][b]
            better = cand < new  # strict: ties keep the lower width (fewer bits for the same cost)
            new[better], arg[better] = cand[better], k
        dp, back[i] = new, arg
    c = int(np.argmin(dp))  # least cost; among equal costs the fewest bits
    if not math.isfinite(dp[c]):
        raise ValueError("no plan fits the budget")
    plan: dict[str, int] = {}
    for i in range(len(names) - 1, -1, -1):
        b = choices[int(back[i, c])]
        plan[names[i]] = b
        c -= (b - low) * units[names[i]]
    plan = {n: plan[n] for n in names}
    achieved = sum(numel[n] * b for n, b in plan.items()) / total
    return plan, {"unit": unit, "exact": exact, "cost": float(sum(costs[n][b] for n, b in plan.items())),
                  "achieved_bits": achieved}


def allocate(allocator: str, scores: dict[str, float], numel: dict[str, int], ratio: float, high: int, low: int,
             choices: tuple[int, ...] | None = None) -> tuple[dict[str, int], dict[str, Any]]:
    """The plan and the record's ``allocation`` info (allocator, budget, achieved bits, fractions)."""
    budget = budget_bits(ratio, high, low)
    info: dict[str, Any] = {"allocator": allocator, "budget_bits": budget}
    if allocator == "greedy":
        plan = greedy(scores, numel, ratio, high, low)
        info["choices"] = [low, high]
    elif allocator == "knapsack":
        choices = tuple(sorted(choices or (low, high)))
        plan, extra = knapsack(layer_costs(scores, choices, low), numel, budget)
        info.update(choices=list(choices), **extra)
    else:
        raise ValueError(f"unknown allocator {allocator!r}")
    total = sum(numel.values())
    info["achieved_bits"] = sum(numel[n] * b for n, b in plan.items()) / total
    info["layers_per_width"] = {str(b): sum(1 for v in plan.values() if v == b)
                                for b in sorted(set(plan.values()), reverse=True)}
    return plan, info
