"""Group-wise mixed precision (methods.slim): exact averages, honest bits, the criteria, GPTQ at one width."""
import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.quantize.primitives import QuantSpec, rtn
from methods.gptq import Gptq, gptq_quantize
from methods.slim import (
    Slim,
    allocate_error,
    base_width,
    layer_bits,
    output_error,
    plan_high_units,
    rtn_at,
    slim_quantize,
)

# SmolLM2-135M's linear layers of one decoder block (d_out, d_in), 30 blocks
SMOLLM2 = {f"{i}.{n}": s for i in range(30) for n, s in
           {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576), "gate": (1536, 576),
            "up": (1536, 576), "down": (576, 1536)}.items()}


@pytest.mark.parametrize("target", [3.0, 3.5, 2.5, 3.25, 4.0])
def test_the_models_average_is_exactly_the_target_on_smollm2(target):
    b0, n_hi = plan_high_units(SMOLLM2, 64, target, [2, 3, 4])
    total = sum(o * i for o, i in SMOLLM2.values())
    bits = sum(o * i * (b0 + n_hi[n] / (i // 64)) for n, (o, i) in SMOLLM2.items())
    assert bits == pytest.approx(target * total, abs=1e-6)  # exact, not within a tolerance of a unit
    per_layer = [b0 + n_hi[n] / (i // 64) for n, (o, i) in SMOLLM2.items()]
    assert max(abs(a - target) for a in per_layer) <= 1 / 6 + 1e-12  # each layer close (the carry it takes)


def test_base_width():
    assert [base_width(t, [2, 3, 4]) for t in (2, 2.5, 3, 3.5, 4)] == [2, 2, 3, 3, 4]


@pytest.fixture
def layer(correlated_inputs, hessian):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), correlated_inputs()
    W[:, 16:32] *= 4  # one column group of large weights: salient
    return W, hessian(X)


def cfg(**kw):
    return Slim.default_config(**{"group_size": 16, "target_bits": 3, **kw})


@pytest.mark.parametrize("criterion", ["salience", "error"])
def test_a_layer_at_3_bits_mixes_2_and_4_at_exactly_3(criterion, layer):
    W, H = layer
    lin = nn.Linear(64, 32, bias=False)
    lin.weight.data.copy_(W)
    m = Slim(cfg(criterion=criterion))
    m.plan_bits({"l": lin})
    m.add_batch("l", torch.randn(4, 64, 64))
    m.H["l"] = H
    res = m.quantize_layer("l", lin, m.spec(3))
    widths = [int(c) for c in res.info["width_map"]]
    assert res.info["bits_per_weight"] == 3.0 and sum(widths) == 3 * 4
    assert widths[1] == 4 and set(widths) != {3}  # the salient group is widened, another narrowed
    for j, b in enumerate(widths):  # each group lies on its own grid of b bits (per row)
        assert max(row.unique().numel() for row in lin.weight.data[:, 16 * j:16 * (j + 1)]) <= 2**b


def test_the_criteria_never_lose_to_uniform_widths_on_their_objective(layer):
    W, H = layer
    uniform = output_error(rtn(W, QuantSpec(3, 16)).Q - W, H)
    widths, _ = allocate_error(W, H, 3.0, cfg(criterion="error"))
    assert output_error(rtn_at(W, widths, 16, False, {}) - W, H) < uniform
    m = Slim(cfg())
    lin = nn.Linear(64, 32, bias=False)
    lin.weight.data.copy_(W)
    m.plan_bits({"l": lin})
    m.add_batch("l", torch.randn(4, 64, 64))
    m.H["l"] = H
    info = m.quantize_layer("l", lin, m.spec(3)).info
    assert info["search_err"][0] == pytest.approx(uniform, rel=1e-5) and min(info["search_err"]) < uniform


@pytest.mark.parametrize("act_order", [False, True])
def test_at_one_width_it_is_gptq(act_order, layer):
    W, H = layer
    g = Gptq.default_config(bits=3, group_size=16, act_order=act_order, static_groups=act_order)
    Q_gptq, _ = gptq_quantize(W, H, QuantSpec(3, 16), g)
    Q, _ = slim_quantize(W, H, torch.full((4,), 3), cfg(act_order=act_order))
    assert torch.allclose(Q, Q_gptq, atol=1e-6)


def test_per_row_units(layer):
    W, H = layer
    Q_gptq, _ = gptq_quantize(W, H, QuantSpec(3), Gptq.default_config(bits=3))
    Q, _ = slim_quantize(W, H, torch.full((32,), 3), cfg(group_size=-1))
    assert torch.allclose(Q, Q_gptq, atol=1e-6)
    widths = torch.tensor([2, 4] * 16)
    Q, _ = slim_quantize(W, H, widths, cfg(group_size=-1))
    assert all(Q[r].unique().numel() <= 2 ** int(widths[r]) for r in range(32))


def test_bits_count_grids_and_the_width_map():
    widths = torch.tensor([2, 4, 3, 3])
    bits, over = layer_bits(widths, (32, 64), cfg())
    assert bits == 3.0
    grids = 32 * ((16 + 2) + (16 + 4) + (16 + 3) + (16 + 3))  # a scale and a b-bit zero per row and group
    assert over == pytest.approx(3.0 + (grids + 4 * 2) / (32 * 64), abs=0)
    _, over_sym = layer_bits(widths, (32, 64), cfg(sym=True))
    assert over_sym == pytest.approx(3.0 + (32 * 4 * 16 + 8) / (32 * 64), abs=0)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="target_bits=4.5 must be within the choices"):
        cfg(target_bits=4.5)
    with pytest.raises(ConfigError, match="must be consecutive"):
        cfg(choices=[2, 4])
    with pytest.raises(ConfigError, match="criterion='kl' is unknown"):
        cfg(criterion="kl")
    assert Slim(cfg(target_bits=3.5)).label() == "SliM 3.5 g16"
    assert Slim(cfg(criterion="error")).capabilities().not_packable_because.startswith("per-group bit widths")
