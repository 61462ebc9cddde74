"""Golden numbers on the embedded default (SmolLM2-135M-Instruct), quick profile, WikiText-2.

Each tolerance comes from a measured spread (``benchmarks/golden_spread.py``, the figures in
``reference/benchmarks/golden_spread.json``), not from one machine:

- FP16 and RTN-4 are the same to every printed digit across thread counts 1 and 2, and matched the
  reference code and another machine exactly: they are pinned at rel 2e-4 (float noise in the last
  digit only).
- GPTQ-4 per-channel moves with the float path, because its rounding decisions depend on every
  float of the calibration pass and the Cholesky solve: 53.53 / 52.72 / 52.83 / 51.46 for threads
  1 / 1 / 2 / 2 with the Hessian accumulated in fp32 / fp64 / fp32 / fp64 (median 52.77, largest
  deviation 2.5%), 52.97 on the machine that first pinned it, 53.0 in the reference GPTQ code. The
  test allows twice the largest measured deviation, 5%, around the median, and the same around the
  reference code's figure. Within one machine and thread count the result is deterministic.
"""
import pytest

from harness.run import execute

FP16_WIKITEXT2_QUICK = 29.1876  # measured: every thread count and machine so far
RTN4_WIKITEXT2_QUICK = 49.8739  # measured: likewise
GPTQ4_MEDIAN = 52.7747  # median over the float paths of benchmarks/golden_spread.py
GPTQ4_SPREAD = 0.025  # largest relative deviation from that median among them
GPTQ4_REFERENCE = 53.0  # the reference GPTQ code on the same model and protocol


@pytest.fixture(scope="module")
def ppl(tmp_path_factory, compose_cfg):
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
    assert rtn4 == pytest.approx(RTN4_WIKITEXT2_QUICK, rel=2e-4)


@pytest.mark.slow
def test_default_model_gptq_matches_the_reference_code(ppl):
    gptq4 = ppl("method=gptq", "bits=4")
    assert gptq4 == pytest.approx(GPTQ4_MEDIAN, rel=2 * GPTQ4_SPREAD)
    assert gptq4 == pytest.approx(GPTQ4_REFERENCE, rel=2 * GPTQ4_SPREAD)
