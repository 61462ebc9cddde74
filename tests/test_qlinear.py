"""QuantLinear, packing a quantized model (per-layer 2/4-bit mix), parity, measured bits, checkpoints."""
import json

import pytest
import torch

from harness.errors import ConfigError
from harness.inputs.model import ModelConfig, load_model
from harness.packed.checkpoint import QUANT_FILE, WEIGHTS_FILE, load_packed
from harness.packed.qlinear import QuantLinear, measured_bits, pack_model, parity
from harness.quantize.driver import BitPlan, quantize_model
from harness.quantize.layers import linear_layers
from harness.quantize.primitives import Grid, QuantSpec, rtn
from harness.run import execute
from methods.gptq import Gptq, gptq_quantize
from methods.rtn import Rtn

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("group_size,act_order,static", [(-1, False, False), (16, False, False), (16, True, True),
                                                         (-1, True, False)])
def test_gptq_returns_the_grid_it_used(group_size, act_order, static, correlated_inputs, hessian):
    torch.manual_seed(0)
    W, H = torch.randn(32, 64), hessian(correlated_inputs())
    cfg = Gptq.default_config(bits=4, group_size=group_size, act_order=act_order, static_groups=static)
    Q, stats = gptq_quantize(W, H, QuantSpec(4, group_size), cfg)
    grid = stats["grid"]
    assert grid.g_idx is None
    s = grid.scale.repeat_interleave(64 // grid.scale.shape[1], 1)  # (32, 64)
    z = grid.zero.repeat_interleave(64 // grid.zero.shape[1], 1)
    codes = torch.clamp(torch.round(Q / s + z), 0, 15)
    assert torch.allclose(s * (codes - z), Q, atol=1e-5)  # every weight lies on the returned grid


def test_gptq_act_order_dynamic_groups_report_g_idx_and_refuse_packing(correlated_inputs, hessian):
    torch.manual_seed(0)
    W, H = torch.randn(16, 64), hessian(correlated_inputs())
    Q, stats = gptq_quantize(W, H, QuantSpec(4, 16), Gptq.default_config(bits=4, group_size=16, act_order=True))
    g_idx = stats["grid"].g_idx
    assert g_idx is not None and sorted(torch.bincount(g_idx).tolist()) == [16] * 4
    s, z = stats["grid"].scale[:, g_idx], stats["grid"].zero[:, g_idx]  # (16, 64) per original column
    assert torch.allclose(s * (torch.clamp(torch.round(Q / s + z), 0, 15) - z), Q, atol=1e-5)
    lin = torch.nn.Linear(64, 16, bias=False)
    lin.weight.data = Q
    with pytest.raises(ConfigError, match="static_groups=true"):
        QuantLinear.from_linear(lin, stats["grid"], 4, 16, "l")


class NullHook:
    def __getattr__(self, name):
        return lambda **kwargs: None


class Mixed(Rtn):
    """RTN with an alternating 2/4-bit plan: a stand-in for APTQ's per-layer mix."""

    def plan_bits(self, layers, scores=None):
        return BitPlan({name: (2 if i % 2 else 4) for i, name in enumerate(layers)})


@pytest.fixture
def tiny(cache_dir):
    model, _, _ = load_model(ModelConfig(name="t", random_init=TINY, tokenizer="embedded", dtype="float32"),
                             "cpu", cache_dir, seed=0)
    return model


def test_mixed_2_4_model_packs_with_per_layer_bits_and_matches_fake_quant(tiny):
    hook = NullHook()
    method = Mixed(Rtn.default_config(bits=4, group_size=32))
    n_linear = sum(m.weight.numel() for m in linear_layers(tiny).values())
    result = quantize_model(tiny, method, hook, run=None)
    quant, grids = result.summary, result.grids
    assert set(grids) == set(quant["layers"]) and quant["avg_bits"] < 4
    fake = pack_model(tiny, grids, quant["layers"])
    qls = {n: m for n, m in tiny.named_modules() if isinstance(m, QuantLinear)}
    assert len(qls) == 14 and {m.bits for m in qls.values()} == {2, 4}
    assert all(qls[n].bits == quant["bit_plan"][n] for n in qls)
    windows = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    par = parity(tiny, fake, windows, "cpu")
    assert par["max_abs_logit_err"] < 1e-2 and abs(par["ppl_diff"]) < 1e-2 * par["ppl_fake_quant"]
    assert all(isinstance(tiny.get_submodule(n), QuantLinear) for n in qls)  # left in the packed state
    # Measured bits: weights at their own width + fp16 scale and zero per group of 32.
    m = measured_bits(tiny, n_linear)
    expected = sum(q.in_features * q.out_features * (q.bits + 32 / 32) for q in qls.values()) / n_linear
    assert m["measured_avg_bits"] == pytest.approx(expected)
    assert m["packed_bytes"] == sum(q.qweight.numel() * 4 + q.scales.numel() * 4 for q in qls.values())


def test_weights_off_the_grid_are_refused():
    lin = torch.nn.Linear(64, 8, bias=False)
    qw = rtn(lin.weight.data, QuantSpec(4))
    with pytest.raises(ValueError, match="not on the method's 4-bit grid"):
        QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero), 4, -1, "l")  # weights not replaced by qw.Q
    lin.weight.data = qw.Q
    assert torch.allclose(QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero), 4, -1, "l")(torch.eye(64)),
                          qw.Q.t(), atol=1e-3)


