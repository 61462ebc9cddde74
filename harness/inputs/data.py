"""Benchmark text: where it comes from, and GPTQ's way of turning it into token windows.

Data directory resolution (first hit wins):
1. ``data_dir`` in the config (an explicit path must exist);
2. the ``HARNESS_DATA`` environment variable (likewise);
3. ``../shared/data`` beside the checkout (the repository's parent directory);
4. none: Hugging Face ``datasets`` with the exact ids GPTQ uses (needs internet or an HF cache).

Local layout (as in ``../shared/data``; see its README for provenance)::

    wikitext2/wiki.test.raw                      raw WikiText-2 test, one HF row per line
    wikitext2/pytorch_examples_wiki.valid.tokens WikiText-2 validation (tokenized form)
    c4/c4_validation_2k.yxanul.jsonl             2000 C4-en validation docs, {"text": ...}
    piqa/ hellaswag/ arc_easy/ arc_challenge/ winogrande/   zero-shot suites (``FILES``; converted
                                                 to lm-eval's schemas by ``tasks/zeroshot_data.py``)

C4 split (local data): documents with index < 1000 are the evaluation pool and documents with
index ≥ 1000 the calibration pool, so calibration text never overlaps evaluation text.
With Hugging Face data, evaluation uses GPTQ's validation shard and calibration its train shard.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.util import REPO_ROOT, file_sha256

ENV_VAR = "HARNESS_DATA"
C4_EVAL_DOCS = 1000  # local C4 docs [0, 1000) evaluate, [1000, 2000) calibrate

FILES = {
    "wikitext2_test": "wikitext2/wiki.test.raw",
    "wikitext2_valid": "wikitext2/pytorch_examples_wiki.valid.tokens",
    "c4": "c4/c4_validation_2k.yxanul.jsonl",
    # zero-shot suites (converted to lm-eval's schemas by tasks/zeroshot_data.py)
    "piqa": "piqa/valid.jsonl",
    "piqa_labels": "piqa/valid-labels.lst",
    "hellaswag_subset": "hellaswag/hellaswag_val_subset1000.rubrikscube.jsonl",
    "hellaswag_full": "hellaswag/hellaswag_val_full.klosax.txt.bz2",
    "arc_easy": "arc_easy/arc_easy_test.oxen_ai_dive.jsonl",
    "arc_easy_key": "arc_easy/question-answers.aristo_leaderboard.jsonl",
    "arc_challenge": "arc_challenge/arc_challenge_test.basic_evaluator.jsonl",
    "arc_challenge_key": "arc_challenge/question-answers.aristo_leaderboard.jsonl",
    "winogrande": "winogrande/winogrande_dev.llmfoundry_partial_eval.jsonl",
    "winogrande_labels": "winogrande/dev-labels.lst",
}


def resolve_data_dir(configured: str | None) -> Path | None:
    """Return the local data directory, or ``None`` to use Hugging Face datasets."""
    for value, origin in ((configured, "data_dir"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ConfigError(
                    f"data directory {path} (from {origin}) does not exist; "
                    f"fix data_dir=... or the {ENV_VAR} environment variable"
                )
            return path.resolve()
    beside = REPO_ROOT.parent / "shared" / "data"
    return beside.resolve() if beside.is_dir() else None


@dataclass
class Corpus:
    """Evaluation or calibration text: a list of documents (or rows) and where it came from."""

    name: str
    docs: list[str]
    source: str  # file path or HF dataset id

    def sha256(self) -> str:
        h = hashlib.sha256()
        for d in self.docs:
            h.update(d.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()


def local_file(data_dir: Path, key: str) -> Path:
    """The file ``FILES[key]`` under ``data_dir``; a missing file is a one-line error naming its path."""
    path = data_dir / FILES[key]
    if not path.is_file():
        raise ConfigError(
            f"missing data file {path}; put it there, or point data_dir=... / {ENV_VAR} at a directory "
            f"laid out like ../shared/data"
        )
    return path


CORPUS_FILES = {"wikitext2_test": "wikitext2_test", "wikitext2_valid": "wikitext2_valid", "c4_eval": "c4",
                "c4_calib": "c4"}  # corpus -> its ``FILES`` key


def data_fingerprint(keys: Iterable[str], data_dir: Path | None) -> dict[str, str]:
    """SHA-256 of each local file ``FILES[key]`` (keyed by its path under the data directory, so
    the same data elsewhere has the same fingerprint); a missing file is a one-line error. Without a
    local data directory the text comes from Hugging Face and is named, not hashed, here (the
    record still hashes the evaluated text)."""
    if data_dir is None:
        return {key: "huggingface" for key in keys}
    return {FILES[key]: file_sha256(local_file(data_dir, key)) for key in keys}


def _wikitext_rows(path: Path) -> list[str]:
    """Rows as HF ``wikitext`` yields them: each line keeps its newline, blank lines become ""."""
    with open(path, encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _jsonl_texts(path: Path) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError) as err:
                    raise ConfigError(f"{path}:{i}: not a JSON object with a 'text' field ({err})") from None
    return out


def _hf(*args, **kwargs):
    try:
        import datasets

        return datasets.load_dataset(*args, **kwargs)
    except Exception as err:  # offline, no cache
        raise ConfigError(
            f"no local data directory and the Hugging Face dataset {args[0]!r} could not be loaded "
            f"({type(err).__name__}); set data_dir=... or {ENV_VAR}"
        ) from None


def load_corpus(name: str, data_dir: Path | None) -> Corpus:
    """Named corpora: ``wikitext2_test``, ``wikitext2_valid``, ``c4_eval``, ``c4_calib``."""
    if name not in ("wikitext2_test", "wikitext2_valid", "c4_eval", "c4_calib"):
        raise ConfigError(f"unknown corpus {name!r}; known: wikitext2_test, wikitext2_valid, c4_eval, c4_calib")
    if data_dir is not None:
        if name.startswith("wikitext2"):
            path = local_file(data_dir, name)
            return Corpus(name, _wikitext_rows(path), str(path))
        path = local_file(data_dir, "c4")
        docs = _jsonl_texts(path)
        docs = docs[:C4_EVAL_DOCS] if name == "c4_eval" else docs[C4_EVAL_DOCS:]
        part = f"0:{C4_EVAL_DOCS}" if name == "c4_eval" else f"{C4_EVAL_DOCS}:"
        return Corpus(name, docs, f"{path}[{part}]")
    if name.startswith("wikitext2"):
        split = "test" if name == "wikitext2_test" else "validation"
        ds = _hf("wikitext", "wikitext-2-raw-v1", split=split)
        return Corpus(name, list(ds["text"]), f"hf:wikitext/wikitext-2-raw-v1/{split}")
    shard = (
        {"validation": "en/c4-validation.00000-of-00008.json.gz"}
        if name == "c4_eval"
        else {"train": "en/c4-train.00000-of-01024.json.gz"}
    )
    split = next(iter(shard))
    ds = _hf("allenai/c4", data_files=shard, split=split)
    return Corpus(name, list(ds["text"]), f"hf:allenai/c4/{shard[split]}")
