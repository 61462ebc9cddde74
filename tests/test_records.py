import json

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


def test_wandb_offline_logs_and_a_wandb_failure_never_loses_the_record(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg("method=rtn", "task=[wikitext2]", "wandb.mode=offline")
    rec = execute(cfg)
    assert list((tmp_path / "results" / "wandb").glob("offline-run-*")), "no offline W&B run written"

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
