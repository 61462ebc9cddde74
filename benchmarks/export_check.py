"""Export the default model and read it back with the ecosystem's loaders (issue 27's closing measurements).

For one quantized run (default: RTN-4 g64 on SmolLM2-135M, quick profile, WikiText-2) this writes the harness's
packed checkpoint and the GPTQ and compressed-tensors exports, imports each export with ``model=hf
model.path=<folder>``, and evaluates the same windows with the folder loaded by transformers + compressed-tensors
(fp32) and, with ``--gptqmodel``, by GPTQModel (fp16, its CPU kernel; needs gptqmodel importable). It prints one
JSON object: sizes, perplexities, export and import seconds.

    python benchmarks/export_check.py --out /tmp/export_check [--gptqmodel] [overrides ...]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _common import compose_cfg

from harness.plugins.hookspecs import RunContext
from harness.run import evaluate, execute, load, plan
from harness.util import write_atomic


def ecosystem_ppl(folder: Path, out: Path, loader: str, protocol: list[str]) -> tuple[float, float]:
    """WikiText-2 perplexity of ``folder`` loaded by ``loader``, through the harness's own task on its windows."""
    p = plan(compose_cfg([*protocol, "method=fp16", "model=hf", f"model.path={folder}", "task=[wikitext2]",
                          f"results_dir={out / 'eco'}", "wandb.mode=disabled", "device=cpu"]))
    m = load(p)  # the tokenizer and the plan; the model is replaced by the ecosystem's
    t0 = time.perf_counter()
    if loader == "transformers":
        from transformers import AutoModelForCausalLM

        m.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    else:
        from gptqmodel import BACKEND, GPTQModel

        m.model = GPTQModel.load(str(folder), device="cpu", backend=BACKEND.TORCH, dtype=torch.float16).model.eval()
    seconds = time.perf_counter() - t0
    m.model.config.use_cache = False
    run = RunContext(run_id=p.run_id, config=p.cfg, results_dir=p.results_dir, identity=p.identity)
    return evaluate(p, m, run)["wikitext2"]["ppl"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gptqmodel", action="store_true")
    ap.add_argument("overrides", nargs="*", default=["method=rtn", "bits=4", "group_size=64", "sym=true"])
    a = ap.parse_args()
    base = [*a.overrides, "task=[wikitext2]", "wandb.mode=disabled", "device=cpu", "save=true", "force=true"]
    res: dict = {"overrides": a.overrides}
    protocol = [o for o in a.overrides if o.startswith(("+smoke", "profile"))]  # the same windows when reading back
    for fmt in ("packed", "gptq", "compressed-tensors"):
        rec = execute(compose_cfg([*base, f"save_format={fmt}", f"results_dir={a.out / fmt}"]))
        ck = rec["checkpoint"]
        res[fmt] = {"ppl": rec["metrics"]["wikitext2"]["ppl"], "bytes": ck["bytes"], "path": ck["path"],
                    "save_seconds": rec["timings_s"].get("export", rec["timings_s"].get("pack"))}
        res["fp16_model_bytes"] = ck.get("fp16_model_bytes")
        if fmt != "packed":
            imp = execute(compose_cfg([*protocol, "method=fp16", "model=hf", f"model.path={ck['path']}",
                                       "task=[wikitext2]", "wandb.mode=disabled", "device=cpu", "force=true",
                                       f"results_dir={a.out / 'import'}"]))
            res[fmt].update(import_ppl=imp["metrics"]["wikitext2"]["ppl"], import_label=imp["method"]["label"],
                            import_load_seconds=imp["timings_s"]["load"])
        save(a.out, res)  # as it goes: a long run keeps what it measured
    res["compressed-tensors"]["transformers_ppl"], res["compressed-tensors"]["transformers_load_seconds"] = \
        ecosystem_ppl(Path(res["compressed-tensors"]["path"]), a.out, "transformers", protocol)
    save(a.out, res)
    if a.gptqmodel:
        res["gptq"]["gptqmodel_ppl"], res["gptq"]["gptqmodel_load_seconds"] = \
            ecosystem_ppl(Path(res["gptq"]["path"]), a.out, "gptqmodel", protocol)
    save(a.out, res)
    print(json.dumps(res, indent=2))


def save(out: Path, res: dict) -> None:
    write_atomic(out / "export_check.json", res)


if __name__ == "__main__":
    main()
