"""Perplexity on WikiText-2 (test) and C4 (validation), GPTQ's protocol.

Per window of ``seqlen`` tokens: the mean next-token cross-entropy over its ``seqlen − 1``
predictions; ppl = exp(mean over windows). This is GPTQ's ``llama_eval`` (``nll = loss · seqlen``,
``ppl = exp(Σ nll / (n · seqlen))``). Each window is evaluated independently (no cache, no
context carried over).

Named protocols, ``bos`` (part of ``protocol()``, so of the run identity and of the table column):
- ``none`` (GPTQ's, the default): windows cut from the token stream as the tokenizer encodes it
  (its default special tokens: a LLaMA tokenizer's BOS opens the text, hence only window 0);
- ``per_window``: the text is encoded without special tokens, cut into windows of ``seqlen − 1``
  tokens, and the tokenizer's BOS is put first in every window, so each window still has ``seqlen``
  tokens and all its ``seqlen − 1`` text tokens are scored. Models trained to always see a BOS
  (Gemma) give about twice the perplexity without one. A model config may name the protocol it
  expects (``recommended_bos``); a run with another is warned about (``harness.run.plan``).
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.inputs.data import CORPUS_FILES, Corpus, load_corpus
from harness.inputs.windows import BOS_PROTOCOLS, joined_ids, random_doc_windows, sequential_windows, with_bos
from harness.plugins.hookspecs import hookimpl
from harness.plugins.task import Task
from harness.results.stats import ppl_interval, seed_for


@dataclass
class PerplexityConfig:
    seqlen: int = 2048
    n_windows: int | None = None  # WikiText-2: first n windows (None = all); C4: n random windows
    batch_size: int = 1
    seed: int = 0  # C4 window sampling (GPTQ: random.seed(0))
    bos: str = "none"  # none (GPTQ) | per_window (BOS + seqlen − 1 text tokens per window)

    def __post_init__(self) -> None:
        if self.bos not in BOS_PROTOCOLS:
            raise ConfigError(f"bos={self.bos!r} is unknown; choose one of {', '.join(BOS_PROTOCOLS)}")
        if self.seqlen < 2:
            raise ConfigError(f"seqlen={self.seqlen} must be at least 2")
        if self.n_windows is not None and self.n_windows < 1:
            raise ConfigError(f"n_windows={self.n_windows} must be ≥ 1 or null")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be ≥ 1")


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch_size: int, device: str, on_batch=None) -> torch.Tensor:
    """Mean next-token NLL of each window: (n, seqlen) int64 → (n,) float64."""
    out = []
    for b in range(0, windows.shape[0], batch_size):
        ids = windows[b : b + batch_size].to(device)  # (B, T)
        logits = model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view(ids.shape[0], -1)  # (B, T-1)
        out.append(loss.mean(dim=1).double().cpu())
        if on_batch:
            on_batch(ids.shape[0])
    return torch.cat(out)


class _Perplexity(Task):
    Config = PerplexityConfig
    primary = "ppl"
    lower_is_better = True
    corpus: str

    def windows(self, text: Corpus, tokenizer) -> torch.Tensor:
        """The (n, seqlen) evaluation windows, with the protocol's BOS."""
        if self.config.bos == "none":
            return self.text_windows(text, tokenizer, self.config.seqlen, special_tokens=True)
        return with_bos(self.text_windows(text, tokenizer, self.config.seqlen - 1, special_tokens=False),
                        tokenizer.bos_token_id)

    def text_windows(self, text: Corpus, tokenizer, length: int, special_tokens: bool) -> torch.Tensor:
        """(n, length) windows of the encoded text."""
        raise NotImplementedError

    def check_tokenizer(self, tokenizer) -> None:
        if self.config.bos == "per_window" and tokenizer.bos_token_id is None:
            raise ConfigError(f"task.{self.name}.bos=per_window, but the tokenizer ({tokenizer.name_or_path}) has no "
                              f"BOS token; use bos=none")

    def n_windows(self) -> int | None:
        return self.config.n_windows

    def data_keys(self) -> list[str]:
        return [CORPUS_FILES[self.corpus]]

    def protocol(self) -> dict[str, Any]:
        c = self.config
        return {"name": f"gptq-ppl-{self.name}", "seqlen": c.seqlen, "n_windows": self.n_windows(),
                "corpus": self.corpus, "bos": c.bos, **({"seed": c.seed} if self.name == "c4" else {})}

    def evaluate(self, model, tokenizer, hook, run) -> dict[str, Any]:
        text = load_corpus(self.corpus, self.env.data_dir)
        windows = self.windows(text, tokenizer)  # (n, seqlen)
        phase = f"eval {self.name}"
        hook.harness_phase_start(run=run, phase=phase, total=windows.shape[0])
        t0 = time.perf_counter()
        nll = window_nlls(
            model, windows, self.config.batch_size, self.env.device,
            on_batch=lambda k: hook.harness_phase_advance(run=run, phase=phase, advance=k),
        )
        seconds = time.perf_counter() - t0
        hook.harness_phase_end(run=run, phase=phase, seconds=seconds)
        return {
            "ppl": math.exp(nll.mean().item()),
            "ppl_ci": ppl_interval(nll.numpy(), seed_for(run.run_id, self.name)).as_record(),
            "nll": nll.mean().item(),
            "window_nll": nll.tolist(),  # (n,) mean next-token NLL per window: every statistic recomputes from it
            "window_tokens": windows.shape[1] - 1,  # tokens scored per window (all windows alike)
            "bos": self.config.bos,
            "windows": windows.shape[0],
            "tokens": windows.numel(),
            "tokens_per_s": windows.numel() / seconds,
            "text_sha256": text.sha256(),
            "text_source": text.source,
            "tokens_sha256": hashlib.sha256(windows.numpy().tobytes()).hexdigest(),
        }


class WikiText2(_Perplexity):
    name = "wikitext2"
    corpus = "wikitext2_test"

    def text_windows(self, text: Corpus, tokenizer, length: int, special_tokens: bool) -> torch.Tensor:
        ids = joined_ids(text, tokenizer, special_tokens, cache_dir=self.env.cache_dir)
        return sequential_windows(ids, length, self.config.n_windows)


class C4(_Perplexity):
    name = "c4"
    corpus = "c4_eval"

    def n_windows(self) -> int:
        """Random windows need a count: the profile sets it (``c4_windows``; the paper's: 256, GPTQ's)."""
        if self.config.n_windows is None:
            raise ConfigError("task.c4.n_windows is null; C4 draws random windows and needs a count "
                              "(profile.c4_windows: 256 in the paper's protocol)")
        return self.config.n_windows

    def text_windows(self, text: Corpus, tokenizer, length: int, special_tokens: bool) -> torch.Tensor:
        return random_doc_windows(text.docs, tokenizer, self.n_windows(), length, self.config.seed, special_tokens)


@hookimpl
def harness_register_tasks(register):
    register(WikiText2)
    register(C4)
