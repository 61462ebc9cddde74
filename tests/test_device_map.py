"""Models larger than one GPU: ``model.device_map`` (accelerate), on the CPU with a tiny saved model.

A map that puts a decoder layer on ``disk`` makes accelerate dispatch the model with its hooks (the
layer's weights are read back on every forward), which is the path a model spread over several GPUs
takes; the perplexity must be exactly the one without a device map, for FP16 (``from_pretrained``
with the map) and for GPTQ (quantized on the CPU with ``offload=true``, then dispatched).
"""
from __future__ import annotations

import pytest

from harness.errors import ConfigError
from harness.run import execute, plan

SPLIT = ("model.device_map={model.embed_tokens:cpu,model.rotary_emb:cpu,model.layers.0:cpu,model.layers.1:disk,"
         "model.norm:cpu,lm_head:cpu}")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, cache_dir, compose_cfg):
    """The tiny random LLaMA saved as a Hugging Face folder (weights and tokenizer), for model=hf."""
    from harness.inputs.model import ModelConfig, load_model
    from harness.util import build_config

    cfg = compose_cfg(["model=tiny_llama"])
    model, tokenizer, _ = load_model(build_config(ModelConfig, dict(cfg["model"]), "model"), "cpu", cache_dir)
    folder = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ppl(rec: dict) -> float:
    return rec["metrics"]["wikitext2"]["ppl"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fp16", "gptq"])
def test_device_map_gives_the_perplexity_of_the_undispatched_model(tiny_cfg, tiny_folder, method):
    base = ["model=hf", f"model.path={tiny_folder}", f"method={method}", "task=[wikitext2]", "offload=true"]
    plain = execute(tiny_cfg(*base))
    for device_map in ("model.device_map=auto", SPLIT):
        rec = execute(tiny_cfg(*base, device_map, "force=true"))
        assert rec["run_id"] == plain["run_id"]  # where the model runs is not part of what it computes
        assert ppl(rec) == ppl(plain), device_map
        if device_map == SPLIT:
            assert rec["model"]["device_map"]["model.layers.1"] == "disk"
        else:
            assert set(rec["model"]["device_map"].values()) == {"cpu"}
    assert "device_map" not in plain["model"]


@pytest.mark.parametrize("overrides, message", [
    (["model.device_map=autoo"], "model.device_map='autoo' is unknown; use null, auto, balanced"),
    (["model.device_map={model.layers.0:tpu}"], "model.device_map puts 'model.layers.0' on 'tpu'"),
    (["model.device_map={model.layers.0:cuda:7}"], "puts 'model.layers.0' on cuda:7, but this machine has"),
    (["model.device_map=auto", "method=gptq"], "model.device_map with method=gptq needs offload=true"),
    (["model.device_map=auto", "method=rtn"], "model.device_map with method=rtn needs offload=true"),
    (["model.device_map=auto", "method=rtn", "offload=true", "pack=true"],
     "model.device_map cannot be combined with pack=true/save=true"),
])
def test_bad_device_map_combinations_are_refused_in_plan(tiny_cfg, overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        plan(tiny_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
