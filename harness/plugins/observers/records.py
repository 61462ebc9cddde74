"""Observer that writes the run record atomically, before any other observer sees the end."""
from __future__ import annotations

import logging

from harness.plugins.hookspecs import hookimpl
from harness.results.records import record_path
from harness.util import write_atomic

log = logging.getLogger(__name__)


@hookimpl(tryfirst=True)
def harness_run_end(run, record):
    path = record_path(run.results_dir, run.run_id)
    write_atomic(path, record)
    record["record_path"] = str(path)
    log.info("record written to %s", path)
