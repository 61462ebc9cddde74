"""``benchmarks/allocation_summary.py``: which random draws a run is tested against, and which records count.

Built from real reference records (random draws with per-window NLLs), copied and altered in a temporary
folder: a candidate that is every draw shifted down, a {2, 3, 4} draw that belongs to another control,
a re-run that must replace its older record, and a GPTQ-3 / GPTQ-4 pair that share a label.
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest

# appended, not first: benchmarks/kernels.py would shadow the `kernels` package transformers imports
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
import allocation_summary as S  # noqa: E402

from harness.results.records import load_record  # noqa: E402
from harness.results.report import REFERENCE_DIR  # noqa: E402

DRAWS = sorted((REFERENCE_DIR / "records").glob("*APTQ-75-g64-act-ts-random-seed[3-7]__*.json"))


def write(folder: Path, rec: dict) -> None:
    (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec))


def shift(rec: dict, nats: float) -> None:
    for t in S.TASKS:
        rec["metrics"][t]["window_nll"] = [x + nats for x in rec["metrics"][t]["window_nll"]]


def wt2(rec: dict) -> float:
    return math.exp(sum(rec["metrics"]["wikitext2"]["window_nll"]) / len(rec["metrics"]["wikitext2"]["window_nll"]))


@pytest.fixture()
def draws() -> list[dict]:
    recs = [load_record(f) for f in DRAWS]
    recs = [r for r in recs if all("window_nll" in r["metrics"][t] for t in S.TASKS)]
    if len(recs) < 3:
        pytest.skip("needs 3 reference random draws with per-window NLLs")
    return recs[:3]


def test_a_run_meets_the_draws_of_its_own_budget_and_the_newest_rerun(tmp_path, draws):
    for d in draws:
        write(tmp_path, d)
    cand = copy.deepcopy(draws[0])
    cand["run_id"], cand["method"]["options"]["sensitivity"] = "cand", "fisher"
    cand["method"]["label"] = "APTQ-75% g64 act ts fisher knapsack"
    shift(cand, -0.05)  # every window 0.05 nats below draw 0: a run better than the draws
    write(tmp_path, cand)
    other = copy.deepcopy(draws[1])  # a {2, 3, 4} draw: a different control, not one of the {2, 4} draws
    other["run_id"], other["quantization"]["allocation"]["choices"] = "b234", [2, 3, 4]
    other["method"]["label"] += " b234"
    shift(other, 0.02)
    write(tmp_path, other)
    rerun = copy.deepcopy(draws[2])  # the same draw again, later: it replaces the older record
    rerun["run_id"], rerun["finished"] = "rerun", "2999-01-01T00:00:00+00:00"
    shift(rerun, 0.01)
    write(tmp_path, rerun)

    recs = S.records([str(tmp_path)])
    ids = {r["run_id"] for r in recs}
    assert "rerun" in ids and draws[2]["run_id"] not in ids and len(recs) == 5
    assert S.budget(other) == "3.500 b234" and S.budget(cand) == "3.500"
    vs = S.versus_random(recs)
    (res,) = vs.values()  # only the candidate is tested; the b234 draw is not among its controls
    for t in S.TASKS:  # draws 0, 1 and the re-run of 2
        assert len(res[t]["draws"]) == 3 and res[t]["diff_mean"] < 0 and res[t]["beats"] >= 1
    ppl = sorted(round(x, 6) for x in res["wikitext2"]["draws"])
    assert ppl == sorted(round(wt2(r), 6) for r in (draws[0], draws[1], rerun))  # not the old draw 2, not b234


def test_gptq_widths_are_named_apart_and_unpaired_text_is_skipped(draws):
    g3 = copy.deepcopy(draws[0])
    g3["method"] = {**g3["method"], "name": "gptq", "label": "GPTQ g64 act ts", "options": {"bits": 3}}
    g4 = copy.deepcopy(g3)
    g4["method"]["options"] = {"bits": 4}
    assert S.name(g3) == "GPTQ g64 act ts w3" != S.name(g4)
    assert set(S.paired(draws[0], draws[1])) == set(S.TASKS)
    moved = copy.deepcopy(draws[1])
    moved["metrics"]["c4"]["tokens_sha256"] = "0" * 64  # other text: no window-by-window test on C4
    assert set(S.paired(draws[0], moved)) == {"wikitext2"}
