"""Reference benchmark harness for low-bit LLM weight quantization.

Layers, low → high; a module imports only from its own layer and the layers below it
(``tests/test_imports.py`` walks every import, function-level ones included, and fails on an upward
edge or on a cycle between modules):

1. ``harness.errors``, ``harness.util``: the one-line error, atomic writes, locks, hashes, config dataclasses;
2. ``harness.quantize``: grids and RTN, the compensation loop, the Hessian, layer discovery, the
   sequential driver, sensitivities and allocation (it drives a method through the ``Quantizer``
   protocol of ``quantize.driver``, never importing a plugin);
3. ``harness.packed``: packing, Triton kernels and their reference, ``QuantLinear``, checkpoints
   (reads ``quantize``'s grids);
4. ``harness.inputs``: model loading (a packed checkpoint, MoE experts unfused), corpora, windows;
5. ``harness.results``: records, statistics (tasks compute intervals with them), tables, report, compare
   (it reads records, never a plugin: older records' task display is ``records.LEGACY_PRIMARY``);
6. ``harness.plugins``: hook specs, the plugin manager, the ``Method`` and ``Task`` base classes, observers;
7. ``methods``, ``tasks``: the plugins themselves;
8. ``harness.run``, ``harness.cli`` and its Hydra ``callbacks`` (and the ``harness.report`` /
   ``harness.compare`` entry points).

``inputs`` sits above ``quantize`` and ``packed`` because loading a model unfuses MoE experts and
loads packed checkpoints. The top-level package itself only re-exports ``ConfigError`` and ``hookimpl``
for plugin authors.
"""
from harness.errors import ConfigError
from harness.plugins.hookspecs import hookimpl

__all__ = ["ConfigError", "hookimpl"]
__version__ = "0.1.0"  # the one home of the version: pyproject.toml reads it (dynamic)
