"""Loss-aware sensitivities on a tiny model in float64: ``fisher`` equals its definition computed by
finite differences through the whole model; the ground truth is zero for a zero-error layer and equals
the directly measured loss increase of the full model; end-to-end runs with each criterion."""
import types

import pytest
import torch

from harness.inputs.model import ModelConfig, load_model
from harness.quantize.layers import linear_layers
from harness.quantize.loss_sensitivity import gradient_pass, low_bit_deltas, truth_pass, window_nll
from harness.quantize.primitives import QuantSpec, rtn
from harness.quantize.sequential import capture_inputs
from harness.run import execute
from methods.aptq import Aptq

TINY = ModelConfig(name="tiny", random_init={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                             "num_hidden_layers": 2, "num_attention_heads": 4,
                                             "num_key_value_heads": 2, "max_position_embeddings": 64,
                                             "vocab_size": 97})


def rms_norm_float64(self, h):
    """transformers' RMSNorm computes in float32 whatever the input; float64 here, for finite differences."""
    return self.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


@pytest.fixture(scope="module")
def tiny(cache_dir):
    """A tiny random LLaMA in float64 throughout, 2 windows of 6 random tokens, and its captured block inputs."""
    model, _, _ = load_model(TINY, "cpu", cache_dir, seed=0)
    model = model.double().eval()
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.forward = types.MethodType(rms_norm_float64, m)
    windows = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    inps, kwargs = capture_inputs(model, windows, "cpu")
    return model, windows, inps, kwargs


class RtnSolver:
    """A solver that ignores H (so a direct check needs no Hessian): 2-bit per-channel RTN."""

    def solve(self, W, H, bits):
        return rtn(W, QuantSpec(bits)).Q


def full_nll(model, windows):
    """Mean next-token NLL per window through the model's own forward (embedding to head): (n,)."""
    with torch.no_grad():
        return window_nll(model(input_ids=windows, use_cache=False).logits, windows)


def test_fisher_equals_its_finite_difference_definition(tiny):
    """fisher_l = ½ mean_w Σ_t (g_tᵀ ΔW x_t)², and g_tᵀ ΔW x_t = d/dε L_w(y_t + ε ΔW x_t): the output of layer l
    at token t alone moved along ΔW x_t. Central differences (ε = 1e-5) through the full forward; float64:
    agreement to rtol 1e-6 (the finite-difference error is O(ε²))."""
    model, windows, inps, kwargs = tiny
    deltas = low_bit_deltas(Aptq(Aptq.default_config()), model, inps, kwargs, 2)
    fisher = gradient_pass(model, inps, kwargs, windows, deltas)["fisher"]
    layers = linear_layers(model)
    eps, n, T = 1e-5, *windows.shape
    for name in list(layers)[::3]:  # every third layer: q, o, up of block 0, ... (all types are covered)
        total = 0.0
        for w in range(n):
            for t in range(T):
                def push(_m, inp, out, sign, t=t, name=name):
                    out = out.clone()
                    out[0, t] += sign * eps * (inp[0][0, t] @ deltas[name].t().double())
                    return out
                L = []
                for sign in (1, -1):
                    h = layers[name].register_forward_hook(lambda m, i, o, s=sign: push(m, i, o, s))
                    try:
                        L.append(float(full_nll(model, windows[w : w + 1])[0]))
                    finally:
                        h.remove()
                total += ((L[0] - L[1]) / (2 * eps)) ** 2
        assert fisher[name] == pytest.approx(0.5 * total / n, rel=1e-6), name
        assert fisher[name] > 0


