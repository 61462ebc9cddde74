"""AWQ (methods.awq): the scale and clipping searches reduce the layer output error against RTN; the layer's
grid with its per-input-channel scale packs, and the packed model computes the fake-quant model's logits."""
import dataclasses

import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.packed.checkpoint import load_packed
from harness.packed.qlinear import QuantLinear
from harness.plugins.hookspecs import RunContext
from harness.quantize.primitives import QuantSpec, quantize, rtn
from harness.run import load, pack, plan
from harness.run import quantize as quantize_phase
from methods.awq import Awq, apply_clip, output_error, scale_candidates, search_clip, search_scale


@pytest.fixture
def outlier_inputs(correlated_inputs):
    def make(n=512, d=64, loud=(5, 13), seed=0):
        X = correlated_inputs(n=n, d=d, seed=seed)
        X[:, list(loud)] *= 30  # a few input channels with large activations, as in LLMs
        return X

    return make


def test_the_grid_starts_at_rtn_and_is_normalised():
    x = torch.tensor([0.5, 2.0, 8.0])
    (a0, s0), *_, (a_last, s_last) = scale_candidates(x, 20)
    assert a0 == 0 and torch.equal(s0, torch.ones(3)) and a_last == pytest.approx(0.95)
    assert float(s_last.max() * s_last.min()) == pytest.approx(1.0)


@pytest.mark.parametrize("bits,group_size", [(3, -1), (4, 16), (3, 16)])
def test_scale_search_beats_rtn_with_an_outlier_channel(bits, group_size, hessian, outlier_inputs):
    torch.manual_seed(0)
    W, X = torch.randn(48, 64), outlier_inputs()
    H, spec = hessian(X), QuantSpec(bits, group_size)
    alpha, s, history = search_scale([W], [H], X.abs().mean(0), spec, 20)
    assert history[0] == pytest.approx(output_error(rtn(W, spec).Q - W, H), rel=1e-5)  # α = 0 is RTN
    assert alpha > 0 and min(history) < 0.9 * history[0]
    assert s[5] > s.median() and s[13] > s.median()  # the loud channels are scaled up (protected)


def test_scale_search_on_plain_inputs_never_loses_to_rtn(hessian, correlated_inputs):
    torch.manual_seed(1)
    W, X = torch.randn(32, 64), correlated_inputs(seed=3)
    _, _, history = search_scale([W], [hessian(X)], X.abs().mean(0), QuantSpec(4), 20)
    assert min(history) <= history[0]


def test_clipping_search_lowers_each_groups_error(hessian, correlated_inputs):
    torch.manual_seed(0)
    W, H, spec = torch.randn(32, 64) ** 3, hessian(correlated_inputs()), QuantSpec(3, 16)  # heavy tails
    max_val = search_clip(W, H, spec, 20, 0.5)  # (32, 4)
    org = W.reshape(32, 4, 16).abs().amax(-1)
    assert max_val.shape == (32, 4) and torch.all(max_val <= org) and (max_val < org).float().mean() > 0.3
    Wc = apply_clip(W, max_val)
    assert output_error(rtn(Wc, spec).Q - W, H) < output_error(rtn(W, spec).Q - W, H)


@pytest.mark.parametrize("solver", ["rtn", "gptq"])
def test_the_method_reduces_held_out_output_error_against_rtn(solver, outlier_inputs):
    """collect → quantize_layer on one layer; the error is measured on inputs it was not calibrated on."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64, bias=False)
    W = lin.weight.data.clone()
    X = outlier_inputs(n=512)  # one distribution: the first half calibrates, the second half tests
    X_cal, X_test = X[:256], X[256:]
    m = Awq(Awq.default_config(bits=3, group_size=16, solver=solver))
    inps = X_cal.reshape(4, 64, 64)  # (n, T, d): four calibration windows through the "block" (the layer)
    m.collect(lin, {"l": lin}, inps, {})
    res = m.quantize_layer("l", lin, m.spec(3))
    err = lambda Q: float(((Q - W) @ X_test.t()).norm())  # noqa: E731
    assert err(lin.weight.data) < 0.85 * err(rtn(W, m.spec(3)).Q)
    assert res.info["alpha"] > 0 and res.info["output_err"] < res.info["output_err_rtn"]
    assert res.info["err"] == pytest.approx(float((lin.weight.data - W).norm() / W.norm()))  # measured, not 0
    assert "packable" not in res.info and res.grid.input_scale is not None


@pytest.mark.parametrize("solver,static", [("rtn", False), ("gptq", False), ("gptq", True)])
def test_the_returned_grid_holds_the_scaled_weights(solver, static, outlier_inputs):
    """W_fake·diag(s) lies on the returned grid, s is fp16 exactly, and the record counts s's 2·K bytes."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 64, bias=False)  # the "block" of collect: shape-preserving
    m = Awq(Awq.default_config(bits=4, group_size=16, solver=solver, act_order=static, static_groups=static))
    m.collect(lin, {"l": lin}, outlier_inputs(n=256).reshape(4, 64, 64), {})
    spec = m.spec(4)
    res = m.quantize_layer("l", lin, spec)
    grid, s = res.grid, res.grid.input_scale  # s: (64,)
    assert grid.g_idx is None and s.shape == (64,) and not torch.all(s == 1)
    assert torch.equal(s, s.half().float())
    Ws = lin.weight.data * s  # (64, 64): the weights on the grid
    sc, z = grid.scale.repeat_interleave(16, 1), grid.zero.repeat_interleave(16, 1)  # (64, 64)
    assert torch.allclose(quantize(Ws, sc, z, 15), Ws, atol=1e-5 * float(sc.max()))
    assert res.info["bits_per_weight_with_overhead"] == pytest.approx(4 + spec.overhead_bits(64) + 16 / 64)


