"""Local zero-shot data converted to lm-eval's schemas: item counts, gold labels against the official
keys, round trips through lm-eval's own task code (offline: conftest sets HF_*_OFFLINE), bad input."""
import json
import shutil

import pytest

from harness.errors import ConfigError
from tasks.zeroshot_data import convert, prepare

COUNTS = {("piqa", "subset"): 1838, ("hellaswag", "subset"): 1000, ("hellaswag", "full"): 10042,
          ("arc_easy", "subset"): 2376, ("arc_challenge", "subset"): 1172, ("winogrande", "subset"): 1267}


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def lm_eval_task(data_dir, cache_dir, task, variant="subset"):
    """The lm-eval Task object built from the harness's generated YAML (what the harness evaluates)."""
    from lm_eval.tasks import TaskManager

    local = prepare(task, data_dir, cache_dir, variant)
    return TaskManager(include_defaults=False).load([str(local.yaml)])["tasks"][task], local


@pytest.mark.parametrize("task,variant", list(COUNTS))
def test_item_counts_match_the_readme(data_dir, task, variant):
    rows, sources = convert(task, data_dir, variant)
    assert len(rows) == COUNTS[(task, variant)]
    assert all(len(h) == 64 for h in sources.values())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge"])
def test_arc_gold_is_the_official_key_through_lm_eval(data_dir, tmp_path, task):
    key = {r["id"]: r["answerKey"] for r in _jsonl(data_dir / task / "question-answers.aristo_leaderboard.jsonl")}
    t, local = lm_eval_task(data_dir, tmp_path, task)
    docs = list(t.eval_docs)
    assert len(docs) == local.items == len(key)
    for doc in docs:
        gold = t.doc_to_target(doc)  # lm-eval: choices.label.index(answerKey)
        assert doc["choices"]["label"][gold] == key[doc["id"]]
    assert t.doc_to_text(docs[0]) == f"Question: {docs[0]['question']}\nAnswer:"


def test_piqa_gold_is_the_label_file_through_lm_eval(data_dir, tmp_path):
    labels = [int(x) for x in open(data_dir / "piqa" / "valid-labels.lst") if x.strip()]
    src = _jsonl(data_dir / "piqa" / "valid.jsonl")
    t, _ = lm_eval_task(data_dir, tmp_path, "piqa")
    docs = list(t.eval_docs)
    assert [t.doc_to_target(d) for d in docs] == labels
    assert [t.doc_to_choice(d) for d in docs] == [[s["sol1"], s["sol2"]] for s in src]


def test_winogrande_rebuild_reproduces_the_stored_partial_contexts(data_dir, tmp_path):
    """lm-eval's own doc_to_choice / doc_to_target on the rebuilt rows give back exactly the
    pre-split contexts and continuation of the source file, and the gold is dev-labels.lst."""
    src = _jsonl(data_dir / "winogrande" / "winogrande_dev.llmfoundry_partial_eval.jsonl")
    labels = [int(x) for x in open(data_dir / "winogrande" / "dev-labels.lst") if x.strip()]
    t, _ = lm_eval_task(data_dir, tmp_path, "winogrande")
    docs = list(t.eval_docs)
    assert len(docs) == len(src) == len(labels) == 1267
    for doc, s, lab in zip(docs, src, labels, strict=True):
        assert t.doc_to_choice(doc) == s["context_options"]
        assert t.doc_to_target(doc) == s["continuation"]
        assert t.doc_to_text(doc) == lab - 1 == s["gold"]  # lm-eval: the gold option index


@pytest.mark.slow
def test_hellaswag_subset_is_lossless_and_full_rebuilds_the_queries(data_dir, tmp_path):
    sub, _ = lm_eval_task(data_dir, tmp_path, "hellaswag", "subset")
    full, local = lm_eval_task(data_dir, tmp_path, "hellaswag", "full")
    raw = _jsonl(data_dir / "hellaswag" / "hellaswag_val_subset1000.rubrikscube.jsonl")
    sub_docs, full_docs = list(sub.eval_docs), list(full.eval_docs)
    assert local.items == len(full_docs) == 10042
    assert [(d["ctx_a"], d["ctx_b"], d["endings"], int(d["label"])) for d in sub_docs] == \
        [(r["ctx_a"], r["ctx_b"], r["endings"], r["label"]) for r in raw]
    by_query = {d["query"]: d for d in full_docs}
    same_choices = 0
    for d in sub_docs:  # every subset item is in the full set, with lm-eval's exact query and gold
        f = by_query[d["query"]]
        assert f["gold"] == d["gold"]
        assert [c.strip() for c in f["choices"]] == [c.strip() for c in d["choices"]]
        same_choices += f["choices"] == d["choices"]
    assert same_choices == 941  # 59 endings lost a leading space in the line format (module docstring)


def test_conversion_is_cached_by_source_hash(data_dir, tmp_path):
    a = prepare("piqa", data_dir, tmp_path)
    b = prepare("piqa", data_dir, tmp_path)
    assert a.yaml == b.yaml and a.data_sha256 == b.data_sha256
    # one folder (beside it the lock file that made concurrent jobs convert it once)
    folder = a.yaml.parent.name
    assert sorted(p.name for p in (tmp_path / "zeroshot").iterdir()) == [folder, f"{folder}.lock"]
    assert "include:" in a.yaml.read_text() and 'dataset_path: "json"' in a.yaml.read_text()


def _copy_task(data_dir, tmp_path, folder):
    """A writable copy of one task's folder (the shared data is read-only)."""
    dst = tmp_path / "data"
    (dst / folder).mkdir(parents=True)
    for f in (data_dir / folder).iterdir():
        shutil.copyfile(f, dst / folder / f.name)
    return dst


def test_bad_inputs_are_one_line_errors(data_dir, tmp_path):
    msg = r"^unknown zero-shot task 'pica'; known: arc_challenge, .*winogrande\. Did you mean 'piqa'\?$"
    with pytest.raises(ConfigError, match=msg):
        prepare("pica", data_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"missing data file .*/piqa/valid.jsonl"):
        prepare("piqa", tmp_path, tmp_path)
    d = _copy_task(data_dir, tmp_path, "piqa")
    lines = (d / "piqa" / "valid.jsonl").read_text().splitlines(keepends=True)
    (d / "piqa" / "valid.jsonl").write_text("".join(lines[:2] + ['{"goal": "x", "sol1": "y"\n'] + lines[3:]))
    with pytest.raises(ConfigError, match=r"piqa/valid.jsonl:3: not valid JSON") as err:
        prepare("piqa", d, tmp_path)
    assert "\n" not in str(err.value)
    (d / "piqa" / "valid.jsonl").write_text("".join(lines[:2] + ['{"goal": "x", "sol1": "y"}\n'] + lines[3:]))
    with pytest.raises(ConfigError, match=r"piqa/valid.jsonl:3: field 'sol2' is missing"):
        prepare("piqa", d, tmp_path)
    d = _copy_task(data_dir, tmp_path, "winogrande")
    labels = d / "winogrande" / "dev-labels.lst"
    flipped = labels.read_text().splitlines()
    flipped[4] = "1" if flipped[4] == "2" else "2"
    labels.write_text("\n".join(flipped) + "\n")
    with pytest.raises(ConfigError, match=r"winogrande_dev.llmfoundry_partial_eval.jsonl:5: gold=.* disagrees"):
        prepare("winogrande", d, tmp_path)
