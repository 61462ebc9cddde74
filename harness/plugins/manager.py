"""Plugin manager and the name → class registries for methods and tasks."""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from harness.plugins import hookspecs
from harness.util import unknown

log = logging.getLogger(__name__)

# Built-in plugins, registered before entry points (so a third party cannot silently shadow them:
# registering an existing name raises).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "methods.fp16",
    "methods.rtn",
    "methods.gptq",
    "methods.aptq",
    "methods.owq",
    "methods.pbllm",
    "methods.awq",
    "methods.slim",
    "tasks.perplexity",
    "tasks.zeroshot",
    "harness.plugins.observers.console",
    "harness.plugins.observers.wandb_logger",
)


@dataclass
class Registry:
    """Name → class, with did-you-mean errors (the lm-eval registry shape)."""

    kind: str
    items: dict[str, type] = field(default_factory=dict)

    def register(self, cls: type) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls!r} has no string attribute 'name'; cannot register it as a {self.kind}")
        if name in self.items and self.items[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self.items[name]!r} and {cls!r})")
        self.items[name] = cls

    def get(self, name: str) -> type:
        if name not in self.items:
            raise unknown(self.kind, name, self.items)
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)


@dataclass
class Plugins:
    pm: pluggy.PluginManager
    methods: Registry
    tasks: Registry

    @property
    def hook(self):
        return self.pm.hook


def make_plugins(extra: Iterable[object] = (), entry_points: bool = True) -> Plugins:
    """Build a plugin manager: built-ins, then ``extra`` objects, then the ``harness`` entry points.

    ``extra`` is for tests and embedding (a module or object implementing hooks).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    for obj in extra:
        pm.register(obj)
    if entry_points:
        n = pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        if n:
            log.info("loaded %d plugin(s) from entry points", n)
    pm.check_pending()  # a misspelled hook in any plugin fails here, not silently
    methods, tasks = Registry("method"), Registry("task")
    pm.hook.harness_register_methods(register=methods.register)
    pm.hook.harness_register_tasks(register=tasks.register)
    return Plugins(pm=pm, methods=methods, tasks=tasks)
