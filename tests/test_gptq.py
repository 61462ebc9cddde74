import pytest
import torch

from harness.inputs.model import ModelConfig, load_model
from harness.quantize.layers import decoder_layers, run_block
from harness.quantize.primitives import QuantSpec, rtn
from harness.quantize.sequential import capture_inputs, stages
from methods.gptq import Gptq, gptq_quantize


def test_add_batch_accumulates_2_xxt_over_n_sequences(correlated_inputs):
    X = correlated_inputs()
    m = Gptq(Gptq.default_config())
    m.add_batch("l", X[:256].unsqueeze(0))
    m.add_batch("l", X[256:].unsqueeze(0))
    H_ref = 2 / 2 * (X[:256].t() @ X[:256] + X[256:].t() @ X[256:])
    assert torch.allclose(m.H["l"], H_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,group_size,act_order", [(4, -1, False), (3, -1, True), (3, 16, False), (2, 16, True)])
def test_gptq_output_error_beats_rtn(bits, group_size, act_order, correlated_inputs, hessian):
    torch.manual_seed(0)
    W, X = torch.randn(32, 64), correlated_inputs()
    spec = QuantSpec(bits, group_size)
    cfg = Gptq.default_config(bits=bits, group_size=group_size, act_order=act_order)
    Q, stats = gptq_quantize(W, hessian(X), spec, cfg)
    err_gptq = ((W - Q) @ X.t()).norm()
    err_rtn = ((W - rtn(W, spec).Q) @ X.t()).norm()
    assert err_gptq < 0.9 * err_rtn and stats["damp_retries"] == 0
    if group_size == -1 and not act_order:  # each row lies on its own 2^bits-level grid
        assert max(row.unique().numel() for row in Q) <= 2**bits


def test_lazy_block_updates_are_exact(correlated_inputs, hessian):
    torch.manual_seed(1)
    W, H = torch.randn(16, 48), hessian(correlated_inputs(d=48))
    spec = QuantSpec(3)
    Q1, _ = gptq_quantize(W, H, spec, Gptq.default_config(bits=3, blocksize=1))
    Q128, _ = gptq_quantize(W, H, spec, Gptq.default_config(bits=3, blocksize=128))
    Q7, _ = gptq_quantize(W, H, spec, Gptq.default_config(bits=3, blocksize=7))
    assert (Q1 != Q128).float().mean() < 0.01 and (Q7 != Q128).float().mean() < 0.01  # float rounding only


def test_dead_inputs_and_singular_hessians_do_not_crash(correlated_inputs, hessian):
    W, X = torch.randn(8, 16), correlated_inputs(n=4, d=16)  # rank 4 < 16: singular H
    X[:, 3] = 0  # a dead input
    H = hessian(X)
    Q, stats = gptq_quantize(W, H, QuantSpec(4), Gptq.default_config(percdamp=1e-9))
    assert torch.isfinite(Q).all() and torch.all(Q[:, 3] == 0)  # dead column: weight set to 0


@pytest.fixture(scope="module")
def tiny(cache_dir):
    cfg = ModelConfig(name="t", random_init={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                             "num_hidden_layers": 2, "num_attention_heads": 4,
                                             "num_key_value_heads": 2}, tokenizer="embedded", dtype="float32")
    model, _, _ = load_model(cfg, "cpu", cache_dir, seed=0)
    return model


@pytest.mark.slow
def test_captured_inputs_are_per_window_with_no_cache(tiny):
    torch.manual_seed(0)
    windows = torch.randint(0, 1000, (3, 16))
    inps, kwargs = capture_inputs(tiny, windows, "cpu")
    assert inps.shape == (3, 16, 64)
    assert not {"past_key_value", "past_key_values", "use_cache", "cache"} & set().union(*kwargs)
    _, layers = decoder_layers(tiny)
    assert len(kwargs) == len(layers)  # one set of kwargs per decoder layer
    outs = run_block(layers[0], inps, kwargs[0])
    for j in range(3):  # each window alone, as the model itself computes it
        hs = tiny(input_ids=windows[j : j + 1], output_hidden_states=True).hidden_states
        assert torch.allclose(inps[j], hs[0][0], atol=1e-5)
        assert torch.allclose(outs[j], hs[1][0], atol=1e-4)


def test_true_sequential_stages():
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert stages(names, True) == [names[:3], names[3:4], names[4:6], names[6:]]
    assert stages(names, False) == [names]
    assert stages(["attn.c_attn", "mlp.fc"], True) == [["attn.c_attn", "mlp.fc"]]


def test_gptq_end_to_end_on_tiny_models(tiny_cfg):
    from harness.run import execute

    for model in ("tiny_llama", "tiny_qwen2"):
        rec = execute(tiny_cfg(f"model={model}", "method=gptq", "bits=3", "method.true_sequential=true",
                               "task=[wikitext2]"))
        assert rec["quantization"]["avg_bits"] == 3.0 and rec["calibration"]["corpus"] == "c4_calib"
        assert len(rec["quantization"]["layers"]) == 14
        assert all(i["damp_retries"] == 0 for i in rec["quantization"]["layers"].values())


def test_capture_restores_the_decoder_layers(cache_dir):
    model, _, _ = load_model(ModelConfig(name="t", random_init={"model_type": "llama", "hidden_size": 32,
                                                                   "intermediate_size": 64, "num_hidden_layers": 2,
                                                                   "num_attention_heads": 2}), "cpu", cache_dir)
    _, before = decoder_layers(model)
    first = before[0]
    capture_inputs(model, torch.zeros(2, 8, dtype=torch.long), "cpu")
    _, after = decoder_layers(model)
    assert after is before and after[0] is first and len(after) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_quantization_matches_on_device(tiny_cfg):
    from harness.run import execute

    a = execute(tiny_cfg("method=gptq", "device=cuda", "task=[wikitext2]"))
    b = execute(tiny_cfg("method=gptq", "device=cuda", "offload=true", "task=[wikitext2]", "force=true"))
    assert b["metrics"]["wikitext2"]["ppl"] == pytest.approx(a["metrics"]["wikitext2"]["ppl"], rel=1e-3)
