"""Golden numbers on the embedded default (SmolLM2-135M-Instruct), quick profile, WikiText-2.

The FP16 figure was measured with this harness (fp32 on CPU, batch 4 and batch 1 agree to all
printed digits). Quantized runs must be worse than FP16, and 3-bit worse than 4-bit.
"""
import pytest
from conftest import compose_cfg

from harness.run import execute

FP16_WIKITEXT2_QUICK = 29.1879  # measured: python -m harness method=fp16 (quick profile)


@pytest.fixture(scope="module")
def ppl(tmp_path_factory):
    results = tmp_path_factory.mktemp("golden")

    def run(*overrides: str) -> float:
        cfg = compose_cfg(["task=[wikitext2]", "wandb.mode=disabled", f"results_dir={results}", *overrides])
        return execute(cfg)["metrics"]["wikitext2"]["ppl"]

    return run


@pytest.mark.slow
def test_default_model_golden_perplexities(ppl):
    fp16 = ppl("method=fp16")
    assert fp16 == pytest.approx(FP16_WIKITEXT2_QUICK, rel=2e-4)
    rtn4 = ppl("method=rtn", "bits=4")
    rtn3 = ppl("method=rtn", "bits=3")
    assert fp16 < rtn4 < rtn3
