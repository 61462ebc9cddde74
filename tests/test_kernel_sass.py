"""The GEMV's static cost stays at or under its targets: SASS instructions per weight in the main loop
(``benchmarks/kernel_sass.py`` defines the count) and no register spills, compiled for sm_90 without a
GPU. Only the launch-default configuration of each bits × group is built (a few seconds each); the full
table is the benchmark's."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")  # hidden on purpose in the no-Triton pass

from conftest import require_tool  # noqa: E402

require_tool("ptxas")

REPO = Path(__file__).resolve().parent.parent
TARGETS = {4: 3.5, 2: 2.0}  # instructions per weight, issue 17

SCRIPT = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import kernel_sass as S
if not __import__("pathlib").Path(S.tool("ptxas")).exists():
    print(json.dumps("no ptxas")); raise SystemExit
rows = [S.measure(*job, S.BANDWIDTH, S.ISSUE_RATE) for job in S.quant_jobs(["gemv"], [4, 2], [128, 0], quick=True)]
print(json.dumps([[r.bits, r.group, r.instr_per_weight, r.spill_instructions, r.stack_bytes] for r in rows]))
"""


def run_script(script: str, *args: str):
    """Run ``script`` (which compiles kernels: never under the interpreter) in a fresh Python at the repository
    root and return the JSON of its last output line."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gemv_rows():
    out = run_script(SCRIPT)
    assert out != "no ptxas", "benchmarks/kernel_sass.py finds no ptxas where tests/conftest.py found one"
    return out


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("group", [128, 0])
def test_gemv_instructions_per_weight_within_target(gemv_rows, bits, group):
    (ipw, spills, stack), = [r[2:] for r in gemv_rows if r[0] == bits and r[1] == group]
    assert ipw <= TARGETS[bits], f"{ipw:.2f} instructions per weight > {TARGETS[bits]} ({bits}-bit, group {group})"
    assert spills == 0 and stack == 0


@pytest.mark.slow
def test_counts_are_deterministic():
    """Two builds of one configuration give the same SASS count (the table can be compared across commits)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), TRITON_ALWAYS_COMPILE="1")
    one = SCRIPT.replace("[4, 2], [128, 0]", "[4], [128]")
    outs = [subprocess.run([sys.executable, "-c", one], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=900).stdout.strip().splitlines()[-1:] for _ in range(2)]
    assert outs[0] != ['"no ptxas"'], "benchmarks/kernel_sass.py finds no ptxas where tests/conftest.py found one"
    assert outs[0] == outs[1] and outs[0]


