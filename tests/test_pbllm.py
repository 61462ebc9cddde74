import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.quantize.driver import reported_bits, summarize
from harness.quantize.primitives import QuantSpec, find_params, quantize
from methods.gptq import inverse_hessian_factor
from methods.pbllm import Pbllm, pb_bits, pb_quantize, salient_mask


@pytest.mark.parametrize("frac,bits", [(0.1, 2.7), (0.2, 3.4), (0.3, 4.1)])
def test_average_bits_are_the_papers_figures(frac, bits):
    torch.manual_seed(0)
    layer = nn.Linear(20, 10, bias=False)  # 200 weights: f · 200 salient exactly
    m = Pbllm(Pbllm.default_config(salient_frac=frac, salience="magnitude", compensate=False))
    info = m.quantize_layer("l", layer, m.spec(8)).info
    assert info["salient"] == round(frac * 200)
    assert info["bits_per_weight"] == bits == pb_bits(info["salient"], 200)  # 8f + (1 − f) + 1, exactly
    assert info["bits_per_weight_with_overhead"] == bits + (16 + 16 + 8) / 20
    assert pb_bits(1, 3, high_bits=4) == (4 + 2 + 3) / 3


def test_plain_partial_binarization():
    torch.manual_seed(0)
    W = torch.randn(16, 64)
    Q, stats = pb_quantize(W, None, Pbllm.default_config(salient_frac=0.25, salience="magnitude", compensate=False))
    salient = W.abs() >= W.abs().flatten().kthvalue(W.numel() - 256 + 1).values  # the 25 % largest |w|
    assert stats["salient"] == 256 and torch.equal(salient, salient_mask(W, None, 0.25, "magnitude"))
    scale, zero = find_params(W, 8, sym=False)  # the row's 8-bit grid
    assert torch.equal(Q[salient], quantize(W, scale, zero, 255)[salient])
    alpha = (W.abs() * ~salient).sum(1) / (~salient).sum(1)  # mean |w| of the binarized part, per row
    expect = torch.where(W >= 0, 1.0, -1.0) * alpha.unsqueeze(1)
    assert torch.allclose(Q[~salient], expect[~salient])


def test_hessian_salience_is_w2_over_hinv_diag2(correlated_inputs, hessian):
    torch.manual_seed(0)
    X = correlated_inputs()
    X[:, 7] *= 30  # a loud input: its weights matter more
    W, H = torch.randn(16, 64), hessian(X)
    Hinv, _ = inverse_hessian_factor(H, 0.01)
    mask = salient_mask(W, Hinv, 0.1, "hessian")
    score = W**2 / torch.diag(Hinv).unsqueeze(0) ** 2
    assert score[mask].min() >= score[~mask].max()
    assert mask[:, 7].float().mean() > 0.9 > mask.float().mean()  # the loud column is almost all salient


@pytest.mark.parametrize("salience", ["magnitude", "hessian"])
def test_error_compensation_beats_none(salience, correlated_inputs, hessian):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), correlated_inputs()
    H = hessian(X)
    err = {}
    for compensate in (False, True):
        Q, _ = pb_quantize(W, H, Pbllm.default_config(salient_frac=0.2, salience=salience, compensate=compensate))
        err[compensate] = ((W - Q) @ X.t()).norm()
    assert err[True] < 0.95 * err[False]


def test_more_salient_weights_less_error(correlated_inputs, hessian):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), correlated_inputs()
    H = hessian(X)
    errs = [((W - pb_quantize(W, H, Pbllm.default_config(salient_frac=f))[0]) @ X.t()).norm() for f in (0.1, 0.2, 0.3)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("options,message", [
    ({"salient_frac": 0.0}, "salient_frac=0.0 is outside (0, 1)"),
    ({"salient_frac": 1.0}, "salient_frac=1.0 is outside (0, 1)"),
    ({"salient_frac": -0.2}, "salient_frac=-0.2 is outside (0, 1)"),
    ({"salience": "hesian"}, "salience='hesian' is unknown; choose one of magnitude, hessian"),
    ({"high_bits": 5}, "bits=5 is not supported"),
])
def test_bad_settings_are_one_line(options, message):
    with pytest.raises(ConfigError) as err:
        Pbllm.default_config(**options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_calibration_only_when_needed():
    assert not Pbllm(Pbllm.default_config(salience="magnitude", compensate=False)).needs_calibration
    assert Pbllm(Pbllm.default_config(salience="hessian", compensate=False)).needs_calibration
    assert Pbllm(Pbllm.default_config(salience="magnitude", compensate=True)).needs_calibration


def test_summary_uses_layer_reported_bits_and_says_fake_quant():
    layers = {"a": nn.Linear(20, 10), "b": nn.Linear(40, 10), "c": nn.Linear(20, 10)}
    specs = {"a": QuantSpec(8), "b": QuantSpec(8)}  # c stays in full precision
    plain = summarize(layers, specs, {"a": {}, "b": {}})
    assert (plain["avg_bits"], plain["avg_bits_with_overhead"]) == pytest.approx(
        tuple(b * 600 / 800 + 16 * 200 / 800 for b in reported_bits(layers, specs, {})))
    assert "packable" not in plain
    per_layer = {"a": {"bits_per_weight": 2.7, "bits_per_weight_with_overhead": 3.0, "packable": False,
                       "packable_reason": "binarized"}, "b": {}}
    s = summarize(layers, specs, per_layer)
    assert s["avg_bits"] == pytest.approx((200 * 2.7 + 400 * 8 + 200 * 16) / 800)
    assert s["avg_bits_with_overhead"] == pytest.approx((200 * 3.0 + 400 * (8 + 24 / 40) + 200 * 16) / 800)
    assert s["packable"] is False and s["evaluation_weights"] == "fake-quant" and s["packable_reason"] == "binarized"


@pytest.mark.slow
def test_pbllm_end_to_end_on_a_tiny_model(tiny_cfg):
    from harness.run import execute

    for overrides, label, calibrated in ((["method.compensate=false", "method.salience=magnitude"],
                                          "PB-LLM 20% magnitude", False),
                                         ([], "GPTQ-PB 20% hessian", True)):
        rec = execute(tiny_cfg("method=pbllm", "method.salient_frac=0.2", "task=[wikitext2,piqa]", "task.piqa.limit=3",
                               *overrides))
        q = rec["quantization"]
        assert rec["method"]["label"] == label and (rec["calibration"] is not None) == calibrated
        assert rec["run_id"].split("__")[0].endswith(label.replace("% ", "-").replace(" ", "-"))  # no `bits`, no w-tag
        assert q["avg_bits"] == pytest.approx(3.4, abs=1e-3)
        assert q["packable"] is False and q["evaluation_weights"] == "fake-quant"
        assert all(i["salient"] == round(0.2 * i["numel"]) for i in q["layers"].values())
        assert rec["metrics"]["wikitext2"]["ppl"] > 1 and rec["metrics"]["piqa"]["items"] == 3  # fake-quant, every task
