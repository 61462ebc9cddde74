"""``python -m harness``: Hydra composes the config, ``harness.run.execute`` does the work.

Bad input (unknown names, values out of range, missing files) ends with one line on stderr and
exit status 2, not a traceback.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.util import CONF_DIR as CONF_PATH
from harness.util import unknown

CONF_DIR = str(CONF_PATH)  # absolute: required under python -m

log = logging.getLogger("harness")


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from harness.run import execute

    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:
        overrides = []
    config = to_dict(cfg)
    if HydraConfig.get().mode.name == "MULTIRUN" and not config["wandb"].get("group"):
        config["wandb"]["group"] = Path(HydraConfig.get().sweep.dir).as_posix()  # one W&B group per sweep
    try:
        record = execute(config, overrides=overrides)
    except ConfigError as err:
        log.error("%s", err)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(2)
    first = next(iter(record["metrics"].values()), {})
    return first.get("ppl")  # for Hydra sweepers that optimize a value


GROUPS = ("model", "method", "task", "profile", "row", "experiment")


def check_group_choices(args: list[str]) -> None:
    """Reject an unknown config-group choice (``method=nope``) with one line, before Hydra's
    multi-line report. Known choices: the YAML files in ``conf/<group>``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - malformed overrides: let Hydra report them
        return
    for ov in overrides:
        group = ov.key_or_group
        if group == "hydra/launcher" and not ov.is_delete():
            check_launcher(str(ov.value()))
        if group not in GROUPS or ov.is_delete():
            continue
        known = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        value = ov.value()
        choices = value.list if hasattr(value, "list") else value if isinstance(value, list) else [value]
        for choice in choices:
            names = choice if isinstance(choice, list) else [choice]
            for name in names:
                if str(name) not in known:
                    raise unknown(group, name, known)


def check_launcher(choice: str) -> None:
    """The submitit launchers (``slurm``, ``local``, the plugin's ``submitit_*``) come with the optional
    ``cluster`` extra: without it, say so in one line instead of Hydra's report of a missing config."""
    if choice == "basic":
        return
    try:  # the parent namespace package may be missing too: then find_spec raises
        found = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ImportError:
        found = False
    if not found:
        raise ConfigError(f"hydra/launcher={choice} needs Hydra's submitit launcher: pip install -e '.[cluster]'")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    _main()


if __name__ == "__main__":
    main()