def test_an_input_scale_is_stored_divided_out_and_checked():
    """AWQ's layer: the grid holds W·diag(s), the packed layer computes (x / s) Ŵᵀ and stores s (2·K bytes)."""
    torch.manual_seed(0)
    W, s = torch.randn(8, 64), (0.2 + 3 * torch.rand(64)).half().float()  # s (64,): fp16 values
    qw = rtn(W * s, QuantSpec(4, 16))
    lin = torch.nn.Linear(64, 8)
    lin.weight.data = qw.Q / s  # the fake-quant weights
    ql = QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero, input_scale=s), 4, 16, "l")
    assert ql.input_scale.dtype == torch.float16 and torch.equal(ql.input_scale.float(), s)
    assert ql.packed_bytes() == 64 // 8 * 8 * 4 + 2 * (4 * 8 * 2) + 2 * 64  # codes, scales + zeros, s
    x = torch.randn(5, 64)
    assert (ql(x) - lin(x)).abs().max() < 1e-3 * lin(x).abs().max()
    no_s = QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero, input_scale=s), 4, 16, "l")
    no_s.input_scale.fill_(1)  # the control: the same codes without the division are far off
    assert (no_s(x) - lin(x)).abs().max() > 0.1 * lin(x).abs().max()
    lin.weight.data = qw.Q  # on the grid, but W·diag(s) is not
    with pytest.raises(ValueError, match="not on the method's 4-bit grid"):
        QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero, input_scale=s), 4, 16, "l")
    with pytest.raises(ValueError, match="positive and finite"):
        QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero, input_scale=torch.zeros(64)), 4, 16, "l")
    with pytest.raises(ValueError, match="positive and finite"):
        QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero, input_scale=torch.full((64,), 1e6)), 4, 16, "l")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_input_scale_division_rounds_once_to_the_inputs_dtype(dtype, monkeypatch):
    """What reaches the matmul op is x / s correctly rounded to x's dtype (the docstring's rounding)."""
    torch.manual_seed(0)
    ql = QuantLinear(64, 8, 4, -1, dtype=dtype, input_scale=True)
    ql.input_scale.copy_((0.2 + 3 * torch.rand(64)).half())
    x = torch.randn(3, 64).to(dtype)
    seen = {}
    monkeypatch.setattr("harness.packed.qlinear.quant_matmul",
                        lambda xs, *a: seen.setdefault("x", xs).new_zeros(*xs.shape[:-1], 8))
    ql(x)
    assert seen["x"].dtype == dtype and torch.equal(seen["x"], (x.double() / ql.input_scale.double()).to(dtype))


@pytest.mark.slow
def test_pack_save_and_load_give_identical_logits(tiny_cfg, tmp_path):
    rec = execute(tiny_cfg("method=rtn", "bits=4", "group_size=32", "save=true", "task=[wikitext2]"))
    q = rec["quantization"]
    assert "grids" not in q and q["measured"]["packed_layers"] == 14
    assert q["measured"]["measured_avg_bits"] == pytest.approx(4 + 32 / 32)  # fp16 scale + fp16 zero per 32
    assert q["parity"]["windows"] == 2 and q["parity"]["max_abs_logit_err"] < 1e-2
    ck = rec["checkpoint"]
    # The file holds the packed layers plus embeddings/norms in fp32 (the tiny model's dtype), little else.
    assert ck["packed_layer_bytes"] == q["measured"]["packed_bytes"] < ck["fp16_packed_layer_bytes"] / 3
    assert 0 < ck["bytes"] - ck["packed_layer_bytes"] - ck["other_tensor_bytes"] < 100_000
    folder = ck["path"]
    again = execute(tiny_cfg("model=hf", f"model.path={folder}", "method=fp16", "task=[wikitext2]"))
    assert again["metrics"]["wikitext2"]["ppl"] == rec["metrics"]["wikitext2"]["ppl"]  # bit-identical
    assert again["method"]["name"] == "rtn" and again["method"]["loaded_from_checkpoint"]
    assert again["quantization"]["measured"]["measured_avg_bits"] == q["measured"]["measured_avg_bits"]
    with pytest.raises(ConfigError, match="packed checkpoint"):
        execute(tiny_cfg("model=hf", f"model.path={folder}", "method=rtn", "task=[wikitext2]"))


@pytest.mark.slow
def test_corrupt_and_mismatched_checkpoints_fail_clearly(tiny_cfg, tmp_path):
    rec = execute(tiny_cfg("method=rtn", "bits=2", "save=true", "task=[wikitext2]"))
    from pathlib import Path

    folder = Path(rec["checkpoint"]["path"])
    model, _ = load_packed(folder, torch.float32, "cpu")
    assert {m.bits for m in model.modules() if isinstance(m, QuantLinear)} == {2}
    quant = json.loads((folder / QUANT_FILE).read_text())
    # A bit map that does not fit the tensors (4-bit claimed for 2-bit words).
    bad = {**quant, "bit_map": {**quant["bit_map"], "model.layers.0.mlp.up_proj": {"bits": 4, "group_size": -1}}}
    (folder / QUANT_FILE).write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="does not match its quantization.json bit map: .*up_proj.qweight"):
        load_packed(folder, torch.float32, "cpu")
    (folder / QUANT_FILE).write_text(json.dumps(quant))
    # Flipped bytes in the weights file.
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0xFF
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="SHA-256"):
        load_packed(folder, torch.float32, "cpu")
    (folder / QUANT_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read quantization.json"):
        load_packed(folder, torch.float32, "cpu")


@pytest.mark.parametrize("overrides,message", [
    (["method=rtn", "bits=3", "pack=true"], "bits=3 cannot be packed"),
    (["method=fp16", "save=true"], "leaves the model as is"),
    (["method=gptq", "group_size=32", "method.act_order=true", "pack=true"], "static_groups=true"),
    (["method=rtn", "group_size=8", "pack=true"], "group_size=8 cannot be packed"),
])
def test_unpackable_configs_are_rejected_before_work(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        execute(tiny_cfg(*overrides, "task=[wikitext2]"))
