"""Zero-shot tasks through lm-eval: the plugin on a tiny model (quantized), config errors, tables,
and equality with a direct lm-eval run on the default model (a slice of every task)."""
import copy
import json

import pytest

from harness.errors import ConfigError
from harness.plugins.manager import make_plugins
from harness.results.compare import compare
from harness.results.report import render
from harness.results.tables import build_tables
from harness.run import build, execute
from tasks.zeroshot import default_metric, samples_sha256
from tasks.zeroshot_data import SUITE, prepare


def test_tasks_are_registered_and_compose(compose_cfg):
    plugins = make_plugins()
    assert set(SUITE) | {"zeroshot"} <= set(plugins.tasks.names())
    cfg = compose_cfg(["task=[zeroshot]"])
    _, (task,), _, _ = build(cfg, plugins)
    assert task.config.tasks == list(SUITE) and task.config.limit == cfg["profile"]["zeroshot_limit"]
    assert task.protocol()["metric"] == default_metric()
    cfg = compose_cfg(["task=[zeroshot]", "profile=paper"])
    assert build(cfg, plugins)[1][0].config.limit is None


@pytest.mark.parametrize("override,message", [
    ("task.zeroshot.tasks=[piqa,hellaswg]", "unknown zero-shot task 'hellaswg'; known: arc_challenge, arc_easy, "
                                            "hellaswag, piqa, winogrande. Did you mean 'hellaswag'?"),
    ("task.zeroshot.metric.winogrande=acc_norm", "metric 'acc_norm' is not reported for winogrande; choose acc"),
    ("task.zeroshot.limit=0", "limit=0 must be a positive integer"),
    ("task.zeroshot.hellaswag=all", "hellaswag='all' is unknown; use subset or full"),
])
def test_bad_options_are_one_line_errors(override, message, compose_cfg):
    cfg = compose_cfg(["task=[zeroshot]", override])
    with pytest.raises(ConfigError) as err:
        build(cfg, make_plugins())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_task_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown task 'pica'; known: .*arc_easy.*piqa.*zeroshot\. Did you mean"):
        make_plugins().tasks.get("pica")


@pytest.mark.slow
def test_quantized_tiny_model_through_the_suite_and_the_tables(tiny_cfg, tmp_path):
    cfg = tiny_cfg("method=rtn", "bits=4", "task=[zeroshot,winogrande]", "task.zeroshot.limit=3",
                   "task.zeroshot.batch_size=4", "task.winogrande.limit=2")
    rec = execute(cfg)
    assert rec["quantization"]["avg_bits"] == pytest.approx(4.0)
    zs = rec["metrics"]["zeroshot"]
    assert list(zs["tasks"]) == list(SUITE)
    for task, m in zs["tasks"].items():
        assert m["items"] == 3 and m["metric"] == default_metric()[task] and m["score"] == m[m["metric"]]
        assert 0 <= m["acc"] <= 1 and m["acc_stderr"] >= 0 and len(m["samples_sha256"]) == 64
        assert ("acc_norm" in m) == (task != "winogrande") and m["requests"] >= 6
        assert m["data"]["items_in_file"] > 3 and m["seconds"] > 0
    assert zs["mean"] == pytest.approx(sum(m["score"] for m in zs["tasks"].values()) / 5)
    single = rec["metrics"]["winogrande"]
    assert single["items"] == 2 and single["metric"] == "acc"
    assert rec["protocol"]["zeroshot"]["limit"] == 3 and rec["protocol"]["zeroshot"]["data"] == "local"
    ((_, table),) = build_tables([rec]).items()
    cols = {c.name: c for c in table.columns}
    assert list(cols) == ["piqa acc", "hellaswag acc_norm", "arc_easy acc", "arc_challenge acc_norm",
                          "winogrande acc", "zeroshot mean"]
    assert all(c.percent and not c.lower_is_better for c in cols.values())
    assert table.rows[0][2][cols["winogrande acc"]].value == single["acc"]  # the single run (later) wins
    written = render(tmp_path / "results")
    md = written["tiny-llama__quick.md"].read_text()
    assert "| RTN | 4 |" in md and "zeroshot mean ↑" in md
    assert "zeroshot mean accuracy ↑" in written["leaderboard.md"].read_text()  # ranked by Pareto rank
    saved = json.loads(next((tmp_path / "results" / "records").glob("*.json")).read_text())
    assert saved["metrics"]["zeroshot"]["tasks"]["piqa"]["acc"] == zs["tasks"]["piqa"]["acc"]
    other = copy.deepcopy(rec)  # the same run with one PIQA item flipped: the suite mean pairs item for item
    other["run_id"] = "other"
    item = other["metrics"]["zeroshot"]["tasks"]["piqa"]["per_item"]
    item["acc"][0] = 1 - item["acc"][0]
    rows = {r["task"]: r for r in compare(other, rec)}
    assert list(rows) == [f"zeroshot/{t}" for t in SUITE] + ["winogrande", "zeroshot/mean"]
    flipped = (item["acc"][0] - rec["metrics"]["zeroshot"]["tasks"]["piqa"]["per_item"]["acc"][0]) / 3
    assert rows["zeroshot/piqa"]["diff"] == pytest.approx(flipped)
    assert rows["zeroshot/mean"]["diff"] == pytest.approx(flipped / 5) and rows["zeroshot/mean"]["units"] == 15
    assert rows["zeroshot/piqa"]["mcnemar_p"] == 1.0  # one discordant item: binomtest(1, 1) gives 1


