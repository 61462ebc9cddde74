"""Every config option composes, resolves, and builds its method and tasks."""
import dataclasses
from pathlib import Path

import pytest

from harness.cli import CONF_DIR
from harness.inputs.model import ModelConfig
from harness.plugins.manager import make_plugins
from harness.run import build
from harness.util import build_config

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
          for g in ("model", "method", "profile", "task")}


@pytest.mark.parametrize("method", GROUPS["method"])
@pytest.mark.parametrize("profile", GROUPS["profile"])
def test_every_method_and_profile_composes_and_builds(method, profile, compose_cfg):
    cfg = compose_cfg([f"method={method}", f"profile={profile}"])
    m, tasks, _, _ = build(cfg, make_plugins())
    assert m.name == method
    assert {t.name for t in tasks} == {"wikitext2", "c4"}
    for t in tasks:
        assert t.config.seqlen == cfg["profile"]["seqlen"]


@pytest.mark.parametrize("method", GROUPS["method"])
def test_every_method_default_has_one_home_the_yaml(method, compose_cfg):
    """The ``Config`` dataclasses declare no defaults; what a run composes is what ``default_config`` gives."""
    cls = make_plugins().methods.get(method)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls.Config))
    composed = {k: v for k, v in compose_cfg([f"method={method}"])["method"].items() if k != "name"}
    assert vars(cls.default_config()) == vars(build_config(cls.Config, composed, method))


@pytest.mark.parametrize("model", GROUPS["model"])
def test_every_model_config_validates(model, compose_cfg):
    extra = ["model.path=some/model"] if model == "hf" else []
    cfg = compose_cfg([f"model={model}", *extra])
    mc = build_config(ModelConfig, cfg["model"], "model")
    assert mc.name


@pytest.mark.parametrize("task", GROUPS["task"])
def test_each_task_alone(task, compose_cfg):
    cfg = compose_cfg([f"task=[{task}]"])
    _, tasks, _, _ = build(cfg, make_plugins())
    assert [t.name for t in tasks] == [task]


def test_top_level_knobs_reach_the_method(compose_cfg):
    cfg = compose_cfg(["method=rtn", "bits=3", "group_size=64", "sym=true"])
    assert cfg["method"] == {"name": "rtn", "bits": 3, "group_size": 64, "sym": True}
    m, _, _, _ = build(cfg, make_plugins())
    assert (m.config.bits, m.config.group_size, m.config.sym) == (3, 64, True)


@pytest.mark.parametrize("method", ["gptq", "aptq", "owq"])
def test_solver_knobs_reach_every_gptq_family_method(method, compose_cfg):
    cfg = compose_cfg([f"method={method}", "act_order=true", "true_sequential=true", "group_size=64"])
    m, _, _, _ = build(cfg, make_plugins())
    assert (m.config.act_order, m.config.true_sequential, m.config.group_size) == (True, True, 64)
    assert not build(compose_cfg([f"method={method}"]), make_plugins())[0].config.act_order  # reference default


def test_solver_knobs_are_reported_ignored_by_other_methods_and_validated(compose_cfg):
    from harness.errors import ConfigError
    from harness.run import ignored_overrides

    m, _, _, _ = build(compose_cfg(["method=rtn", "act_order=true"]), make_plugins())
    (msg,) = ignored_overrides(["act_order=true"], m)
    assert "act_order=true does not apply to method rtn" in msg
    with pytest.raises(ConfigError, match="true_sequential='yes' must be true or false"):
        build(compose_cfg(["method=gptq", "true_sequential=yes"]), make_plugins())


def test_paper_profile_is_the_full_protocol(compose_cfg):
    cfg = compose_cfg(["profile=paper"])
    assert cfg["task"]["wikitext2"]["seqlen"] == 2048 and cfg["task"]["wikitext2"]["n_windows"] is None
    assert cfg["task"]["c4"]["n_windows"] == 256
    assert cfg["calibration"] == {"source": "c4", "nsamples": 128, "seqlen": 2048, "seed": 0}


def test_unknown_method_option_is_a_clear_error(compose_cfg):
    from harness.errors import ConfigError

    cfg = compose_cfg(["+method.blocksize=64"])
    with pytest.raises(ConfigError, match="method 'rtn' has no option 'blocksize'"):
        build(cfg, make_plugins())


def test_experiment_is_chosen_without_a_plus():
    """``experiment`` is an optional entry of the defaults list: ``experiment=<name>`` selects it (the comment
    in conf/config.yaml says so); ``+experiment=`` would add it a second time and fails."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), pytest.raises(ConfigCompositionException):
        compose(config_name="config", overrides=["+experiment=fp16_vs_rtn"])


def test_the_smoke_settings_are_the_quick_profile_shrunk(compose_cfg):
    cfg = compose_cfg(["+smoke=tiny"])
    assert cfg["model"]["name"] == "tiny-llama" and cfg["profile"]["name"] == "quick"
    assert (cfg["profile"]["seqlen"], cfg["calibration"]["nsamples"], cfg["wandb"]["mode"]) == (64, 4, "disabled")


def test_experiment_configs_compose_as_sweeps():
    from hydra import compose, initialize_config_dir

    for exp in sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"experiment={exp}"], return_hydra_config=True)
        assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.params, exp
