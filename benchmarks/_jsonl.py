"""One JSON line per measurement, appended and flushed at once, so a step that is killed half-way keeps
everything it measured (``scripts/gpu_check.py``).

The file is named by ``GPU_CHECK_JSONL``; without it a line is only printed. Each line carries the step
that wrote it (``GPU_CHECK_STEP``) and its wall time since the step started.
"""
from __future__ import annotations

import json
import os
import sys
import time

_T0 = time.perf_counter()


def emit(kind: str, **fields) -> dict:
    """Append ``{"step", "kind", "t_s", **fields}`` to the check's JSONL file (fsynced) and print it."""
    rec = {"step": os.environ.get("GPU_CHECK_STEP", "-"), "kind": kind, "t_s": round(time.perf_counter() - _T0, 3),
           **fields}
    line = json.dumps(rec, default=str)
    path = os.environ.get("GPU_CHECK_JSONL")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return rec


def dry_run() -> bool:
    """``GPU_CHECK_DRY_RUN=1``: every step on the CPU with tiny shapes, kernels under the Triton interpreter."""
    return os.environ.get("GPU_CHECK_DRY_RUN", "0") == "1"
