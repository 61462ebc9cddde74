import json
from pathlib import Path

import pytest

from harness.results.records import load_records
from harness.run import execute
from harness.util import write_atomic


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "records" / "r.json"
    write_atomic(path, {"status": "complete", "v": 1})

    def broken_dump(obj, f, **kw):
        f.write('{"status": "comp')  # a partial write, then a crash
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, {"status": "complete", "v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "complete", "v": 1}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp files left


@pytest.mark.slow
def test_wandb_offline_logs_and_a_wandb_failure_never_loses_the_record(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("method=rtn", "task=[wikitext2]", "wandb.mode=offline", "wandb.group=sweep-1")
    rec = execute(cfg)
    (run_dir,) = (tmp_path / "results" / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("*.wandb")  # what `wandb sync` uploads: metrics, intervals, group, the record
    data = log_file.read_bytes()
    for needle in ("wikitext2/ppl", "wikitext2/ppl_ci/low", "wikitext2/ppl_ci/high", "sweep-1", "run-record",
                   f"record-{rec['run_id']}", "record.json"):
        assert needle.encode() in data, needle

    import wandb

    def broken(*a, **k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    rec2 = execute({**cfg, "force": True, "bits": 3, "method": {**cfg["method"], "bits": 3}})
    assert rec2["status"] == "complete" and rec2["run_id"] != rec["run_id"]
    ids = {r["run_id"] for r in load_records(tmp_path / "results")}
    assert ids == {rec["run_id"], rec2["run_id"]}


def test_other_architectures_and_group_sizes(tiny_cfg):
    rec = execute(tiny_cfg("model=tiny_qwen2", "method=rtn", "bits=4", "group_size=32", "sym=true",
                           "task=[c4]"))
    assert rec["model"]["architecture"] == "Qwen2ForCausalLM"
    assert rec["quantization"]["avg_bits"] == 4.0
    assert rec["quantization"]["avg_bits_with_overhead"] == pytest.approx(4 + 16 / 32)
    assert all(info["group_size"] == 32 for info in rec["quantization"]["layers"].values())


@pytest.mark.slow
def test_the_identity_covers_code_and_data_and_a_skip_names_the_record(tiny_cfg, tmp_path, monkeypatch, caplog):
    import logging
    import shutil

    import harness.run as R

    cfg = tiny_cfg("method=rtn", "task=[wikitext2]")
    first = execute(cfg)
    assert first["identity"]["code"]["sha256"] and first["identity"]["data"]["wikitext2"]
    with caplog.at_level(logging.INFO, logger="harness.run"):
        again = execute(cfg)
    assert again["run_id"] == first["run_id"] and again["finished"] == first["finished"]
    assert f"reusing the complete record {tmp_path / 'results' / 'records' / first['run_id']}.json" in caplog.text

    # other evaluation data (one changed byte): another identity, so the old number is never reused
    data = tmp_path / "data"
    shutil.copytree(R.resolve_data_dir(None) / "wikitext2", data / "wikitext2")
    raw = data / "wikitext2" / "wiki.test.raw"
    raw.write_text(raw.read_text(encoding="utf-8").replace("the", "thE", 1), encoding="utf-8")
    other_data = execute({**cfg, "data_dir": str(data)})
    assert other_data["run_id"] != first["run_id"]

    # other code (a changed source file): another identity
    real = R.file_sha256
    monkeypatch.setattr(R, "file_sha256", lambda p: real(p) + ("x" if str(p).endswith("rtn.py") else ""))
    other_code = execute(cfg)
    assert other_code["run_id"] != first["run_id"] and other_code["finished"] >= first["finished"]
    assert other_code["identity"]["code"] != first["identity"]["code"]


def test_a_record_with_the_same_run_id_but_another_identity_is_not_reused(tiny_cfg, caplog):
    import logging

    from harness.results.records import record_path

    cfg = tiny_cfg("method=rtn", "task=[wikitext2]")
    rec = execute(cfg)
    path = record_path(Path(cfg["results_dir"]), rec["run_id"])
    stale = {**json.loads(path.read_text()), "identity": {"code": "older"}, "finished": "2000-01-01"}
    write_atomic(path, stale)
    with caplog.at_level(logging.INFO, logger="harness.run"):
        rerun = execute(cfg)
    assert "its identity (schema 2) is not this run's" in caplog.text and rerun["finished"] > "2000-01-01"


def test_unreadable_records_are_named_in_one_line_and_left_out(tmp_path, caplog):
    import logging

    recs = tmp_path / "records"
    write_atomic(recs / "future.json", {"schema": 99, "status": "complete"})
    write_atomic(recs / "other.json", {"schema": 2, "status": "complete", "hello": 1})
    write_atomic(recs / "half.json", {"schema": 2, "status": "running"})
    (recs / "broken.json").write_text('{"schema": 2, "sta')
    with caplog.at_level(logging.WARNING):
        assert load_records(tmp_path) == []
    lines = [r.getMessage() for r in caplog.records]
    assert any("future.json: schema 99 is not one this harness reads (1..2)" in m for m in lines)
    assert any("other.json: it has no 'run_id'" in m for m in lines)
    assert any("broken.json: not valid JSON" in m for m in lines)
    assert not any("half.json" in m for m in lines)  # an interrupted run is simply not a result


def test_the_published_reference_records_render(tmp_path):
    """The records in reference/ (schema 1, written before the identity) still render into their tables."""
    from harness.results.records import REFERENCE_DIR
    from harness.results.tables import build_tables

    recs = load_records(REFERENCE_DIR)
    assert len(recs) >= 30 and {r["schema"] for r in recs} == {1, 2}  # written before and after the identity
    ((key, table),) = build_tables(recs).items()
    assert key == ("SmolLM2-135M-Instruct", "quick")
    names = [c.name for c in table.columns]
    assert names[:2] == ["wikitext2 ppl", "c4 ppl"]
    assert {"zeroshot mean [limit=100]", "zeroshot mean [limit=500]"} <= set(names)  # item counts kept apart
    fp16 = next(cells for label, bits, cells in table.rows if label == "FP16")
    assert round(fp16[table.columns[0]].value, 2) == 29.19



KILLED_RUN = """
import json, os, signal, sys
from harness import hookimpl
from harness.plugins.manager import make_plugins
from harness.run import execute

cfg, when = json.load(sys.stdin)
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
class DieWhileEvaluating:
    harness_task_result = staticmethod(hookimpl(die))
if when == "writing the record":
    os.fsync = die  # the record's bytes are in its temporary file, not yet renamed
execute(cfg, plugins=make_plugins([DieWhileEvaluating()] if when == "evaluating" else []))
"""


@pytest.mark.slow
@pytest.mark.parametrize("when", ["evaluating", "writing the record"])
def test_a_killed_run_leaves_no_complete_record_and_runs_again(tiny_cfg, tmp_path, caplog, when):
    """A job killed mid-run (preempted, timed out, cancelled; SIGKILL here: nothing can clean up) leaves no
    record that reads as complete, so the run is computed again, not skipped. Killed after the record's bytes
    are written but before the rename, the temporary stays hidden from every reader."""
    import signal
    import subprocess
    import sys

    from harness.results.records import completed, records_dir

    cfg = tiny_cfg("method=rtn", "task=[wikitext2]")
    res = subprocess.run([sys.executable, "-c", KILLED_RUN], input=json.dumps([cfg, when]), text=True,
                         capture_output=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == -signal.SIGKILL, res.stderr[-3000:]
    results = tmp_path / "results"
    left = sorted(f.name for f in records_dir(results).iterdir() if not f.name.endswith(".lock"))
    if when == "evaluating":
        assert left == []
    else:
        assert len(left) == 1 and left[0].startswith(".") and left[0].endswith(".tmp")  # the unrenamed temporary
        assert json.loads((records_dir(results) / left[0]).read_text())["status"] == "complete"  # all its bytes
    assert load_records(results) == []
    with caplog.at_level("INFO"):
        rec = execute(cfg)  # the killed run's lock went with it
    assert "skipping" not in caplog.text and completed(results, rec["run_id"])["status"] == "complete"
