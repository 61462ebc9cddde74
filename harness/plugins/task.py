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
    ``primary`` the metric shown in tables; ``lower_is_better`` its direction.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    primary: ClassVar[str]
    lower_is_better: ClassVar[bool] = False

    def __init__(self, config: Any, env: TaskEnv) -> None:
        self.config = config
        self.env = env

    @classmethod
    def from_options(cls, options: dict[str, Any], env: TaskEnv) -> Task:
        return cls(build_config(cls.Config, options, f"task {cls.name!r}"), env)

    @abstractmethod
    def protocol(self) -> dict[str, Any]:
        """Protocol name and parameters, for the record (available before ``evaluate``)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, tokenizer: Any, hook: Any, run: Any) -> dict[str, Any]:
        """Evaluate ``model``; report progress through ``hook.harness_phase_*``; return metrics."""
