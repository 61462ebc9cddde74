"""Every hook the harness calls, grouped by lifecycle.

A plugin is a module (or object) with functions named like the specs below and decorated with
``harness.hookimpl``. Built-in plugins live in ``methods/``, ``tasks/`` and ``harness/plugins/observers``;
third-party plugins are found through the ``harness`` entry-point group::

    [project.entry-points.harness]
    my_method = "my_pkg.my_method"      # a module that implements harness_register_methods

Unknown hook names in a plugin are rejected at start-up (``PluginManager.check_pending``).

Registration hooks (called once, when the plugin manager is built)
    ``harness_register_methods`` and ``harness_register_tasks`` receive a ``register`` callable
    (the tox registrar shape): ``register(SomeMethod)``. A registered class carries its own ``name``.

Observer hooks (called during a run, in order)
    run_start → (phase_start → phase_advance* → phase_end)* with layer_quantized / task_result in
    between → run_end. Observers must not raise: a failing logger (W&B offline, network, disk)
    must never lose the run. Observers only read: the record is written by the run itself
    (``harness.run.write_record``) before ``run_end``, whatever plugins are registered.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

PROJECT = "harness"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass
class RunContext:
    """What observers see of a run.

    ``config`` is the resolved config (a plain dict), ``run_id`` the record's key, ``identity``
    everything the run id hashes (model, method options, protocols, data and code hashes),
    ``timings`` the seconds of each finished phase, ``state`` scratch space for observers (keyed by
    plugin).
    """

    run_id: str
    config: dict[str, Any]
    results_dir: Path
    identity: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- registration
@hookspec
def harness_register_methods(register: Callable[[type], None]) -> None:
    """Register quantization method classes.

    Called once per plugin manager. ``register(cls)`` takes a subclass of
    ``harness.plugins.method.Method`` with a unique ``name`` (the value of ``method.name`` in the config).
    Registering a name twice is an error.
    """


@hookspec
def harness_register_tasks(register: Callable[[type], None]) -> None:
    """Register evaluation task classes.

    ``register(cls)`` takes a subclass of ``harness.plugins.task.Task``; ``cls.name`` is the config key
    under ``task:`` (e.g. ``wikitext2``).
    """


# ----------------------------------------------------------------------------- run lifecycle
@hookspec
def harness_run_start(run: RunContext) -> None:
    """A run begins: ``run.config`` is the resolved config (a plain dict), ``run.run_id`` its key.

    Called after the model is loaded and before quantization.
    """


@hookspec
def harness_phase_start(run: RunContext, phase: str, total: int | None) -> None:
    """A long phase starts: ``phase`` is a label such as ``"quantize"``, ``"calibrate"`` or
    ``"eval wikitext2"``; ``total`` is the number of steps, or ``None`` if unknown."""


@hookspec
def harness_phase_advance(run: RunContext, phase: str, advance: int) -> None:
    """``advance`` steps of ``phase`` are done (for progress bars)."""


@hookspec
def harness_phase_end(run: RunContext, phase: str, seconds: float) -> None:
    """``phase`` finished after ``seconds`` of wall time."""


@hookspec
def harness_layer_quantized(run: RunContext, name: str, info: dict[str, Any]) -> None:
    """One linear layer was quantized.

    ``name`` is the module path (``model.layers.3.self_attn.q_proj``); ``info`` holds at least
    ``bits``, ``group_size``, ``numel`` and ``err`` (relative Frobenius error ‖W−Q‖/‖W‖).
    """


@hookspec
def harness_task_result(run: RunContext, task: str, metrics: dict[str, Any]) -> None:
    """A task finished; ``metrics`` maps metric names (``ppl``, ``acc`` ...) to numbers."""


@hookspec
def harness_run_end(run: RunContext, record: dict[str, Any]) -> None:
    """The run is complete and ``record`` (the JSON-ready result record) is final.

    The run has already written it atomically; ``record["record_path"]`` says where. Do not modify it.
    """
