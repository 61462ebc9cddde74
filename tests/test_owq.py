import pytest
import torch

from harness.errors import ConfigError
from harness.quantize.primitives import QuantSpec
from methods.gptq import Gptq, gptq_quantize
from methods.owq import INDEX_BITS, Owq, allocate_fp16_columns, layer_bits, owq_quantize, weak_columns


@pytest.fixture
def outlier_inputs(correlated_inputs):
    def make(d=64, loud=(5, 13), seed=0):
        X = correlated_inputs(d=d, seed=seed)
        X[:, list(loud)] *= 20  # a few input channels with large activations, as in LLMs
        return X

    return make


@pytest.mark.parametrize("bits,group_size", [(4, -1), (3, -1), (3, 16)])
def test_without_fp16_columns_owq_is_exactly_gptq(bits, group_size, hessian, outlier_inputs):
    torch.manual_seed(0)
    W, H = torch.randn(32, 64), hessian(outlier_inputs())
    spec = QuantSpec(bits, group_size)
    Q_gptq, s_gptq = gptq_quantize(W, H, spec, Gptq.default_config(bits=bits, group_size=group_size))
    Q_owq, s_owq = owq_quantize(W, H, 0, spec, Owq.default_config(bits=bits, target_bits=bits, group_size=group_size))
    assert torch.equal(Q_gptq, Q_owq) and s_owq["loss"] == pytest.approx(s_gptq["loss"], rel=1e-5)


def test_weak_columns_are_the_sensitive_inputs(hessian, outlier_inputs):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), outlier_inputs()
    X[:, 40] *= 50  # the loudest input of all ...
    W[:, 40] = 0  # ... but its weights are exactly on the grid (0): no error, not sensitive
    weak, sens = weak_columns(W, hessian(X), 2, QuantSpec(3))
    assert weak.tolist() == [5, 13] and sens[40] == 0


@pytest.mark.parametrize("act_order", [False, True])
def test_fp16_columns_carry_the_compensation_and_beat_gptq(act_order, hessian, outlier_inputs):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), outlier_inputs()
    H, spec = hessian(X), QuantSpec(3)
    Q_gptq, _ = gptq_quantize(W, H, spec, Gptq.default_config(bits=3))
    Q, stats = owq_quantize(W, H, 2, spec, Owq.default_config(bits=3, target_bits=3.5, act_order=act_order))
    weak = stats["fp16_column_ids"]
    assert weak == [5, 13]
    err = lambda Q: ((W - Q) @ X.t()).norm()  # noqa: E731 - output error on the calibration inputs
    assert err(Q) < 0.7 * err(Q_gptq)
    rest = [j for j in range(64) if j not in weak]
    assert max(row.unique().numel() for row in Q[:, rest]) <= 2**3  # the others: one 3-bit grid per row
    assert not torch.allclose(Q[:, weak], W[:, weak])  # fp16 columns hold compensated values, not W's


def test_layer_bits_count_fp16_columns_and_indices():
    assert layer_bits(576, 576, 4, 0) == 4
    assert layer_bits(576, 576, 4, 2) == 4 + 2 * (576 * 12 + INDEX_BITS) / (576 * 576)
    assert layer_bits(192, 576, 3, 1) == pytest.approx(3 + (192 * 13 + 32) / (192 * 576), abs=0)


def test_allocation_meets_the_target_from_below():
    # SmolLM2-135M's decoder shapes (d_out, d_in), 30 layers
    block = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576),
             "gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}
    shapes = {f"{i}.{n}": s for i in range(30) for n, s in block.items()}
    N = sum(o * i for o, i in shapes.values())
    for bits, target in ((4, 4.01), (3, 3.01), (4, 4.25)):
        cols = allocate_fp16_columns(shapes, bits, target)
        extra = sum(cols[n] * (o * (16 - bits) + INDEX_BITS) for n, (o, i) in shapes.items())
        avg = bits + extra / N
        assert target - 1536 * (16 - bits) / N < avg <= target  # within one (largest) column of the target
        assert cols["0.k"] >= cols["0.q"] >= cols["0.gate"]  # equal fp16 weights: narrow layers get more columns
    assert set(allocate_fp16_columns(shapes, 4, 4.0).values()) == {0}


@pytest.mark.parametrize("bits,target,message", [
    (4, 3.01, "target_bits=3.01 must be in [bits=4, 16)"),
    (3, 16.0, "target_bits=16.0 must be in [bits=3, 16)"),
])
def test_bad_target_bits_is_one_line(bits, target, message):
    with pytest.raises(ConfigError) as err:
        Owq.default_config(bits=bits, target_bits=target)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_owq_end_to_end_on_a_tiny_model(tiny_cfg):
    from harness.run import execute

    rec = execute(tiny_cfg("method=owq", "bits=3", "task=[wikitext2,c4,arc_easy]", "task.arc_easy.limit=3"))
    q = rec["quantization"]
    assert rec["method"]["label"] == "OWQ 3.01" and rec["method"]["options"]["target_bits"] == 3.01
    assert 3.0 < q["avg_bits"] <= 3.01 and q["avg_bits_with_overhead"] > q["avg_bits"]
    assert q["packable"] is False and q["evaluation_weights"] == "fake-quant" and "fp16" in q["packable_reason"]
    layers = q["layers"].values()
    assert sum(i["fp16_columns"] for i in layers) > 0
    assert all(len(i["fp16_column_ids"]) == i["fp16_columns"] for i in layers)
    assert rec["metrics"]["wikitext2"]["ppl"] > 1 and rec["metrics"]["c4"]["ppl"] > 1  # fake-quant through every task
    assert rec["metrics"]["arc_easy"]["items"] == 3 and 0 <= rec["metrics"]["arc_easy"]["acc"] <= 1


def test_target_bits_follow_bits_in_the_config(compose_cfg):
    assert compose_cfg(["method=owq"])["method"]["target_bits"] == 4.01
    assert compose_cfg(["method=owq", "bits=3"])["method"]["target_bits"] == 3.01
    assert compose_cfg(["method=owq", "bits=3", "method.target_bits=3.1"])["method"]["target_bits"] == 3.1
