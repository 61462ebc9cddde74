"""Hydra callback: render the paper-style tables, plots and the HTML page once, after a multirun sweep
(in the launching process, after every job has finished). It belongs to the command line, beside
``cli.py`` (it drives ``harness.results``), not to the plugin layer below the results."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class RenderTables(Callback):
    """Render the tables once per sweep, over every record in ``results_dir``.

    ``on_multirun_end`` runs in the launching process after the launcher returned, i.e. after every
    job ended: with the basic launcher after the last run, with the submitit launchers (``slurm``,
    ``local``) after the last job of the array; jobs themselves only call the per-job callbacks. A
    sweep whose launching process dies renders nothing; ``python -m harness.report`` does it later.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from harness.results.report import RenderOptions, render

        try:
            wandb = OmegaConf.to_container(config.wandb, resolve=True) if "wandb" in config else None
            if wandb is not None and not wandb.get("group") and "hydra" in config:
                wandb["group"] = Path(config.hydra.sweep.dir).as_posix()  # the sweep's runs' group (cli.py)
            options = RenderOptions(layout=config.get("report_layout"), wandb=wandb)
            written = render(Path(config.results_dir), options)
            log.info("tables: %s", ", ".join(str(p) for p in written.values()))
        except Exception as err:  # noqa: BLE001 - the runs and their records are already safe
            log.warning("rendering tables failed (%s: %s); run python -m harness.report", type(err).__name__, err)
