"""Every common decoder family on a tiny random model: layer discovery (one table,
``harness.quantize.layers``), the driver's captured inputs against the model's own hidden states,
APTQ's attention Hessian with separate and fused q/k/v, MoE experts and routers, and the end-to-end
family × method matrix through the run's phases (pack → save → load with identical logits)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

import methods.aptq as aptq_module
from harness.cli import CONF_DIR
from harness.inputs.model import ModelConfig, load_model
from harness.packed.checkpoint import load_packed
from harness.plugins.hookspecs import RunContext
from harness.quantize.layers import (
    FAMILIES,
    ROUTERS,
    RoutedExperts,
    block_linears,
    decoder_layers,
    family,
    linear_layers,
    local_name,
    qkv_split,
    run_block,
    unfuse_experts,
)
from harness.quantize.primitives import QuantSpec, rtn
from harness.quantize.sequential import capture_inputs, stages
from harness.results.records import readable
from harness.run import evaluate, load, make_record, pack, plan, quantize
from methods.aptq import Aptq, find_o_proj
from methods.gptq import Gptq

FAMILY_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3", "opt", "mixtral")  # conf/model/tiny_*.yaml
PHI = {"model_type": "phi", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 4, "max_position_embeddings": 256}  # Phi-1/2: o_proj is "dense"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread (on a loaded 2-core machine two threads make each tiny matmul ~100× slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model_config(fam: str) -> ModelConfig:
    if fam == "phi":
        return ModelConfig(name="tiny-phi", random_init=PHI, tokenizer="embedded", dtype="float32")
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/model/tiny_{fam}.yaml")))


@pytest.fixture(scope="module")
def models(cache_dir):
    cache = {}

    def get(fam: str):
        if fam not in cache:
            cache[fam] = load_model(tiny_model_config(fam), "cpu", cache_dir, seed=0)[0]
        return cache[fam]

    return get


def windows(n: int = 2, T: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 1000, (n, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- discovery
@pytest.mark.parametrize("fam", (*FAMILY_MODELS, "phi"))
def test_the_family_table_names_every_quantized_layer_and_no_router(fam, models):
    model = models(fam)
    fam_names = family(model)
    assert fam_names is FAMILIES[model.config.model_type]
    staged = {n for stage in fam_names.stages for n in stage}
    layers = linear_layers(model)
    assert layers and {local_name(n) for n in layers} <= staged  # every quantized layer is in a stage
    assert not {local_name(n) for n in layers} & set(ROUTERS)
    _, blocks = decoder_layers(model)
    block = blocks[0]
    assert find_o_proj(block) is block.get_submodule(next(n for n in block_linears(block)
                                                          if local_name(n) == fam_names.o_proj))
    names = list(block_linears(block))
    groups = stages(names, True, fam_names)
    assert sorted(sum(groups, [])) == sorted(names) and len(groups) == len(fam_names.stages)
    assert all(local_name(n) in fam_names.attention_inputs for n in groups[0])


def test_family_specific_names():
    assert family(type("C", (), {"model_type": "opt"})()).o_proj == "out_proj"
    assert family(type("C", (), {"model_type": "phi"})()).o_proj == "dense"
    assert family(type("C", (), {"model_type": "phi3"})()).fused_qkv == "qkv_proj"
    assert family(type("C", (), {"model_type": "gemma3_text"})()) is FAMILIES["llama"]


# ------------------------------------------------------------------------------------- captured inputs
@pytest.mark.parametrize("fam", (*FAMILY_MODELS, "phi"))
def test_captured_inputs_and_block_outputs_are_the_models_own_hidden_states(fam, models):
    """Layer 0's captured inputs and its outputs = hidden_states[0] and [1]; and every block run with its
    own captured kwargs reproduces what that block computes inside the model's forward."""
    model = models(fam)
    ids = windows()
    inps, kwargs = capture_inputs(model, ids, "cpu")
    _, blocks = decoder_layers(model)
    assert len(kwargs) == len(blocks) and not {"cache", "past_key_values", "use_cache"} & set().union(*kwargs)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(blocks))}
    hooks = [b.register_forward_hook(lambda _m, _i, out, i=i: seen[i].append(out[0] if isinstance(out, tuple)
                                                                                   else out))
             for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            hs = [model(input_ids=ids[j : j + 1], output_hidden_states=True).hidden_states for j in range(2)]
    finally:
        for h in hooks:
            h.remove()
    x = inps
    for i, block in enumerate(blocks):
        with torch.no_grad():
            x = run_block(block, x, kwargs[i])
        assert torch.allclose(x, torch.cat(seen[i]), atol=1e-5), (fam, i)
        if i == 0:
            for j in range(2):
                assert torch.allclose(inps[j], hs[j][0][0], atol=1e-5) and torch.allclose(x[j], hs[j][1][0], atol=1e-5)


def test_gemma3_sliding_and_full_layers_get_their_own_kwargs(models):
    """Gemma 3's sliding-window and full-attention layers differ in RoPE tables and masks: a layer run
    with the other layer's kwargs computes something else, so kwargs are captured per layer."""
    model = models("gemma3")
    inps, kwargs = capture_inputs(model, windows(T=40), "cpu")
    cos0, cos1 = kwargs[0]["position_embeddings"][0], kwargs[1]["position_embeddings"][0]
    assert not torch.allclose(cos0, cos1)
    _, blocks = decoder_layers(model)
    with torch.no_grad():
        x = run_block(blocks[0], inps, kwargs[0])
        assert not torch.allclose(run_block(blocks[1], x, kwargs[1]), run_block(blocks[1], x, kwargs[0]), atol=1e-4)


# ------------------------------------------------------------------------------------- APTQ: fused q/k/v
def llama_twin(phi3: torch.nn.Module, cache_dir) -> torch.nn.Module:
    """Decoder layer 0 of a LLaMA with phi3's layer-0 weights, q/k/v and gate/up split apart."""
    c = phi3.config
    arch = {"model_type": "llama", "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": 1, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": c.rms_norm_eps}
    llama, _, _ = load_model(ModelConfig(name="twin", random_init=arch, tokenizer="embedded", dtype="float32"),
                             "cpu", cache_dir)
    src, dst = decoder_layers(phi3)[1][0], decoder_layers(llama)[1][0]
    dq, dk, _ = qkv_split(c)
    qkv, gate_up = src.self_attn.qkv_proj.weight.data, src.mlp.gate_up_proj.weight.data
    with torch.no_grad():
        for name, w in {"self_attn.q_proj": qkv[:dq], "self_attn.k_proj": qkv[dq : dq + dk],
                        "self_attn.v_proj": qkv[dq + dk :], "self_attn.o_proj": src.self_attn.o_proj.weight,
                        "mlp.gate_proj": gate_up[: c.intermediate_size], "mlp.up_proj": gate_up[c.intermediate_size :],
                        "mlp.down_proj": src.mlp.down_proj.weight, "input_layernorm": src.input_layernorm.weight,
                        "post_attention_layernorm": src.post_attention_layernorm.weight}.items():
            dst.get_submodule(name).weight.copy_(w)
    return dst


def test_fused_qkv_slices_get_exactly_the_hessians_of_separate_projections(models, cache_dir, monkeypatch):
    """Phi-3's qkv_proj vs a LLaMA twin with the same weights split into q/k/v: APTQ's per-slice H_q, H_k, H_v
    equal the separate projections' H (same probes), the quantized rows equal theirs, the sensitivity
    is their row-weighted mean, and the stacked grid packs."""
    from harness.packed.qlinear import QuantLinear

    phi3 = models("phi3")
    block = decoder_layers(phi3)[1][0]
    twin = llama_twin(phi3, cache_dir)
    inps, kwargs = capture_inputs(phi3, windows(n=3), "cpu")
    with torch.no_grad():
        assert torch.allclose(run_block(twin, inps, kwargs[0]), run_block(block, inps, kwargs[0]), atol=1e-5)
    monkeypatch.setattr(aptq_module.zlib, "crc32", lambda _b: 0)  # the same Rademacher probes for both
    qkv = block.self_attn.qkv_proj
    parts = {n: twin.self_attn.get_submodule(n) for n in ("q_proj", "k_proj", "v_proj")}
    fused, sep, fused_s, sep_s = (Aptq(Aptq.default_config(probes=3)) for _ in range(4))
    for method, blk, mods in ((fused, block, {"qkv_proj": qkv}), (fused_s, block, {"qkv_proj": qkv}),
                              (sep, twin, parts), (sep_s, twin, parts)):
        method.collect(blk, mods, inps, kwargs[0])
    assert [(k, hi - lo) for k, lo, hi in fused.row_parts["qkv_proj"]] == [
        ("qkv_proj:q", 64), ("qkv_proj:k", 32), ("qkv_proj:v", 32)]
    for p in ("q", "k", "v"):
        assert torch.allclose(fused.H[f"qkv_proj:{p}"], sep.H[f"{p}_proj"], rtol=1e-4, atol=1e-5), p
    assert not torch.allclose(fused.H["qkv_proj:q"], fused.H["qkv_proj:v"], rtol=0.1)  # own token weights

    s_sep = {n: sep_s.layer_sensitivity(n, m) for n, m in parts.items()}
    assert fused_s.layer_sensitivity("qkv_proj", qkv) == pytest.approx(
        (64 * s_sep["q_proj"] + 32 * s_sep["k_proj"] + 32 * s_sep["v_proj"]) / 128, rel=1e-4)

    spec = QuantSpec(4)
    fused_result = fused.quantize_layer("qkv_proj", qkv, spec)
    info = fused_result.info
    for n, mod in parts.items():
        sep.quantize_layer(n, mod, spec)
    Q_sep = torch.cat([mod.weight.data for mod in parts.values()])  # (128, 64)
    assert (qkv.weight.data - Q_sep).abs().gt(1e-5).float().mean() < 0.01  # float rounding only
    assert info["slices"]["k"]["rows"] == [64, 96] and info["tokens"] == 3 * 32 and "fallback" not in info
    lin = torch.nn.Linear(64, 128, bias=False)
    lin.weight.data = qkv.weight.data.clone()
    QuantLinear.from_linear(lin, fused_result.grid, 4, -1, "qkv_proj")  # the stacked grid is the one the rows are on


# ------------------------------------------------------------------------------------- MoE
def test_unfused_experts_compute_what_the_fused_experts_compute(cache_dir):
    from transformers import AutoModelForCausalLM

    loaded, _, _ = load_model(tiny_model_config("mixtral"), "cpu", cache_dir, seed=0)
    assert isinstance(loaded.model.layers[0].mlp.experts, RoutedExperts)  # the loader unfuses
    ref = AutoModelForCausalLM.from_config(loaded.config).eval()  # transformers' fused experts
    state = ref.state_dict()
    twin = AutoModelForCausalLM.from_config(loaded.config).eval()
    twin.load_state_dict(state)
    assert unfuse_experts(twin) == 2 and unfuse_experts(twin) == 0
    e = twin.model.layers[1].mlp.experts[3]
    inter = loaded.config.intermediate_size
    assert torch.equal(e.up_proj.weight, state["model.layers.1.mlp.experts.gate_up_proj"][3, inter:])
    ids = windows()
    with torch.no_grad():
        assert torch.allclose(ref(input_ids=ids).logits, twin(input_ids=ids).logits, atol=1e-5)


def test_each_expert_gets_the_hessian_of_its_routed_tokens_and_the_router_stays_fp(tiny_cfg):
    """Per-expert token counts add up to top-k × calibration tokens; a layer below min_tokens falls back to
    RTN (weights exactly RTN's, recorded), the rest use their Hessian; router weights never change."""
    p = plan(tiny_cfg("model=tiny_mixtral", "method=gptq", "task=[wikitext2]", "method.min_tokens=150"))
    m = load(p)
    routers = {n: w.detach().clone() for n, w in m.model.named_parameters() if ".mlp.gate." in n}
    before = {n: mod.weight.detach().clone() for n, mod in linear_layers(m.model).items()}
    run = RunContext(run_id=p.run_id, config=p.cfg, results_dir=p.results_dir, identity=p.identity)
    quant, _, _ = quantize(p, m, run)
    layers = quant["layers"]
    n_tokens = 4 * 64  # calibration windows × seqlen
    for i in range(2):
        experts = [layers[f"model.layers.{i}.mlp.experts.{e}.gate_proj"]["tokens"] for e in range(4)]
        assert sum(experts) == 2 * n_tokens  # top-2 routing: every token reaches two experts
        assert layers[f"model.layers.{i}.self_attn.q_proj"]["tokens"] == n_tokens
    for name, info in layers.items():
        assert (info.get("fallback") == "rtn") == (info["tokens"] < 150), name
        if info.get("fallback") == "rtn":
            assert torch.equal(linear_layers(m.model)[name].weight, rtn(before[name], QuantSpec(4)).Q)
    fallbacks = [i.get("fallback") for i in layers.values()]
    assert "rtn" in fallbacks and None in fallbacks
    assert routers and all(torch.equal(w, routers[n]) for n, w in m.model.named_parameters() if n in routers)
    assert not any(".gate." in n for n in layers)


def test_low_token_fallbacks(correlated_inputs):
    """No tokens or fewer than min_tokens: H = I, which is RTN exactly; fewer tokens than inputs: more damping."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16, bias=False)
    W = lin.weight.data.clone()
    g = Gptq(Gptq.default_config(min_tokens=16))
    info = g.quantize_layer("never_routed", lin, QuantSpec(4)).info  # add_batch never called
    assert info["fallback"] == "rtn" and info["tokens"] == 0 and torch.equal(lin.weight.data, rtn(W, QuantSpec(4)).Q)
    lin.weight.data.copy_(W)
    g.add_batch("few", correlated_inputs(n=10, d=64).unsqueeze(0))
    info = g.quantize_layer("few", lin, QuantSpec(4)).info
    assert info["fallback"] == "rtn" and info["tokens"] == 10 and torch.equal(lin.weight.data, rtn(W, QuantSpec(4)).Q)
    lin.weight.data.copy_(W)
    g.add_batch("rank_deficient", correlated_inputs(n=32, d=64).unsqueeze(0))
    info = g.quantize_layer("rank_deficient", lin, QuantSpec(4)).info
    assert info["fallback"] == "damped" and info["percdamp"] == pytest.approx(0.01 * 64 / 32)
    assert not torch.equal(lin.weight.data, rtn(W, QuantSpec(4)).Q)
    g.add_batch("enough", correlated_inputs(n=128, d=64).unsqueeze(0))
    assert "fallback" not in g.quantize_layer("enough", lin, QuantSpec(4)).info


# ------------------------------------------------------------------------------------- the matrix
METHODS = (("fp16", ()), ("rtn", ()), ("gptq", ()), ("aptq", ()), ("aptq", ("ratio=0.75",)), ("owq", ()),
           ("pbllm", ()), ("awq", ()), ("awq", ("method.solver=gptq", "group_size=32")),
           ("slim", ("bits=3", "group_size=32")), ("slim", ("method.target_bits=3.5", "method.criterion=error")),
           # the loss-based passes (final norm + head found per family) and the knapsack
           ("aptq", ("ratio=0.75", "method.sensitivity=fisher", "method.allocator=knapsack")),
           ("aptq", ("ratio=0.75", "method.sensitivity=measured", "method.truth_windows=1")))


# The fast tier runs a diagonal of the matrix (every family once, every method once); the rest is slow.
DIAGONAL = {(FAMILY_MODELS[j % len(FAMILY_MODELS)], j) for j in range(len(METHODS))}
MATRIX = [pytest.param(fam, method, extra, id=f"{fam}-{' '.join((method, *extra))}",
                       marks=() if (fam, j) in DIAGONAL else pytest.mark.slow)
          for fam in FAMILY_MODELS for j, (method, extra) in enumerate(METHODS)]


@pytest.mark.parametrize("fam,method,extra", MATRIX)
def test_every_family_runs_every_method(fam, method, extra, tiny_cfg, monkeypatch):
    """plan → load → quantize → (packable: pack → save → load, identical logits) → evaluate → record.

    The packed layers run the pure-PyTorch reference op, not the Triton interpreter: the kernels are
    checked against that reference in test_kernels.py, and the interpreter would take minutes here."""
    monkeypatch.setattr("harness.packed.ops.interpreting", lambda: False)
    p = plan(tiny_cfg(f"model=tiny_{fam}", f"method={method}", "task=[wikitext2]", *extra))
    caps = p.method.capabilities()
    m = load(p)
    layers = linear_layers(m.model)
    kept = {n: w.detach().clone() for n, w in m.model.named_parameters()
            if n.rsplit(".", 1)[0] not in layers}  # embeddings, norms, routers, head: full precision
    run = RunContext(run_id=p.run_id, config=p.cfg, results_dir=p.results_dir, identity=p.identity)
    quant, grids, _ = quantize(p, m, run)
    assert set(quant["layers"]) == (set(layers) if caps.quantizes else set())
    assert all(torch.equal(w, kept[n]) for n, w in m.model.named_parameters() if n in kept)
    if caps.packable:
        saved = pack(dataclasses.replace(p, pack=True, save=True), m, quant, grids)
        assert quant["measured"]["packed_layers"] == len(layers) and quant["parity"]["max_abs_logit_err"] < 1e-3
        loaded, meta = load_packed(saved["path"], torch.float32, "cpu")
        ids = windows(n=1)
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, m.model(input_ids=ids).logits)
        assert set(meta["bit_map"]) == set(layers)
    metrics = evaluate(p, m, run)
    assert math.isfinite(metrics["wikitext2"]["ppl"]) and metrics["wikitext2"]["windows"] == 2
    assert readable(make_record(p, m, run, quant, None, metrics, None)) is None
