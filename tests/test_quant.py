import pytest
import torch
from torch import nn

from harness.errors import ConfigError
from harness.quantize.driver import reported_bits
from harness.quantize.primitives import QuantSpec, find_params, quantize, rtn


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("sym", [False, True])
def test_rtn_round_trip_error_is_at_most_half_a_step(bits, group_size, sym):
    torch.manual_seed(0)
    W = torch.randn(24, 64) * torch.rand(24, 1) * 3  # rows of different ranges
    qw = rtn(W, QuantSpec(bits, group_size, sym))
    G = 1 if group_size == -1 else 64 // group_size
    assert qw.scale.shape == qw.zero.shape == (24, G)
    assert int(qw.codes.max()) <= 2**bits - 1
    step = qw.scale.repeat_interleave(64 // G, dim=1)  # (24, 64): the step of each weight's group
    assert torch.all((W - qw.Q).abs() <= step / 2 + 1e-5)
    # The grid is reproduced from codes, scale and zero.
    Q = qw.scale.repeat_interleave(64 // G, 1) * (qw.codes.float() - qw.zero.repeat_interleave(64 // G, 1))
    assert torch.allclose(Q, qw.Q, atol=1e-6)


def test_error_shrinks_with_bits_and_with_groups():
    torch.manual_seed(1)
    W = torch.randn(64, 128)
    errs = [(W - rtn(W, QuantSpec(b)).Q).norm().item() for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] / 30
    assert (W - rtn(W, QuantSpec(3, 32)).Q).norm() < (W - rtn(W, QuantSpec(3)).Q).norm()


def test_grid_matches_gptq_min_max_semantics():
    # GPTQ widens the range to include 0 and gives all-zero rows the range [-1, 1].
    W = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-4.0, -2.0, -1.0]])
    scale, zero = find_params(W, bits=2, sym=False)
    assert torch.allclose(scale.squeeze(), torch.tensor([1.0, 2 / 3, 4 / 3]))
    assert zero.squeeze().tolist() == [0.0, 2.0, 3.0]
    assert torch.equal(quantize(W[1:2], scale[1:2], zero[1:2], 3), torch.zeros(1, 3))
    scale_s, zero_s = find_params(W, bits=4, sym=True)
    assert zero_s.squeeze().tolist() == [8.0, 8.0, 8.0]
    # An all-positive row keeps xmin = 0 (a GPTQ quirk): scale = xmax / maxq.
    assert torch.allclose(scale_s.squeeze(), torch.tensor([3 / 15, 2 / 15, 8 / 15]))


def test_bad_bits_and_group_sizes_are_clear_errors():
    with pytest.raises(ConfigError, match="bits=5 is not supported; choose one of 2, 3, 4, 8"):
        QuantSpec(5)
    with pytest.raises(ConfigError, match="group_size=128 does not divide in_features=576 of q_proj"):
        rtn(torch.randn(8, 576), QuantSpec(4, 128), layer="q_proj")
    with pytest.raises(ConfigError, match="group_size=0"):
        QuantSpec(4, 0)


def average_bits(layers: list[tuple[int, int, QuantSpec]]) -> tuple[float, float]:
    """The production average (``driver.reported_bits``) over layers given as (d_out, d_in, spec)."""
    linears = {str(k): nn.Linear(i, o, bias=False) for k, (o, i, _) in enumerate(layers)}
    return reported_bits(linears, {str(k): s for k, (*_, s) in enumerate(layers)}, {})


def test_average_bits_counts_scales_and_zeros():
    # 4-bit asymmetric per-channel on 576-wide rows: 4 + (16 + 4) / 576 bits per weight.
    bits, with_overhead = average_bits([(10, 576, QuantSpec(4))])
    assert bits == 4 and with_overhead == pytest.approx(4 + 20 / 576)
    # Mixed: 3 parts of 4 bits (g64, sym) and 1 part of 2 bits (per-channel, asym), equal sizes.
    layers = [(64, 64, QuantSpec(4, 64, True))] * 3 + [(64, 64, QuantSpec(2))]
    bits, with_overhead = average_bits(layers)
    assert bits == pytest.approx(3.5)
    assert with_overhead == pytest.approx(3.5 + (3 * 16 / 64 + 18 / 64) / 4)
