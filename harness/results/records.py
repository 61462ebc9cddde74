"""Run records: one JSON file per run under ``<results_dir>/records``, written atomically.

A record is keyed by ``run_id``: a readable prefix plus a hash of the run's identity, everything
that determines the numbers (model, method options, tasks and their protocol, calibration, seed,
the hashes of the evaluation and calibration data and of the code; ``harness.run.make_identity``).
The record keeps that identity, and a run is skipped only when a complete record with the same
identity exists, so a sweep interrupted and started again runs only the unfinished points and
never reuses a number computed by other code or from other data.
"""
from __future__ import annotations

import json
import logging
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.util import REPO_ROOT, canonical_hash

log = logging.getLogger(__name__)

REFERENCE_DIR = REPO_ROOT / "reference"  # the measurements the project publishes

SCHEMA_VERSION = 2  # 2: identity (code and data hashes), capabilities, primary metrics, environment
PACKAGES = ("torch", "transformers", "lm_eval", "hydra-core", "pluggy", "datasets", "wandb", "triton")


#: protocol fields added after records were published, with the value those records were measured with
#: (a record without the field reads as having it; tasks/perplexity.py defines the field)
PROTOCOL_DEFAULTS = {"gptq-ppl-wikitext2": {"bos": "none"}, "gptq-ppl-c4": {"bos": "none"}}


_PPL = {"metric": "ppl", "lower_is_better": True, "percent": False}
#: how tasks are shown for records written before they declared it (``primary``, schema 2): what the
#: task plugins declared then (tasks/perplexity.py, tasks/zeroshot.py). New records carry their own.
LEGACY_PRIMARY: dict[str, dict[str, Any]] = {
    "wikitext2": _PPL, "c4": _PPL, "zeroshot": {"metric": "mean", "lower_is_better": False, "percent": True},
    **{t: {"metric": m, "lower_is_better": False, "percent": True} for t, m in (
        ("piqa", "acc"), ("hellaswag", "acc_norm"), ("arc_easy", "acc"), ("arc_challenge", "acc_norm"),
        ("winogrande", "acc"))},
}


def task_protocol(rec: dict[str, Any], task: str) -> dict[str, Any]:
    """The protocol of ``task`` in a record, with the fields older records lack filled in (``PROTOCOL_DEFAULTS``)."""
    proto = dict((rec.get("protocol") or {}).get(task) or {})
    return {**PROTOCOL_DEFAULTS.get(proto.get("name"), {}), **proto}


def make_run_id(model: str, method_label: str, identity: dict[str, Any]) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{model}__{method_label}").strip("-")
    return f"{slug}__{canonical_hash(identity)[:10]}"


def records_dir(results_dir: Path) -> Path:
    return results_dir / "records"


def record_path(results_dir: Path, run_id: str) -> Path:
    return records_dir(results_dir) / f"{run_id}.json"


def load_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def completed(results_dir: Path, run_id: str) -> dict[str, Any] | None:
    rec = load_record(record_path(results_dir, run_id))
    return rec if rec and rec.get("status") == "complete" else None


REQUIRED = ("run_id", "model", "method", "profile", "quantization", "metrics")


def readable(rec: dict[str, Any] | None) -> str | None:
    """Why a stored record cannot be read by this harness (one line), or None when it can."""
    if rec is None:
        return "not valid JSON"
    if not isinstance(rec.get("schema"), int) or rec["schema"] > SCHEMA_VERSION:
        return f"schema {rec.get('schema')!r} is not one this harness reads (1..{SCHEMA_VERSION}); update the harness"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"it has no {missing[0]!r} (not a run record)"
    return None


def load_records(results_dir: Path) -> list[dict[str, Any]]:
    """The complete, readable records under ``results_dir/records``; each other file is named in one log line."""
    out = []
    for p in sorted(records_dir(results_dir).glob("*.json")):
        rec = load_record(p)
        if rec is not None and rec.get("status") != "complete":
            continue  # an interrupted run: never shown
        if (why := readable(rec)) is not None:
            log.warning("skipping %s: %s", p, why)
            continue
        out.append(rec)
    return out


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit() -> str | None:
    """HEAD of the harness checkout, with ``+dirty`` when tracked files are modified."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


SEED_TAG = re.compile(r"\s+seed\d+\b")


def row_label(rec: dict[str, Any]) -> str:
    """The method label without a per-draw seed tag: records that differ only in seed share a row."""
    return SEED_TAG.sub("", rec["method"]["label"])


def seed_of(rec: dict[str, Any]) -> str:
    """The draw a record is: its calibration seed, and a method's own seed when set apart from it
    (e.g. APTQ's random allocation with ``method.seed=1``)."""
    seed = int(rec.get("seed", 0))
    own = (rec["method"].get("options") or {}).get("seed")
    return str(seed) if own is None or own == seed else f"{seed}/{own}"
