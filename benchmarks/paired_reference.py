"""Paired tests between the published reference records (quick profile, default model): every
difference quoted in the README's "Measured on the default model", in one JSON.

    python benchmarks/paired_reference.py --out reference/benchmarks/paired_quick.json

Each pair is ``python -m harness.compare A B --reference`` (paired bootstrap interval of the
difference, paired sign-flip permutation p-value, 10,000 resamples, seed 0).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.results.compare import compare, resolve
from harness.util import REPO_ROOT

M = "SmolLM2-135M-Instruct-"
FP16, RTN4 = M + "FP16__5daa3d8e8b", M + "RTN-w4__b6384049b5"
GPTQ4 = {0: M + "GPTQ-w4__b4b47b52c4", 1: M + "GPTQ-w4__992541e3a2", 2: M + "GPTQ-w4__9859a870cf"}
APTQ4 = {0: M + "APTQ__a15a26d34c", 1: M + "APTQ__c67580822d", 2: M + "APTQ__382da39308"}
ZS_FP16, ZS_APTQ4 = M + "FP16__7d8d1ff929", M + "APTQ__ec4dc45947"  # zero-shot suite, 500 items per task

PAIRS = [
    *[(APTQ4[s], GPTQ4[s]) for s in (0, 1, 2)],  # same calibration draw
    *[(APTQ4[0], GPTQ4[s]) for s in (1, 2)],
    (APTQ4[0], RTN4), (APTQ4[1], RTN4), (APTQ4[2], RTN4),
    (RTN4, GPTQ4[0]), (RTN4, GPTQ4[1]), (RTN4, GPTQ4[2]),
    (GPTQ4[1], GPTQ4[0]), (GPTQ4[2], GPTQ4[0]),
    (APTQ4[1], APTQ4[0]), (APTQ4[2], APTQ4[0]),
    (APTQ4[0], FP16), (RTN4, FP16),
    (ZS_APTQ4, ZS_FP16),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-resamples", type=int, default=10_000)
    args = ap.parse_args()
    folder = REPO_ROOT / "reference"
    out = []
    for a, b in PAIRS:
        ra, rb = resolve(a, folder), resolve(b, folder)
        rows = compare(ra, rb, n_resamples=args.n_resamples, seed=0)
        out.append({"a": a, "b": b, "results": rows})
        print(a, "−", b, "  ".join(f"{r['task']} {r['diff']:+.2f} [{r['ci']['low']:+.2f}, {r['ci']['high']:+.2f}] "
                                 f"p={r['p_value']:.3g}" for r in rows))
    doc = {"command": f"python benchmarks/paired_reference.py ({args.n_resamples} resamples, seed 0)", "pairs": out}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
