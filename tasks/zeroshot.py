"""Zero-shot accuracy through lm-eval: PIQA, HellaSwag, ARC-Easy, ARC-Challenge, WinoGrande.

The in-memory (possibly quantized) model is wrapped in lm-eval's ``HFLM(pretrained=model,
tokenizer=tokenizer, batch_size=...)`` and scored by lm-eval's ``simple_evaluate`` with lm-eval's
built-in task configs: prompts, answer choices, ``acc`` and ``acc_norm`` (and their standard
errors) are lm-eval's. Nothing is re-implemented here; the harness only

* replaces the data source when a local data directory is used (``tasks/zeroshot_data.py``
  converts ``../shared/data`` into the schema each config reads; the config is otherwise the
  built-in one, included by path). Without a data directory the built-in configs run unchanged on
  their Hugging Face datasets;
* runs one ``simple_evaluate`` per lm-eval task (same ``HFLM``), so each task gets its own wall
  time and progress bar, and its batches are exactly those of a direct lm-eval run of that task;
* routes progress to the harness hooks (rich) instead of tqdm: ``_HarnessHFLM`` is ``HFLM`` with
  tqdm off, and a ``CacheHook`` that advances the bar once per scored request;
* picks, per task, which of ``acc``/``acc_norm`` feeds the suite mean (a config choice, recorded).

Tasks: ``piqa``, ``hellaswag``, ``arc_easy``, ``arc_challenge``, ``winogrande`` (one lm-eval task
each) and ``zeroshot`` (all five, or ``tasks=[...]``, plus their mean). Metrics per lm-eval task:
``acc``, ``acc_stderr``, ``acc_norm``, ``acc_norm_stderr`` (WinoGrande's config defines ``acc``
only), ``metric``/``score`` (the choice feeding the mean), ``items``, ``requests``, ``seconds``,
the data source and hashes, ``samples_sha256``: a hash of every item's (doc_id, acc,
acc_norm, per-choice log-likelihoods), ``per_item``: those per-item results themselves (so every
statistic recomputes from the record and two runs pair item for item), and ``acc_ci`` /
``acc_norm_ci``: 95% bootstrap intervals over items (``harness.results.stats``) beside lm-eval's
standard errors. The suite adds ``mean_ci`` (each task's items resampled on their own).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl
from harness.plugins.task import Task
from harness.results.stats import mean_interval, seed_for, suite_mean_interval
from harness.util import CONF_DIR, unknown
from tasks.zeroshot_data import HELLASWAG_VARIANTS, SUITE, builtin_yaml, prepare, sources

log = logging.getLogger(__name__)



@functools.cache
def default_metric() -> dict[str, str]:
    """The metric feeding the suite mean unless configured (acc_norm where the length-normalized score is the
    convention: HellaSwag, ARC-Challenge; acc elsewhere), as ``conf/task/zeroshot.yaml`` sets it: that file is
    its one home, read here for a config built outside Hydra or a metric left out of an override."""
    from omegaconf import OmegaConf

    return dict(OmegaConf.load(CONF_DIR / "task" / "zeroshot.yaml").zeroshot.metric)

METRICS = {t: ("acc",) if t == "winogrande" else ("acc", "acc_norm") for t in SUITE}  # as lm-eval's YAMLs


def check_task(name: str) -> str:
    if name not in SUITE:
        raise unknown("zero-shot task", name, SUITE)
    return name


@dataclass
class ZeroShotOptions:
    limit: int | None = None  # first N items per task (lm-eval's --limit); None = all
    batch_size: int = 16  # HFLM batch size (a direct lm-eval run must use the same to match bit for bit)
    hellaswag: str = "subset"  # local data: "subset" (1000 items, exact schema) or "full" (10042, rebuilt)

    def __post_init__(self) -> None:
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"limit={self.limit} must be a positive integer (items per task) or null")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be a positive integer")
        if self.hellaswag not in HELLASWAG_VARIANTS:
            raise ConfigError(f"hellaswag={self.hellaswag!r} is unknown; use {' or '.join(HELLASWAG_VARIANTS)}")


def check_metric(task: str, metric: str) -> str:
    if metric not in METRICS[task]:
        raise ConfigError(f"metric {metric!r} is not reported for {task}; choose {' or '.join(METRICS[task])}")
    return metric


@dataclass
class SuiteConfig(ZeroShotOptions):
    tasks: list[str] = field(default_factory=lambda: list(SUITE))
    metric: dict[str, str] = field(default_factory=dict)  # task -> acc | acc_norm (default: default_metric())

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks:
            raise ConfigError(f"zeroshot.tasks is empty; choose some of: {', '.join(SUITE)}")
        self.tasks = [check_task(t) for t in self.tasks]
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"zeroshot.tasks={self.tasks} lists a task twice")
        for t, m in dict(self.metric).items():
            check_metric(check_task(t), m)
        self.metric = {t: self.metric.get(t, default_metric()[t]) for t in self.tasks}


@dataclass
class SingleConfig(ZeroShotOptions):
    metric: str | None = None  # acc | acc_norm (default: default_metric())


def _harness_hflm():
    """``HFLM`` with tqdm off (progress goes to the harness hooks); scoring untouched."""
    from lm_eval.models.huggingface import HFLM

    class _HarnessHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

    return _HarnessHFLM


def _progress_hook(advance):
    """A ``CacheHook`` (called by HFLM once per finished request) that advances a progress bar."""
    from lm_eval.api.model import CacheHook

    class _Progress(CacheHook):
        def __init__(self) -> None:
            super().__init__(None)

        def add_partial(self, attr, req, res) -> None:
            advance(1)

    return _Progress()


def item_results(samples: list[dict[str, Any]], metrics: tuple[str, ...]) -> dict[str, list]:
    """Per-item results, in doc_id order: correctness for each metric (0/1) and the per-choice
    log-likelihoods, so that any statistic (intervals, paired tests) recomputes from the record."""
    rows = sorted(samples, key=lambda s: s["doc_id"])
    out: dict[str, list] = {"doc_id": [int(s["doc_id"]) for s in rows]}
    for key in metrics:
        out[key] = [int(round(float(s[key]))) for s in rows]
    out["loglik"] = [[round(float(r[0]), 6) for r in s["filtered_resps"]] for s in rows]
    return out


def samples_sha256(samples: list[dict[str, Any]]) -> str:
    """Hash of the per-item results: (doc_id, acc, acc_norm, per-choice log-likelihoods)."""
    items = sorted(
        (s["doc_id"], s.get("acc"), s.get("acc_norm"), [float(r[0]) for r in s["filtered_resps"]]) for s in samples
    )
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


class _ZeroShot(Task):
    primary = "acc"
    lower_is_better = False
    percent = True

    def subtasks(self) -> list[str]:
        raise NotImplementedError

    def metric_for(self, task: str) -> str:
        raise NotImplementedError

    def data_keys(self) -> list[str]:
        return [key for t in self.subtasks() for key in sources(t, self.config.hellaswag)]

    def protocol(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": "lm-eval-zeroshot", "lm_eval": metadata.version("lm_eval"), "tasks": self.subtasks(),
            "metric": {t: self.metric_for(t) for t in self.subtasks()}, "num_fewshot": 0, "limit": c.limit,
            "batch_size": c.batch_size, "data": "local" if self.env.data_dir else "huggingface",
            **({"hellaswag": c.hellaswag} if "hellaswag" in self.subtasks() and self.env.data_dir else {}),
        }

    def _spec(self, task: str) -> tuple[str, dict[str, Any]]:
        """The YAML lm-eval loads for ``task`` and a description of its data for the record."""
        if self.env.data_dir is None:
            return str(builtin_yaml(task)), {"source": "huggingface (lm-eval's built-in dataset)"}
        local = prepare(task, self.env.data_dir, self.env.cache_dir, self.config.hellaswag)
        return str(local.yaml), {"source": str(local.data), "items_in_file": local.items,
                                 "data_sha256": local.data_sha256, "sources": local.sources}

    def _load(self, task_manager, task: str, spec: str):
        try:
            return task_manager.load([spec])["tasks"][task]
        except Exception as err:  # noqa: BLE001 - the Hub path offline; a local failure is a bug
            if self.env.data_dir is not None:
                raise
            raise ConfigError(f"no local data directory and lm-eval could not load {task}'s Hugging Face dataset "
                              f"({type(err).__name__}); set data_dir=... or HARNESS_DATA") from None

    def evaluate(self, model, tokenizer, hook, run) -> dict[str, Any]:
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        lm = _harness_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.config.batch_size)
        task_manager = TaskManager(include_defaults=False)  # tasks are loaded by YAML path: no index scan
        out: dict[str, dict[str, Any]] = {}
        for task in self.subtasks():
            spec, data = self._spec(task)
            task_obj = self._load(task_manager, task, spec)
            docs = task_obj.eval_docs
            n = len(docs) if self.config.limit is None else min(self.config.limit, len(docs))
            requests = sum(len(task_obj.doc_to_choice(docs[i])) for i in range(n))
            phase = f"eval {task}"
            hook.harness_phase_start(run=run, phase=phase, total=requests)
            lm.set_cache_hook(_progress_hook(lambda k, p=phase: hook.harness_phase_advance(run=run, phase=p,
                                                                                          advance=k)))
            t0 = time.perf_counter()
            res = simple_evaluate(model=lm, tasks=[task_obj], limit=self.config.limit, task_manager=task_manager,
                                  log_samples=True)
            seconds = time.perf_counter() - t0
            hook.harness_phase_end(run=run, phase=phase, seconds=seconds)
            r, samples = res["results"][task], res["samples"][task]
            items = item_results(samples, METRICS[task])
            m: dict[str, Any] = {}
            for key in METRICS[task]:
                m[key] = float(r[f"{key},none"])
                m[f"{key}_stderr"] = float(r[f"{key}_stderr,none"])
                m[f"{key}_ci"] = mean_interval(items[key], seed_for(run.run_id, task, key)).as_record()
            metric = self.metric_for(task)
            out[task] = {**m, "metric": metric, "score": m[metric], "items": len(samples), "requests": requests,
                         "limit": self.config.limit, "seconds": seconds, "items_per_s": len(samples) / seconds,
                         "task_version": (task_obj.config.metadata or {}).get("version"),
                         "samples_sha256": samples_sha256(samples), "data": data, "per_item": items}
            log.info("%s: %s=%.4f over %d items in %.1f s", task, metric, m[metric], len(samples), seconds)
        return self.combine(out, seed_for(run.run_id, self.name))

    def combine(self, per_task: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
        raise NotImplementedError


class ZeroShotSuite(_ZeroShot):
    """``zeroshot``: the paper's Table 2 (each task and the mean of the configured metrics)."""

    name = "zeroshot"
    Config = SuiteConfig
    primary = "mean"

    def subtasks(self) -> list[str]:
        return list(self.config.tasks)

    def metric_for(self, task: str) -> str:
        return self.config.metric[task]

    def combine(self, per_task, seed):
        scores = [m["score"] for m in per_task.values()]
        chosen = [m["per_item"][m["metric"]] for m in per_task.values()]
        return {"mean": sum(scores) / len(scores), "mean_ci": suite_mean_interval(chosen, seed).as_record(),
                "metric": "mean", "tasks": per_task}


class _Single(_ZeroShot):
    Config = SingleConfig

    def __init__(self, config, env) -> None:
        super().__init__(config, env)
        if config.metric is not None:
            check_metric(self.name, config.metric)

    def subtasks(self) -> list[str]:
        return [self.name]

    def metric_for(self, task: str) -> str:
        return self.config.metric or default_metric()[task]

    def combine(self, per_task, seed):
        return per_task[self.name]

    def primary_metric(self) -> dict[str, Any]:
        return {**super().primary_metric(), "metric": self.metric_for(self.name)}


def _single(task: str) -> type[_Single]:
    return type(f"ZeroShot_{task}", (_Single,), {"name": task, "__doc__": f"lm-eval's {task}, zero-shot."})


TASKS = [ZeroShotSuite, *(_single(t) for t in SUITE)]


@hookimpl
def harness_register_tasks(register):
    for cls in TASKS:
        register(cls)
