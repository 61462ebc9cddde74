"""The CLI end to end on a tiny random LLaMA: records, resume, multirun, report, bad input."""
import json

import pytest

# Never launches a kernel: CI runs this file once, with Triton hidden (.ci/run's no-Triton pass).
pytestmark = pytest.mark.no_triton

TINY = ["+smoke=tiny"]  # conf/smoke/tiny.yaml


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(tmp_path, run_cli):
    cases = {
        "method=nope": "unknown method 'nope'; known: aptq, awq, fp16, gptq, owq, pbllm, rtn, slim",
        "ratio=1.5": "ratio=1.5 is outside [0, 1]",
        "bits=5": "bits=5 is not supported; choose one of 2, 3, 4, 8",
        f"data_dir={tmp_path}/missing": f"data directory {tmp_path}/missing (from data_dir) does not exist",
        "task=[wikitext3]": "unknown task 'wikitext3'",
        "group_size=128": "group_size=128 does not divide in_features=64",
        "method=owq bits=4 method.target_bits=3.5": "target_bits=3.5 must be in [bits=4, 16)",
        "method=pbllm method.salient_frac=1.5": "salient_frac=1.5 is outside (0, 1)",
        "device=tpu": "device='tpu' is unknown; use auto, cpu, cuda or cuda:N",
        "group_size=7": "group_size=7 does not divide in_features=64 (hidden_size of tiny-llama)",
        "method=owq pack=true": "OWQ 4.01 cannot be packed: fp16 weak columns",
        "model.device_map=autoo": "model.device_map='autoo' is unknown; use null, auto, balanced",
        "method=gptq model.device_map=auto": "model.device_map with method=gptq needs offload=true",
    }
    for override, message in cases.items():
        res = run_cli("harness", *TINY, f"results_dir={tmp_path}", *override.split())
        assert res.returncode == 2, (override, res.stderr[-2000:])
        errors = [line for line in res.stderr.splitlines() + res.stdout.splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and message in errors[0], (override, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
        assert "converting" not in res.stderr and not (tmp_path / "wandb").exists()  # refused before any work


@pytest.mark.slow
def test_run_writes_a_complete_record_and_resumes(tmp_path, run_cli):
    res = run_cli("harness", *TINY, f"results_dir={tmp_path}", "method=rtn", "bits=3")
    assert res.returncode == 0, res.stderr[-3000:]
    (path,) = (tmp_path / "records").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "complete" and rec["profile"] == "quick"
    assert rec["method"] == {"name": "rtn", "label": "RTN", "options": {"bits": 3, "group_size": -1, "sym": False}}
    assert rec["quantization"]["avg_bits"] == pytest.approx(3.0)
    assert 3.0 < rec["quantization"]["avg_bits_with_overhead"] < 3.5
    assert len(rec["quantization"]["layers"]) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    for task in ("wikitext2", "c4"):
        m = rec["metrics"][task]
        assert m["ppl"] > 1 and m["windows"] == 2 and len(m["text_sha256"]) == 64
        assert rec["protocol"][task]["seqlen"] == 64
    assert set(rec["timings_s"]) >= {"load", "quantize", "eval_wikitext2", "eval_c4", "total"}
    assert rec["peak_memory_mb"]["cpu_rss"] > 0 and rec["versions"]["torch"]
    assert rec["config"]["bits"] == 3 and "git_commit" in rec
    again = run_cli("harness", *TINY, f"results_dir={tmp_path}", "method=rtn", "bits=3")
    assert again.returncode == 0 and "skipping" in again.stdout + again.stderr
    assert len(list((tmp_path / "records").glob("*.json"))) == 1


@pytest.mark.slow
def test_multirun_sweep_and_report(tmp_path, run_cli):
    res = run_cli("harness", "-m", *TINY, "task=[wikitext2]", f"results_dir={tmp_path}",
                  "method=fp16,rtn", "bits=3,4")
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("*.json")]
    # fp16 ignores bits: its two sweep points are one run (the second is skipped, with a warning).
    assert sorted((r["method"]["name"], r["quantization"]["avg_bits"]) for r in recs) == [
        ("fp16", 16.0), ("rtn", 3.0), ("rtn", 4.0)]
    assert "bits=4 does not apply to method fp16" in res.stdout + res.stderr
    rep = run_cli("harness.report", str(tmp_path))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "tables" / "tiny-llama__quick.md").read_text()
    assert "| FP16 | 16 |" in md and "| RTN | 4 |" in md and "| RTN | 3 |" in md and "wikitext2 ppl" in md
    tex = (tmp_path / "tables" / "tiny-llama__quick.tex").read_text()
    assert "\\begin{tabular}" in tex and "RTN & 3" in tex
    assert "Leaderboard" in (tmp_path / "tables" / "leaderboard.md").read_text()


def test_help_and_cfg_job(run_cli):
    res = run_cli("harness", "--help")
    assert res.returncode == 0 and "method: aptq, awq, fp16, gptq, owq, pbllm, rtn, slim" in res.stdout
    res = run_cli("harness", "--cfg", "job", "method=rtn", "bits=2")
    assert res.returncode == 0 and "bits: 2" in res.stdout


def test_report_entry_point_answers_help(run_cli):
    """``python -m harness.report`` (the fast tier's touch of the entry point; the sweep test renders)."""
    res = run_cli("harness.report", "--help")
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stderr[-2000:]


def test_sweep_callback_renders_once_into_the_sweeps_wandb_group_and_never_raises(tmp_path, monkeypatch, caplog):
    """``RenderTables.on_multirun_end``: one render of ``results_dir``, the sweep dir as the W&B group; a
    failing render is a warning that names the command to run later, never an exception (the records are safe)."""
    from omegaconf import OmegaConf

    from harness.callbacks import RenderTables

    calls = []
    monkeypatch.setattr("harness.results.report.render", lambda folder, options: calls.append((folder, options)) or {})
    cfg = OmegaConf.create({"results_dir": str(tmp_path), "wandb": {"mode": "disabled", "group": None},
                            "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    RenderTables().on_multirun_end(cfg)
    assert len(calls) == 1 and calls[0][0] == tmp_path
    assert calls[0][1].wandb["group"] == (tmp_path / "sweep").as_posix()

    def fail(folder, options):
        raise OSError("disk full")

    monkeypatch.setattr("harness.results.report.render", fail)
    RenderTables().on_multirun_end(cfg)
    assert "python -m harness.report" in caplog.text and "disk full" in caplog.text
