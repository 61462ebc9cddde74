"""Start-up hook that hides Triton, as on a machine without it (macOS, Windows, a CPU-only install).

``PYTHONPATH=tests/no_triton`` makes Python import this module at start-up; from then on
``import triton`` raises ``ModuleNotFoundError`` and ``importlib.util.find_spec("triton")`` finds
nothing. Used by ``tests/test_no_triton.py`` and by the no-Triton pass of ``.ci/run``.
"""
import sys


class _HideTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/no_triton)", name=name)
        return None


sys.meta_path.insert(0, _HideTriton())
