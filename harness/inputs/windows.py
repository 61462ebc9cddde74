"""Token windows, cut exactly as GPTQ's ``datautils.py`` cuts them, and the cached calibration set.

- ``sequential_windows``: WikiText-2 evaluation. Rows joined with "\\n\\n", tokenized once,
  non-overlapping ``seqlen`` windows, tail dropped.
- ``random_doc_windows``: C4 evaluation and C4 calibration. ``random.seed(seed)``; repeat: draw a
  document index with ``random.randint(0, len(docs) - 1)`` until its token count exceeds
  ``seqlen``, then draw a start with ``random.randint(0, len - seqlen - 1)``. (GPTQ's evaluation
  loop accepts ``len >= seqlen``, but for ``len == seqlen`` its start draw ``randint(0, -1)``
  raises, so ``>`` gives the same windows whenever the reference runs.)
- ``random_text_windows``: WikiText-2 calibration: one tokenized text, random starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.errors import ConfigError
from harness.inputs.data import Corpus, load_corpus
from harness.util import atomic_output, cache_lock

log = logging.getLogger(__name__)

#: perplexity protocols for the BOS token: none (GPTQ's) | per_window (BOS first in every window)
BOS_PROTOCOLS = ("none", "per_window")


def encode(tokenizer, text: str, special_tokens: bool = True) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor (with the tokenizer's default special tokens, or none)."""
    return torch.tensor(tokenizer(text, add_special_tokens=special_tokens)["input_ids"], dtype=torch.long)


def with_bos(windows: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(n, T) windows → (n, T + 1) with ``bos_id`` first in every window."""
    return torch.cat([torch.full((windows.shape[0], 1), bos_id, dtype=windows.dtype), windows], dim=1)


def sequential_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """(n, seqlen) non-overlapping windows of the 1-D ``ids``; the tail is dropped."""
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ConfigError(f"text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    return ids[: n * seqlen].view(n, seqlen)


def random_doc_windows(docs: list[str], tokenizer, n: int, seqlen: int, seed: int,
                       special_tokens: bool = True) -> torch.Tensor:
    """(n, seqlen) windows drawn as in GPTQ's ``get_c4`` (see the module docstring)."""
    cache: dict[int, torch.Tensor] = {}
    rng = random.Random(seed)  # same stream as random.seed(seed); no global state touched
    out = []
    tries = 0
    for _ in range(n):
        while True:
            i = rng.randint(0, len(docs) - 1)
            if i not in cache:
                cache[i] = encode(tokenizer, docs[i], special_tokens)
            tries += 1
            if cache[i].numel() > seqlen:
                break
            if tries > 100 * len(docs):
                raise ConfigError(f"documents longer than seqlen={seqlen} tokens are too rare; lower the seqlen")
        ids = cache[i]
        start = rng.randint(0, ids.numel() - seqlen - 1)
        out.append(ids[start : start + seqlen])
    return torch.stack(out)


def random_text_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """(n, seqlen) windows at random starts of one token stream (GPTQ's ``get_wikitext2`` train)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randint(0, ids.numel() - seqlen - 1)
        out.append(ids[start : start + seqlen])
    return torch.stack(out)


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's full definition (vocabulary, merges, normalizer, special tokens) where
    it is a fast tokenizer; otherwise of its name and vocabulary size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    src = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(src.encode()).hexdigest()


def joined_ids(corpus: Corpus, tokenizer, special_tokens: bool = True, cache_dir: Path | None = None) -> torch.Tensor:
    """1-D token ids of the rows joined with "\\n\\n" (GPTQ's WikiText-2 text).

    With ``cache_dir`` the ids are kept in ``cache_dir/tokens``, keyed by the text's and the tokenizer's
    SHA-256: tokenizing WikiText-2 test takes seconds, and every run of a sweep needs the same ids."""
    if cache_dir is None:
        return encode(tokenizer, "\n\n".join(corpus.docs), special_tokens)
    key_src = json.dumps({"text": corpus.sha256(), "tokenizer": tokenizer_fingerprint(tokenizer),
                          "special_tokens": special_tokens}, sort_keys=True)
    path = Path(cache_dir) / "tokens" / f"{corpus.name}-{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.pt"
    return cached_tensor(path, lambda: encode(tokenizer, "\n\n".join(corpus.docs), special_tokens))


def cached_tensor(path: Path, build) -> torch.Tensor:
    """The tensor stored at ``path``, built by ``build()`` and written atomically the first time; jobs
    that start together build it once (``cache_lock``: the others wait, then read it)."""
    if not path.is_file():
        with cache_lock(path):
            if not path.is_file():  # another job may have built it while this one waited
                tensor = build()
                with atomic_output(path) as tmp:
                    torch.save(tensor, tmp)
                log.info("cached %s", path)
    return torch.load(path)


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration windows a calibrated method sees. Recorded in every such run."""

    source: str = "c4"  # c4 (docs disjoint from C4 evaluation) | wikitext2 (validation split)
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in ("c4", "wikitext2"):
            raise ConfigError(f"calibration.source={self.source!r} is unknown; use c4 or wikitext2")
        if self.nsamples < 1 or self.seqlen < 2:
            raise ConfigError("calibration.nsamples must be ≥ 1 and calibration.seqlen ≥ 2")

    @property
    def corpus(self) -> str:
        """The corpus the windows are drawn from: never WikiText-2 test, never the C4 evaluation docs."""
        return "c4_calib" if self.source == "c4" else "wikitext2_valid"


def calibration_windows(
    spec: CalibrationSpec, tokenizer, data_dir: Path | None, cache_dir: Path
) -> tuple[torch.Tensor, dict]:
    """(nsamples, seqlen) calibration token windows, cached on disk by their parameters (drawn once,
    also by jobs that start together: ``cache_lock``).

    Never drawn from WikiText-2 test or from the C4 evaluation documents. Returns the windows
    and a description for the record (source corpus, its hash, the cache key).
    """
    corpus = load_corpus(spec.corpus, data_dir)
    key_src = json.dumps(
        {**asdict(spec), "corpus": corpus.sha256(), "tokenizer": tokenizer_fingerprint(tokenizer)},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir / "calibration" / f"{spec.source}-{spec.nsamples}x{spec.seqlen}-s{spec.seed}-{key}.pt"
    info = {**asdict(spec), "corpus": corpus.name, "corpus_source": corpus.source,
            "corpus_sha256": corpus.sha256(), "cache_key": key}
    return cached_tensor(path, lambda: draw_calibration(spec, corpus, tokenizer)), info


def draw_calibration(spec: CalibrationSpec, corpus: Corpus, tokenizer) -> torch.Tensor:
    """The (nsamples, seqlen) calibration windows of ``spec`` drawn from ``corpus``."""
    if spec.source == "c4":
        return random_doc_windows(corpus.docs, tokenizer, spec.nsamples, spec.seqlen, spec.seed)
    return random_text_windows(joined_ids(corpus, tokenizer), spec.nsamples, spec.seqlen, spec.seed)