@pytest.mark.slow
def test_harness_equals_a_direct_lm_eval_run_item_for_item(data_dir, cache_dir, tmp_path, compose_cfg):
    """FP16 default model, local data, first 3 items of every task, batch 4: the harness (in-memory
    model, HFLM(pretrained=model)) against lm-eval loading the same weights from their folder,
    with the same task YAML. acc/acc_norm, their stderrs, and every item's log-likelihoods equal."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from harness.inputs.model import embedded_default_folder

    limit, batch = 3, 4
    cfg = compose_cfg(["method=fp16", "task=[zeroshot]", f"task.zeroshot.limit={limit}",
                       f"task.zeroshot.batch_size={batch}", "wandb.mode=disabled", f"results_dir={tmp_path}"])
    ours = execute(cfg)["metrics"]["zeroshot"]["tasks"]
    lm = HFLM(pretrained=str(embedded_default_folder(cache_dir)), dtype="float32", device="cpu", batch_size=batch)
    for task in SUITE:
        yaml = prepare(task, data_dir, cache_dir).yaml
        ref = simple_evaluate(model=lm, tasks=[str(yaml)], limit=limit,
                              task_manager=TaskManager(include_defaults=False))
        r, m = ref["results"][task], ours[task]
        for key in ("acc", "acc_norm") if task != "winogrande" else ("acc",):
            assert m[key] == r[f"{key},none"] and m[f"{key}_stderr"] == r[f"{key}_stderr,none"], (task, key)
        assert m["samples_sha256"] == samples_sha256(ref["samples"][task]), task
        assert m["items"] == len(ref["samples"][task]) == limit


def test_without_local_data_the_builtin_hub_datasets_are_used(tmp_path, cache_dir, compose_cfg):
    """No data directory: lm-eval's built-in config loads its Hugging Face dataset unchanged; offline
    (as in the tests) that is one clear line, not a traceback from deep inside datasets."""
    from harness.inputs.model import ModelConfig, load_model
    from harness.plugins.task import TaskEnv

    cfg = compose_cfg(["model=tiny_llama"])
    model, tok, _ = load_model(ModelConfig(**cfg["model"]), "cpu", cache_dir)
    plugins = make_plugins()
    task = plugins.tasks.get("piqa").from_options({"limit": 2}, TaskEnv(None, tmp_path, "cpu"))
    assert task.protocol()["data"] == "huggingface"
    with pytest.raises(ConfigError, match=r"^no local data directory and lm-eval could not load piqa's Hugging Face "
                                          r"dataset \(.*\); set data_dir=... or HARNESS_DATA$"):
        task.evaluate(model, tok, plugins.hook, None)


def test_wandb_logs_every_task_of_a_suite():
    from harness.plugins.observers.wandb_logger import flatten_numbers

    metrics = {"mean": 0.5, "metric": "mean", "tasks": {"piqa": {"acc": 0.6, "metric": "acc", "items": 3}}}
    assert flatten_numbers(metrics, "zeroshot") == {"zeroshot/mean": 0.5, "zeroshot/piqa/acc": 0.6,
                                                    "zeroshot/piqa/items": 3}
