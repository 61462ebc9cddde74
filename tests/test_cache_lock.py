"""Shared caches under concurrent jobs: processes that start together build each entry once.

Each test forks ``N`` processes that wait at a barrier and then ask for the same, not yet built
cache entry. The builder inside each cache function is wrapped (in the children only) to append a
line to a file and to sleep, so that without the lock every process would build the entry; with it
exactly one line appears and every process returns the same result.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock, Timeout

from harness.quantize.driver import MethodRun

N = 4
BUILD_SECONDS = 0.5  # long enough that unlocked builders would overlap


def counted(builder, log_file: Path):
    """``builder`` that first records one line in ``log_file`` (one build) and sleeps."""

    def wrapper(*args, **kwargs):
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(BUILD_SECONDS)
        return builder(*args, **kwargs)

    return wrapper


def race(tmp_path: Path, child) -> tuple[int, list[str]]:
    """Run ``child(builds_file)`` in N forked processes at once; (builds counted, their results)."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(N), ctx.Queue()
    builds = tmp_path / "builds.log"

    def main():
        torch.set_num_threads(1)  # forked after the parent's OpenMP pool may exist: stay out of parallel regions
        barrier.wait(timeout=30)
        results.put(child(builds))

    procs = [ctx.Process(target=main) for _ in range(N)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0, f"child exited with {p.exitcode}"
    lines = builds.read_text().splitlines() if builds.exists() else []
    return len(lines), out


@pytest.fixture(scope="module")
def tokenizer(cache_dir):
    from harness.inputs.model import load_tokenizer

    return load_tokenizer("embedded", cache_dir)


def test_calibration_windows_are_drawn_once(tmp_path, data_dir, tokenizer):
    from harness.inputs import windows

    spec = windows.CalibrationSpec(nsamples=4, seqlen=64, seed=3)

    def child(builds):
        windows.random_doc_windows = counted(windows.random_doc_windows, builds)
        w, info = windows.calibration_windows(spec, tokenizer, data_dir, tmp_path / "cache")
        return hashlib.sha256(w.numpy().tobytes()).hexdigest()

    n, out = race(tmp_path, child)
    assert n == 1 and len(set(out)) == 1
    assert len(list((tmp_path / "cache" / "calibration").glob("*.pt"))) == 1


def test_sensitivities_are_computed_once(tmp_path):
    from types import SimpleNamespace

    from harness.quantize import sensitivity

    method = SimpleNamespace(name="aptq", sensitivity_key=lambda: {"sensitivity": "trace"},
                             sensitivity_pass="blocks", sensitivity_table=None, sensitivity_windows=None)

    def child(builds):
        sensitivity.sensitivity_pass = counted(lambda *a: {"model.layers.0.self_attn.q_proj": 1.5}, builds)
        mr = MethodRun(method, None, None)
        got = sensitivity.cached_sensitivities(None, mr, None, {}, {"model": "m"}, tmp_path / "cache")
        return json.dumps([got["scores"], got["cached"]])

    n, out = race(tmp_path, child)
    assert n == 1
    assert sorted(out) == sorted([json.dumps([{"model.layers.0.self_attn.q_proj": 1.5}, False])]
                                 + [json.dumps([{"model.layers.0.self_attn.q_proj": 1.5}, True])] * (N - 1))


@pytest.mark.slow
def test_zeroshot_data_is_converted_once(tmp_path, data_dir):
    from tasks import zeroshot_data

    def child(builds):
        zeroshot_data.convert = counted(zeroshot_data.convert, builds)
        task = zeroshot_data.prepare("piqa", data_dir, tmp_path / "cache")
        return task.data_sha256

    n, out = race(tmp_path, child)
    assert n == 1 and len(set(out)) == 1
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "zeroshot").iterdir() if p.is_dir()] == ["piqa"]


def test_a_gguf_model_is_converted_once(tmp_path, tokenizer):
    """The GGUF reader is replaced by a tiny random model (a real GGUF conversion takes minutes); the
    rest of the conversion (the plain copy, the atomic save) is the real code."""
    import transformers

    from harness.inputs import model as model_mod

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not read")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tokenizer))

    def child(builds):
        def read_gguf(*args, **kwargs):
            torch.manual_seed(0)
            return transformers.LlamaForCausalLM(config)

        transformers.AutoModelForCausalLM.from_pretrained = counted(read_gguf, builds)
        transformers.AutoTokenizer.from_pretrained = lambda *args, **kwargs: tokenizer
        out = model_mod.converted_gguf(gguf, tmp_path / "cache")
        return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    n, out = race(tmp_path, child)
    assert n == 1 and len(set(out)) == 1
    assert len([p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]) == 1  # no temporaries left


def test_a_killed_holder_releases_the_lock(tmp_path):
    """A job killed (or preempted) while it builds never leaves the entry locked for the others."""
    from harness.util import cache_lock

    entry = tmp_path / "entry"
    ctx = mp.get_context("fork")
    held = ctx.Event()

    def holder():
        with cache_lock(entry):
            held.set()
            time.sleep(60)

    p = ctx.Process(target=holder)
    p.start()
    assert held.wait(timeout=30)
    with pytest.raises(Timeout):
        FileLock(f"{entry}.lock").acquire(timeout=0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join(timeout=30)
    with cache_lock(entry):
        assert not entry.exists()