def test_layers_that_read_one_input_share_one_scale(outlier_inputs):
    torch.manual_seed(0)

    class Two(nn.Module):  # two projections of the same input, summed (shape-preserving, like a block)
        def __init__(self):
            super().__init__()
            self.q_proj, self.v_proj = nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)

        def forward(self, x):
            return self.q_proj(x) + self.v_proj(x)

    blk = Two()
    m = Awq(Awq.default_config(bits=3, group_size=16))
    m.collect(blk, {"a.q_proj": blk.q_proj, "a.v_proj": blk.v_proj}, outlier_inputs(n=256).reshape(4, 64, 64), {})
    assert torch.equal(m.scales["a.q_proj"][1], m.scales["a.v_proj"][1])
    assert m.quantize_layer("a.q_proj", blk.q_proj, m.spec(3)).info["clipped"] is False  # q is never clipped
    assert m.quantize_layer("a.v_proj", blk.v_proj, m.spec(3)).info["clipped"] is True


def test_config_is_checked():
    with pytest.raises(ConfigError, match="solver='omni' is unknown"):
        Awq.default_config(solver="omni")
    with pytest.raises(ConfigError, match="max_shrink=1.0 must be in"):
        Awq.default_config(max_shrink=1.0)
    assert Awq(Awq.default_config()).pack_refusal() is None
    assert Awq(Awq.default_config(group_size=64, act_order=True)).pack_refusal() is None  # RTN's grid: no order
    assert "static_groups=true" in Awq(Awq.default_config(solver="gptq", group_size=64, act_order=True)).pack_refusal()
    assert Awq(Awq.default_config(solver="gptq", group_size=64, act_order=True, static_groups=True)
               ).pack_refusal() is None
    assert "per-input-channel activation scales" in Awq(Awq.default_config()).export_refusal()
    assert Awq(Awq.default_config(group_size=64)).label() == "AWQ g64"
    assert Awq(Awq.default_config(solver="gptq", act_order=True)).label() == "AWQ+GPTQ act"


TINY_WINDOWS = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))  # (n, T) token ids


@pytest.mark.parametrize("solver,extra", [("rtn", ()), ("gptq", ("act_order=true", "method.static_groups=true"))])
def test_awq_packs_saves_and_loads_with_the_fake_quant_logits(solver, extra, tiny_cfg, monkeypatch):
    """plan → quantize → pack (parity) → save → load on the tiny LLaMA; bytes count the input scales."""
    monkeypatch.setattr("harness.packed.ops.interpreting", lambda: False)  # the reference op (as test_families)
    p = plan(tiny_cfg("method=awq", "bits=4", "group_size=16", f"method.solver={solver}", "task=[wikitext2]",
                      *extra))
    assert p.method.capabilities().packable
    m = load(p)
    run = RunContext(run_id=p.run_id, config=p.cfg, results_dir=p.results_dir, identity=p.identity)
    quant, grids, _ = quantize_phase(p, m, run)
    assert set(grids) == set(quant["layers"]) and all(g.input_scale is not None for g in grids.values())
    assert any(i["alpha"] > 0 for i in quant["layers"].values())  # some scales are not 1
    shapes = {n: (i["numel"] // m.model.get_submodule(n).in_features, m.model.get_submodule(n).in_features)
              for n, i in quant["layers"].items()}  # (N, K)
    n_weights = sum(N * K for N, K in shapes.values())
    nominal = sum(N * K * (4 + (16 + 4) / 16) + 16 * K for N, K in shapes.values()) / n_weights
    assert quant["avg_bits_with_overhead"] == pytest.approx(nominal)  # every linear layer is quantized

    saved = pack(dataclasses.replace(p, pack=True, save=True), m, quant, grids)
    par = quant["parity"]
    assert par["max_abs_logit_err"] < 1e-3 and abs(par["ppl_diff"]) < 1e-4 * par["ppl_fake_quant"]
    qls = {n: q for n, q in m.model.named_modules() if isinstance(q, QuantLinear)}
    assert len(qls) == 14 and all(q.input_scale is not None for q in qls.values())
    meas = quant["measured"]
    assert meas["packed_input_scale_bytes"] == sum(2 * K for _, K in shapes.values())
    assert meas["measured_avg_bits"] == pytest.approx(  # 4-bit codes, fp16 scale + zero per 16, fp16 s per input
        sum(N * K * (4 + 32 / 16) + 16 * K for N, K in shapes.values()) / n_weights)
    assert saved["packed_layer_bytes"] == meas["packed_bytes"]

    with torch.no_grad():
        logits = m.model(input_ids=TINY_WINDOWS).logits  # (2, 32, V)
        loaded, meta = load_packed(saved["path"], torch.float32, "cpu")
        assert torch.equal(loaded(input_ids=TINY_WINDOWS).logits, logits)
        assert all(e.get("input_scale") is True for e in meta["bit_map"].values())
        for q in qls.values():  # the control: a packed model that ignored s would not match
            q.input_scale.fill_(1)
        assert (m.model(input_ids=TINY_WINDOWS).logits - logits).abs().max() > 100 * max(par["max_abs_logit_err"], 1e-5)