def test_kfac_is_the_product_of_the_mean_squared_input_and_gradient(tiny):
    model, windows, inps, kwargs = tiny
    deltas = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in linear_layers(model).items()}
    tables = gradient_pass(model, inps, kwargs, windows, deltas)
    assert all(v == 0 for v in tables["fisher"].values())  # ΔW = 0: no loss increase
    name = "model.layers.1.mlp.down_proj"
    layer = linear_layers(model)[name]
    xs, gs = [], []
    def keep(_m, inp, out):
        xs.append(inp[0].detach())
        out.register_hook(gs.append)

    h1 = layer.register_forward_hook(keep)
    try:
        for w in range(windows.shape[0]):
            window_nll(model(input_ids=windows[w : w + 1], use_cache=False).logits, windows[w : w + 1]).sum().backward()
    finally:
        h1.remove()
        model.zero_grad(set_to_none=True)
    X, G = torch.cat(xs).flatten(0, 1), torch.cat(gs).flatten(0, 1)  # (n·T, d_in), (n·T, d_out)
    expect = (X.pow(2).sum(1).mean() / X.shape[1]) * (G.pow(2).sum(1).mean() / G.shape[1])
    assert tables["kfac"][name] == pytest.approx(float(expect), rel=1e-9)


def test_truth_is_zero_for_a_zero_error_layer_and_the_direct_loss_increase_otherwise(tiny):
    model, windows, inps, kwargs = tiny
    layers = linear_layers(model)
    exact = "model.layers.0.self_attn.k_proj"
    deltas = {n: RtnSolver().solve(m.weight.data, None, 2) - m.weight.data for n, m in layers.items()}
    deltas[exact] = torch.zeros_like(deltas[exact])  # a layer quantized without error
    truth = truth_pass(model, inps, kwargs, windows, deltas)
    assert set(truth["dnll"]) == set(layers)
    assert truth["dnll"][exact] == 0.0 and truth["kl"][exact] == 0.0
    base = full_nll(model, windows)
    for name in ("model.layers.0.mlp.gate_proj", "model.layers.1.self_attn.o_proj"):
        W = layers[name].weight.data.clone()
        layers[name].weight.data.copy_(W + deltas[name])
        try:
            direct = float((full_nll(model, windows) - base).mean())
        finally:
            layers[name].weight.data.copy_(W)
        assert truth["dnll"][name] == pytest.approx(direct, rel=1e-9, abs=1e-12) and truth["kl"][name] > 0
    assert torch.equal(full_nll(model, windows), base)  # every weight restored


@pytest.mark.parametrize("crit", ["fisher", "kfac", "measured", "trace_inv"])
def test_each_criterion_runs_end_to_end_with_the_knapsack(tiny_cfg, crit):
    rec = execute(tiny_cfg("method=aptq", "ratio=0.5", f"method.sensitivity={crit}", "method.allocator=knapsack",
                           "method.truth_windows=2", "task=[wikitext2]"))
    q = rec["quantization"]
    a = q["allocation"]
    assert a["allocator"] == "knapsack" and a["criterion"] == crit and a["budget_bits"] == 3.0
    assert a["achieved_bits"] <= 3.0 + 1e-12 and q["avg_bits"] == pytest.approx(a["achieved_bits"])
    assert set(q["bit_plan"].values()) <= {2, 4} and len(q["sensitivity"]["scores"]) == len(q["bit_plan"])
    if crit == "measured":
        assert set(q["sensitivity"]["tables"]) == {"dnll", "kl"}
    assert rec["method"]["label"] == f"APTQ-50% {crit} knapsack" + (" tw2" if crit == "measured" else "")


def test_three_widths_and_the_default_greedy_record(tiny_cfg):
    rec = execute(tiny_cfg("method=aptq", "ratio=0.5", "method.allocator=knapsack", "method.choices=[2,3,4]",
                           "task=[wikitext2]"))
    q = rec["quantization"]
    assert q["allocation"]["choices"] == [2, 3, 4] and q["avg_bits"] <= 3.0 + 1e-12
    assert rec["method"]["label"] == "APTQ-50% knapsack b234" and not rec["capabilities"]["packable"]
    rec = execute(tiny_cfg("method=aptq", "ratio=0.5", "task=[wikitext2]"))
    assert rec["quantization"]["allocation"]["allocator"] == "greedy" and rec["method"]["label"] == "APTQ-50%"
