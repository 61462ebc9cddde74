"""Named perplexity protocols: ``bos: none | per_window`` — the windows, the protocol and run identity,
the checks before any work, a model's recommended protocol, and tables that never mix protocols."""
from __future__ import annotations

import copy

import pytest
import torch

from harness.errors import ConfigError
from harness.inputs.data import load_corpus
from harness.inputs.model import load_tokenizer
from harness.inputs.windows import encode, joined_ids
from harness.plugins.task import TaskEnv
from harness.results.compare import check_pairable, unpairable
from harness.results.formats import to_markdown
from harness.results.tables import build_tables
from harness.run import execute, plan
from tasks.perplexity import C4, PerplexityConfig, WikiText2


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return load_tokenizer("embedded", cache_dir)


def task(cls, data_dir, cache_dir, **opts):
    return cls(PerplexityConfig(**{"seqlen": 64, "n_windows": 3, **opts}), TaskEnv(data_dir, cache_dir, "cpu"))


@pytest.mark.slow
def test_per_window_puts_bos_first_and_keeps_the_window_length(tokenizer, data_dir, cache_dir):
    text = load_corpus("wikitext2_test", data_dir)
    none = task(WikiText2, data_dir, cache_dir).windows(text, tokenizer)
    per = task(WikiText2, data_dir, cache_dir, bos="per_window").windows(text, tokenizer)
    assert none.shape == per.shape == (3, 64)
    assert torch.equal(none, joined_ids(text, tokenizer)[: 3 * 64].view(3, 64))  # GPTQ's windows, unchanged
    bos = tokenizer.bos_token_id
    assert (per[:, 0] == bos).all()
    assert torch.equal(per[:, 1:].reshape(-1), encode(tokenizer, "\n\n".join(text.docs), False)[: 3 * 63])
    c4 = task(C4, data_dir, cache_dir, bos="per_window").windows(load_corpus("c4_eval", data_dir), tokenizer)
    assert c4.shape == (3, 64) and (c4[:, 0] == bos).all()


def test_bos_is_part_of_the_protocol_and_the_run_identity(tiny_cfg):
    a = plan(tiny_cfg("method=rtn", "task=[wikitext2]"))
    b = plan(tiny_cfg("method=rtn", "task=[wikitext2]", "task.wikitext2.bos=per_window"))
    assert a.identity["tasks"]["wikitext2"]["bos"] == "none" and b.identity["tasks"]["wikitext2"]["bos"] == "per_window"
    assert a.run_id != b.run_id


def test_bad_bos_settings_are_one_line_before_any_work(tiny_cfg, monkeypatch):
    import harness.run as R

    with pytest.raises(ConfigError, match=r"bos='first' is unknown; choose one of none, per_window") as err:
        plan(tiny_cfg("task=[wikitext2]", "task.wikitext2.bos=first"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="model.recommended_bos='always' is unknown"):
        plan(tiny_cfg("task=[wikitext2]", "model.recommended_bos=always"))
    # a tokenizer without BOS: refused right after loading, before the quantization
    real = R.load_model

    def no_bos(*a, **k):
        model, tok, info = real(*a, **k)
        tok.bos_token = None
        return model, tok, info

    monkeypatch.setattr(R, "load_model", no_bos)
    monkeypatch.setattr(R, "quantize", lambda *a, **k: pytest.fail("quantized before the tokenizer check"))
    with pytest.raises(ConfigError, match="task.wikitext2.bos=per_window, but the tokenizer .* has no BOS token"):
        execute(tiny_cfg("method=gptq", "task=[wikitext2]", "task.wikitext2.bos=per_window"))


def test_a_model_config_recommends_a_protocol_and_another_is_warned_about(tiny_cfg, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        p = plan(tiny_cfg("model=tiny_gemma3", "method=fp16", "task=[wikitext2,c4]"))
    assert len(p.warnings) == 2 and "model tiny-gemma3 recommends bos=per_window" in p.warnings[0]
    assert "task.wikitext2.bos=none" in p.warnings[0] and p.warnings[0] in caplog.text
    p = plan(tiny_cfg("model=tiny_gemma3", "method=fp16", "task=[wikitext2]", "task.wikitext2.bos=per_window"))
    assert p.warnings == []
    assert plan(tiny_cfg("method=fp16", "task=[wikitext2]")).warnings == []  # no recommendation: no warning


def test_per_window_run_is_recorded_and_tables_never_mix_protocols(tiny_cfg):
    none = execute(tiny_cfg("method=fp16", "task=[wikitext2]"))
    per = execute(tiny_cfg("method=fp16", "task=[wikitext2]", "task.wikitext2.bos=per_window"))
    m = per["metrics"]["wikitext2"]
    assert per["protocol"]["wikitext2"]["bos"] == "per_window" and m["bos"] == "per_window"
    assert m["window_tokens"] == 63 and m["tokens"] == 2 * 64 and m["ppl"] != none["metrics"]["wikitext2"]["ppl"]

    ((_, alone),) = build_tables([per], declared={}).items()
    assert [c.name for c in alone.columns] == ["wikitext2 ppl [bos=per_window]"]
    assert "wikitext2 ppl [bos=per_window] ↓" in to_markdown("t", alone)
    ((_, both),) = build_tables([none, per], declared={}).items()
    assert [c.name for c in both.columns] == ["wikitext2 ppl [bos=none]", "wikitext2 ppl [bos=per_window]"]
    (row,) = both.rows  # one method, its two protocols in two columns
    assert {c.name: cell.value for c, cell in row[2].items()} == {
        "wikitext2 ppl [bos=none]": none["metrics"]["wikitext2"]["ppl"], "wikitext2 ppl [bos=per_window]": m["ppl"]}
    other = copy.deepcopy(none)
    other["run_id"] += "-s128"
    other["method"]["label"] = "FP16 again"
    other["protocol"]["wikitext2"]["seqlen"] = 128
    ((_, seq),) = build_tables([none, other], declared={}).items()
    assert [c.name for c in seq.columns] == ["wikitext2 ppl [seqlen=64]", "wikitext2 ppl [seqlen=128]"]

    with pytest.raises(ConfigError, match="protocols differ \\(bos: none vs per_window\\)"):
        check_pairable(none, per, "wikitext2")
    assert "protocols differ (bos: none vs per_window)" in unpairable(none, per, "wikitext2")
    assert unpairable(none, copy.deepcopy(none), "wikitext2") is None
    shifted = copy.deepcopy(none)
    shifted["metrics"]["wikitext2"]["tokens_sha256"] = "0" * 64  # same protocol, other text: not window by window
    assert "different text" in unpairable(none, shifted, "wikitext2")
    del shifted["metrics"]["wikitext2"]["window_nll"]
    assert "no per-window results" in unpairable(none, shifted, "wikitext2")


def test_records_written_before_the_bos_field_read_as_bos_none(tiny_cfg):
    new = execute(tiny_cfg("method=fp16", "task=[wikitext2]"))
    old = copy.deepcopy(new)
    old["run_id"] += "-old"
    old["method"]["label"] = "FP16 old"
    del old["protocol"]["wikitext2"]["bos"]
    check_pairable(old, new, "wikitext2")  # pairable: the same protocol
    ((_, table),) = build_tables([old, new], declared={}).items()
    assert [c.name for c in table.columns] == ["wikitext2 ppl"]
