"""The task interface every evaluation plugin implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from harness.util import build_config


@dataclass
class TaskEnv:
    """What a task may use besides the model: resolved data and cache directories, device."""

    data_dir: Path | None
    cache_dir: Path
    device: str


class Task(ABC):
    """An evaluation: ``evaluate`` returns metrics, and ``protocol`` describes exactly how.

    ``name`` is the key under ``task:`` in the config; ``Config`` a dataclass of its options;
    ``primary`` the metric shown in tables, ``lower_is_better`` its direction and ``percent``
    whether it is shown ×100: the report reads these (``primary_metric``, stored in the record),
    never the metric's name.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    primary: ClassVar[str]
    lower_is_better: ClassVar[bool] = False
    percent: ClassVar[bool] = False  # tables show the primary metric ×100 (accuracies)

    def __init__(self, config: Any, env: TaskEnv) -> None:
        self.config = config
        self.env = env

    @classmethod
    def from_options(cls, options: dict[str, Any], env: TaskEnv) -> Task:
        return cls(build_config(cls.Config, options, f"task {cls.name!r}"), env)

    def primary_metric(self) -> dict[str, Any]:
        """How tables read this task's metrics: ``{"metric", "lower_is_better", "percent"}`` (in the record)."""
        return {"metric": self.primary, "lower_is_better": self.lower_is_better, "percent": self.percent}

    def data_keys(self) -> list[str]:
        """The ``harness.inputs.data.FILES`` keys this task reads (their hashes join the run identity)."""
        return []

    def check_tokenizer(self, tokenizer: Any) -> None:  # noqa: B027 - optional hook
        """Refuse, right after loading (before any quantization), what this tokenizer cannot do: one ConfigError."""

    @abstractmethod
    def protocol(self) -> dict[str, Any]:
        """Protocol name and parameters, for the record (available before ``evaluate``)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, tokenizer: Any, hook: Any, run: Any) -> dict[str, Any]:
        """Evaluate ``model``; report progress through ``hook.harness_phase_*``; return metrics."""
