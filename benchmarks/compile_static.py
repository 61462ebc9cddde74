"""Every configuration of the shipped static table compiled for sm_90 with the Triton installed: does each
kernel the harness launches by default build with this Triton (the GPU machine has triton 3.6, this
project's CI the newest), and what does it cost (SASS instructions per weight, registers, spills)?

    python benchmarks/compile_static.py --out reference/benchmarks/static_compile_triton3.9.json
    PYTHONPATH=. /path/to/venv-with-triton-3.6/bin/python benchmarks/compile_static.py \
        --out reference/benchmarks/static_compile_triton3.6.json

No GPU is needed (``benchmarks/kernel_sass.py`` compiles and counts). A configuration that fails to
compile is recorded with its error and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "static_compile.json"))
    args = p.parse_args()
    import triton
    from kernel_sass import BANDWIDTH, ISSUE_RATE, measure

    import harness.packed.tuning as T

    table = json.loads(T.STATIC_TABLE.read_text())
    rows, failed = [], 0
    seen: dict[tuple, dict] = {}
    for e in table["configs"]:
        c = e["config"]
        space = [(c["block_m"], c["block_n"], c["block_k"], c["num_warps"], c["num_stages"])]
        key = (e["kernel"], e["bits"], e["group"], *space[0])
        if key not in seen:  # one compile per distinct (kernel, bits, group, tile); split-K shares the main loop
            try:
                (spec,) = T.sass_configs(e["kernel"], e["bits"], e["group"], space=space)
                r = measure(e["kernel"], *spec, BANDWIDTH, ISSUE_RATE)
                seen[key] = {"compiled": True, "instr_per_weight": round(r.instr_per_weight, 4),
                             "registers": r.registers, "spill_instructions": r.spill_instructions}
            except Exception as err:  # noqa: BLE001 - a configuration that does not build is the finding
                seen[key] = {"compiled": False, "error": f"{type(err).__name__}: {err}"[:300]}
                failed += 1
        rows.append({k: e[k] for k in ("kernel", "m_bucket", "N", "K", "bits", "group", "config")} | seen[key])
        r = rows[-1]
        sys.stdout.write(f"{r['kernel']:<5} M≤{r['m_bucket']:<2} {r['N']:>5}×{r['K']:<5} {r['bits']}b "
                         f"g{r['group'] or 'pc':<4} {'ok' if r['compiled'] else 'FAILED'} "
                         f"{r.get('instr_per_weight', '')} regs {r.get('registers', '')}\n")
    out = {"triton": triton.__version__, "entries": len(rows), "distinct_compiles": len(seen), "failed": failed,
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    sys.stdout.write(f"triton {triton.__version__}: {len(seen)} distinct configurations, {failed} failed; "
                     f"written {args.out}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
