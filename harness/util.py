"""The small helpers every layer uses, each in one place: atomic writes, cache locks, hashes, config
dataclasses, did-you-mean errors."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: conf/, methods/, tasks/, reference/
CONF_DIR = REPO_ROOT / "conf"  # absolute: Hydra needs it so under ``python -m harness``


def canonical_hash(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys; non-JSON values by ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) within a process."""
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Readers see the old file (or folder) or the whole new one, never a part: write a file or
    create a folder at the yielded path. On an exception the temporary is removed and ``path`` is
    left as it was. When two processes race, the last rename wins and both results are complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.rmdir()  # only the unique name is wanted: the caller makes a file or a folder there
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # a folder cannot replace a non-empty folder in one rename
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``atomic_output``), flushed to disk."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def cache_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``<path>.lock`` while the cache entry ``path`` is checked, built and written.

    Jobs of a sweep that start together would each build the same entry (a model conversion, a
    calibration set, a sensitivity pass): under this lock one builds it and the others wait, then
    find it. Callers check again after acquiring it. ``filelock``'s OS lock is released when the
    holder dies (a killed or preempted job never leaves the entry locked); ``atomic_output`` still
    makes the write itself all or nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another job is making %s", lock.lock_file, path.name)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def unknown(kind: str, name: Any, known: Iterable[str]) -> ConfigError:
    """The one-line error for an unknown name: the known names and the closest one."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {kind} {str(name)!r}; known: {', '.join(known)}.{hint}")


def composed_options(group: str, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``conf/<group>/<name>.yaml`` as a run composes it, ``overrides`` applied: its interpolations of the
    top-level knobs (``${bits}``, ``${ratio}`` ... of ``conf/config.yaml``) resolved, its ``name`` dropped.

    The YAML is the one home of every option's default (the ``Config`` dataclasses declare types and
    checks only), so code that builds a config outside a Hydra run (tests, benchmarks) reads it here.
    """
    from omegaconf import OmegaConf  # Hydra's dependency; imported here to keep util light

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no {path.relative_to(REPO_ROOT)}: {group} {name!r} has no config to take defaults from")
    root = OmegaConf.load(CONF_DIR / "config.yaml")
    root[group] = OmegaConf.merge(OmegaConf.load(path), overrides or {})
    options = OmegaConf.to_container(root[group], resolve=True)
    options.pop("name", None)
    return options


def build_config(cls: type, options: dict[str, Any], what: str) -> Any:
    """Instantiate a ``Config`` dataclass from a config mapping, with one-line errors."""
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(options) - fields)
    if extra:
        raise ConfigError(f"{what} has no option {extra[0]!r}; its options are: {', '.join(sorted(fields))}")
    try:
        return cls(**options)
    except TypeError as err:  # a missing required field
        raise ConfigError(f"{what}: {err}") from None