ARRIVE_SCRIPT = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import kernel_sass as S
import harness.packed.tuning as T
((fn, types, ce, w, st, *_),) = T.sass_configs("gemv", 2, 0, quick=True)
_, _, sass = S.resources(S.compile_sm90(fn, types, {**ce, "SPLIT_K": 2}, w, st).asm["cubin"])
ops = [op for op, _ in S.parse_sass(sass)[0]]
print(json.dumps({k: ops.count(k) for k in ("VOTEU", "REDUX", "POPC", "SHFL", "FLO", "REDG", "ATOMG")}))
"""


def test_split_k_counter_atomics_are_not_warp_aggregated():
    """The GEMV's split-K epilogue (``harness.packed.common.split_k_reduce``) issues its counter atomics from one
    thread: one ``red.max`` (epoch), one ``atom.add`` (arrival), one ``atom.exch`` (reset), and none of the vote,
    redux, popc, shfl and flo of ptxas's warp aggregation, which it adds where it cannot see the predicate as one
    lane (Triton 3.6's scalar atomics: about 15 instructions in every CTA, issue 26)."""
    counts = run_script(ARRIVE_SCRIPT)
    assert counts == {"VOTEU": 0, "REDUX": 0, "POPC": 0, "SHFL": 0, "FLO": 0, "REDG": 1, "ATOMG": 2}, counts


MODEL_SCRIPT = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import kernel_sass as S
# A made-up configuration whose ceilings are worked out by hand in test_model_by_hand
r = S.Row("gemv", 4, 0, {}, 2, 3, 1000, 500.0, 2.0, 100, 0, 0, 0.5, 1.0, 0.0, {}, shared_bytes=70000,
          other_instructions=0, pipelined=True, block_n=512, k_step=128)
hand = [S.resident_ctas(100, 70000, 2), S.resident_ctas(255, 0, 8), S.resident_ctas(32, 0, 1)]
hand += [S.model(r, 4096, 4096, 8).__dict__, S.model(r, 4096, 4096, 1).__dict__]
small = S.Row(**{**r.__dict__, "registers": 32, "shared_bytes": 0, "pipelined": False})
hand.append(S.model(small, 8192, 512, 4).__dict__)
if "--hand" in sys.argv:
    print(json.dumps(hand)); raise SystemExit
print(json.dumps([[r.bits, r.group, m.N, m.K, m.split_k, m.ctas, m.warps_per_sm, m.ceiling]
                  for _, r, m in S.shipped_models()] + [S.SHAPES]))
"""


def _model_script(*args):
    return run_script(MODEL_SCRIPT, *args)


def test_model_by_hand():
    """The occupancy model on numbers worked out by hand (sm_90: 64 warps, 65 536 registers, 228 KiB an SM;
    132 SMs × 4 schedulers at 1.98 GHz; 4.3 TB/s; 800 ns)."""
    (r1, l1), (r2, l2), (r3, l3), split8, split1, small = _model_script("--hand")
    assert (r1, l1) == (3, "shared")  # 233472 // (70000 + 1024) = 3; registers: 65536 // (104·32·2) = 9
    assert (r2, l2) == (1, "registers")  # 256 registers × 32 × 8 warps = the whole file
    assert (r3, l3) == (32, "ctas")  # 64 one-warp CTAs fit by warps, 32 by the CTA limit
    # 8 column tiles × 8 splits = 64 CTAs of 2 warps on 64 SMs: 2 schedulers each, 4 iterations a CTA
    assert split8["ctas"] == 64 and split8["warps_per_sm"] == 2.0 and split8["resident_per_sm"] == 3
    issue = 64 * 2 * 1.98e9 * 32 * 0.5 / 2.0 / 4.3e12
    assert split8["issue_ceiling"] == pytest.approx(issue, abs=1e-4)
    assert split8["dram_ceiling"] == pytest.approx(0.5 / (0.5 + 4 * 8 / 4096), abs=1e-4)  # fp32 partials
    assert split8["ceiling"] == pytest.approx(issue, abs=1e-4)  # issue-bound: the grid starves the schedulers
    # no split: 8 CTAs; 2 iterations of 32 KiB in flight each → Little's law: 8 · 64 KiB / 800 ns
    assert split1["latency_ceiling"] == pytest.approx(8 * 2 * 512 * 128 * 0.5 / 800e-9 / 4.3e12, abs=1e-4)
    assert split1["ceiling"] < split8["ceiling"]
    # not pipelined, 1 warp: 16 tiles × 4 splits = 64 CTAs, one iteration (32 KiB) in flight each
    assert small["latency_ceiling"] == pytest.approx(64 * 512 * 128 * 0.5 / 800e-9 / 4.3e12, abs=1e-4)
    assert small["waves"] == pytest.approx(64 / (132 * 32), abs=1e-3)


# Issue 26: the shipped (static-table) GEMV configurations at LLaMA-7B's shapes, M = 1, 4- and 2-bit, g128 and
# per-channel, must model at ≥ 85% of 4.3 TB/s. 85% is the issue's target, not a measured figure; the model
# and its constants are benchmarks/kernel_sass.py's.
CEILING_TARGET = 0.85


def test_shipped_gemv_configs_model_at_least_85_percent():
    *rows, shapes = _model_script()
    covered = {(b, g, n, k) for b, g, n, k, *_ in rows}
    assert covered == {(b, g, n, k) for b in (4, 2) for g in (128, 0) for n, k in shapes}
    for bits, group, N, K, split_k, _ctas, _warps, ceiling in rows:
        assert ceiling >= CEILING_TARGET, f"{bits}-bit g{group} {N}×{K} split {split_k}: {ceiling:.1%} modelled"


# Issue 26, item 5: the tensor-core GEMM (harness.packed.gemm_tc) at M = 16 — the static table's configuration for
# 4096×4096 — costs ≤ 2.5 SASS instructions per weight in its main loop (the count of the module docstring of
# benchmarks/kernel_sass.py), with no spills; 2-bit g128 included (K blocks of one group, 8 words paired in
# registers).
TC_TARGET = 2.5
TC_SCRIPT = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import kernel_sass as S
import harness.packed.tuning as T
out = []
for bits, group in [(4, 128), (4, 0), (2, 128), (2, 0)]:
    c = T.static_config(False, 16, 4096, 4096, bits, group, "gemm_tc")
    (r,) = S.static_rows("gemm_tc", bits, group, [(16, c.block_n, c.block_k, c.num_warps, c.num_stages)])
    out.append([bits, group, r.instr_per_weight, r.spill_instructions, r.stack_bytes, r.breakdown["mma"]])
print(json.dumps(out))
"""


def test_tensor_core_gemm_within_target_at_m16():
    rows = run_script(TC_SCRIPT)
    assert len(rows) == 4
    for bits, group, ipw, spills, stack, mma in rows:
        assert ipw <= TC_TARGET, f"gemm_tc {bits}-bit g{group}: {ipw:.2f} instructions per weight > {TC_TARGET}"
        assert spills == 0 and stack == 0 and mma > 0
