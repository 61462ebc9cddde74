import random

import pytest
import torch

from harness.errors import ConfigError
from harness.inputs.data import ENV_VAR, Corpus, load_corpus, resolve_data_dir
from harness.inputs.model import load_tokenizer
from harness.inputs.windows import (
    CalibrationSpec,
    calibration_windows,
    encode,
    joined_ids,
    random_doc_windows,
    sequential_windows,
)


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    return load_tokenizer("embedded", cache_dir)


def test_wikitext2_rows_are_the_hf_rows(data_dir):
    corpus = load_corpus("wikitext2_test", data_dir)
    assert len(corpus.docs) == 4358  # HF wikitext-2-raw-v1 test
    assert corpus.docs[0] == "" and corpus.docs[1] == " = Robert Boulter = \n"
    assert all(d == "" or d.endswith("\n") for d in corpus.docs)


def test_c4_eval_and_calibration_documents_are_disjoint(data_dir):
    ev, cal = load_corpus("c4_eval", data_dir), load_corpus("c4_calib", data_dir)
    assert len(ev.docs) == 1000 and len(cal.docs) == 1000
    assert not set(ev.docs) & set(cal.docs)


def test_missing_data_dir_and_file_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ConfigError, match=f"does not exist; fix data_dir=... or the {ENV_VAR}"):
        resolve_data_dir(str(tmp_path / "nope"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=f"from {ENV_VAR}"):
        resolve_data_dir(None)
    with pytest.raises(ConfigError, match=r"missing data file .*wikitext2/wiki.test.raw"):
        load_corpus("wikitext2_test", tmp_path)


def test_sequential_windows_drop_the_tail():
    ids = torch.arange(10)
    assert sequential_windows(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert sequential_windows(ids, 3, max_windows=2).shape == (2, 3)
    with pytest.raises(ConfigError):
        sequential_windows(ids, 11)


def gptq_get_c4_eval(docs, tokenizer, n, seqlen):
    """GPTQ's datautils.get_c4 evaluation loop, transcribed (global random, tokenizing each draw)."""
    random.seed(0)
    out = []
    for _ in range(n):
        while True:
            i = random.randint(0, len(docs) - 1)
            tmp = tokenizer(docs[i], return_tensors="pt")
            if tmp.input_ids.shape[1] >= seqlen:
                break
        i = random.randint(0, tmp.input_ids.shape[1] - seqlen - 1)
        out.append(tmp.input_ids[:, i : i + seqlen])
    return torch.cat(out)


@pytest.mark.slow
def test_c4_windows_match_gptq_sampling(data_dir, tokenizer):
    docs = load_corpus("c4_eval", data_dir).docs
    ours = random_doc_windows(docs, tokenizer, 12, 256, seed=0)
    assert torch.equal(ours, gptq_get_c4_eval(docs, tokenizer, 12, 256))


def test_calibration_is_cached_and_seeded(data_dir, tokenizer, tmp_path):
    spec = CalibrationSpec(source="c4", nsamples=6, seqlen=128, seed=3)
    a, info = calibration_windows(spec, tokenizer, data_dir, tmp_path)
    assert a.shape == (6, 128) and info["corpus"] == "c4_calib"
    files = list((tmp_path / "calibration").glob("*.pt"))
    assert len(files) == 1
    b, _ = calibration_windows(spec, tokenizer, data_dir, tmp_path)
    assert torch.equal(a, b)
    c, _ = calibration_windows(CalibrationSpec("c4", 6, 128, seed=4), tokenizer, data_dir, tmp_path)
    assert not torch.equal(a, c)
    w, info = calibration_windows(CalibrationSpec("wikitext2", 4, 128, 0), tokenizer, data_dir, tmp_path)
    assert w.shape == (4, 128) and info["corpus"] == "wikitext2_valid"
    with pytest.raises(ConfigError, match="calibration.source='wikitext2_test' is unknown"):
        CalibrationSpec(source="wikitext2_test")


def test_joined_ids_are_cached_by_text_and_tokenizer(data_dir, tokenizer, tmp_path):
    rows = load_corpus("wikitext2_valid", data_dir).docs[:400]
    text = Corpus("wikitext2_valid", rows, "test")
    fresh = encode(tokenizer, "\n\n".join(rows))
    assert torch.equal(joined_ids(text, tokenizer, cache_dir=tmp_path), fresh)  # computed, then cached
    (entry,) = (tmp_path / "tokens").glob("*.pt")
    assert torch.equal(joined_ids(text, tokenizer, cache_dir=tmp_path), fresh)  # read back: same ids
    edited = Corpus("wikitext2_valid", [rows[0] + " x", *rows[1:]], "test")
    assert not torch.equal(joined_ids(edited, tokenizer, cache_dir=tmp_path), fresh)  # another text: its own entry
    plain = joined_ids(text, tokenizer, special_tokens=False, cache_dir=tmp_path)
    assert torch.equal(plain, encode(tokenizer, "\n\n".join(rows), special_tokens=False))
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 3 and entry.exists()
