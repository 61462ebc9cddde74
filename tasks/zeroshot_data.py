"""Local zero-shot data → the exact rows lm-eval's built-in task configs read.

The files in the local data directory (``../shared/data``; provenance in its README) come in
different shapes. Each converter below rebuilds the schema of the Hugging Face dataset that
lm-eval's own YAML names, so that lm-eval's prompts, choices and targets apply unchanged:

=============  ===================================  =============================================
lm-eval task   HF dataset the YAML reads            schema written (one JSON object a line)
=============  ===================================  =============================================
piqa           ``baber/piqa`` validation            goal, sol1, sol2, label (int)
hellaswag      ``Rowan/hellaswag`` validation       ind, activity_label, ctx_a, ctx_b, ctx, endings,
                                                    source_id, split, split_type, label (str)
arc_easy       ``allenai/ai2_arc`` ARC-Easy test    id, question, choices {text, label}, answerKey
arc_challenge  ``allenai/ai2_arc`` ARC-Challenge    (same)
winogrande     ``allenai/winogrande`` xl validation sentence, option1, option2, answer ("1"/"2")
=============  ===================================  =============================================

Gold labels are cross-checked against the official keys shipped beside the items (PIQA labels,
ARC ``question-answers``, WinoGrande ``dev-labels.lst``); a disagreement, a malformed line or a
missing file is a one-line ``ConfigError`` naming the file (and line).

Two sources are not in the original schema:

* **WinoGrande** is stored pre-split for partial scoring: ``context_options[i] = sentence[:blank]
  + option_i`` and ``continuation = sentence[blank+1:].strip()``. It is rebuilt as ``sentence =
  prefix + "_" + continuation`` (a space before the continuation unless it starts with
  punctuation), ``option_i = context_options[i][len(prefix):]``, where ``prefix`` is the longest
  common prefix of the two contexts cut back to a word boundary. lm-eval reads only
  ``sentence[:blank] + option_i`` and ``sentence[blank+1:].strip()``, which reproduce the stored
  contexts and continuation exactly (tested); when both options begin with the same word, that
  word is attributed to the sentence rather than to the options, which changes no request.
* **HellaSwag full** (10042 items) is a line format of already *preprocessed* text with
  ``ctx_a``/``ctx_b`` joined. ``ctx_b`` is recovered as the trailing lower-case sentence fragment
  (lm-eval capitalizes it): on the 1000 items shared with the rowanz subset this rebuilds
  lm-eval's query exactly for all of them, but 59 of those items had an ending whose lm-eval form
  starts with a space (a removed ``[step]`` tag) that the line format dropped. The ``subset``
  variant (original schema, exact) is therefore the default; ``full`` is recorded as such.

Converted files are cached under ``<cache_dir>/zeroshot/``, keyed by the SHA-256 of the source
files and the converter version, and written atomically (a finished folder appears at once);
jobs that start together convert once (``harness.util.cache_lock``).
"""
from __future__ import annotations

import bz2
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.inputs.data import local_file
from harness.util import atomic_output, cache_lock, file_sha256, unknown

CONVERTER_VERSION = 1
SUITE = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande")
HELLASWAG_VARIANTS = ("subset", "full")

# lm-eval task → (built-in YAML relative to lm_eval/tasks, the split its eval docs come from)
BUILTIN = {
    "piqa": ("piqa/piqa.yaml", "validation"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"),
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "winogrande": ("winogrande/default.yaml", "validation"),
}


def builtin_yaml(task: str) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent / BUILTIN[task][0]


def sources(task: str, variant: str = "subset") -> tuple[str, ...]:
    """``FILES`` keys a task's local data is built from (items first, then the official key)."""
    return {
        "piqa": ("piqa", "piqa_labels"),
        "hellaswag": (f"hellaswag_{variant}",),
        "arc_easy": ("arc_easy", "arc_easy_key"),
        "arc_challenge": ("arc_challenge", "arc_challenge_key"),
        "winogrande": ("winogrande", "winogrande_labels"),
    }[task]


# ----------------------------------------------------------------------------- readers
def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{i}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            out.append((i, obj))
    return out


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _field(path: Path, line: int, obj: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj or not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        raise ConfigError(f"{path}:{line}: field {key!r} is missing or not {getattr(kind, '__name__', kind)}")
    return obj[key]


def _labels(path: Path, allowed: tuple[str, ...], n: int, items: Path) -> list[str]:
    labels = _lines(path)
    if len(labels) != n:
        raise ConfigError(f"{path}: {len(labels)} labels for {n} items in {items}")
    for i, lab in enumerate(labels, 1):
        if lab.strip() not in allowed:
            raise ConfigError(f"{path}:{i}: label {lab!r} is not one of {', '.join(allowed)}")
    return [lab.strip() for lab in labels]


def _official_keys(path: Path) -> dict[str, str]:
    return {_field(path, i, o, "id", str): _field(path, i, o, "answerKey", str) for i, o in _jsonl(path)}


# ----------------------------------------------------------------------------- converters
def convert_piqa(items: Path, labels: Path) -> list[dict]:
    rows = _jsonl(items)
    gold = _labels(labels, ("0", "1"), len(rows), items)
    return [{"goal": _field(items, i, o, "goal", str), "sol1": _field(items, i, o, "sol1", str),
             "sol2": _field(items, i, o, "sol2", str), "label": int(g)} for (i, o), g in zip(rows, gold, strict=True)]


HELLASWAG_KEYS = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                  "split_type", "label")


def convert_hellaswag_subset(items: Path) -> list[dict]:
    out = []
    for i, o in _jsonl(items):
        for key in ("activity_label", "ctx_a", "ctx_b"):
            _field(items, i, o, key, str)
        endings = _field(items, i, o, "endings", list)
        label = int(_field(items, i, o, "label", (int, str)))
        if len(endings) != 4 or not all(isinstance(e, str) for e in endings) or label not in range(4):
            raise ConfigError(f"{items}:{i}: expected 4 string endings and a label in 0-3")
        out.append({k: o.get(k) for k in HELLASWAG_KEYS} | {"label": str(label)})  # HF stores the label as str
    return out


_CTX_B = re.compile(r"(?:^|(?<=[.!?])\s+)([a-z][^.!?]*)$")  # trailing lower-case fragment = ctx_b


def convert_hellaswag_full(items: Path) -> list[dict]:
    """klosax's line format: ``"activity_label: ctx"``, the label, the 4 endings (6 lines an item)."""
    with bz2.open(items, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ConfigError(f"{items}: {len(lines)} lines is not a multiple of 6 (query, label, 4 endings)")
    out = []
    for k in range(0, len(lines), 6):
        query, label, endings = lines[k], lines[k + 1], lines[k + 2 : k + 6]
        if ": " not in query or label.strip() not in ("0", "1", "2", "3"):
            raise ConfigError(f"{items}:{k + 1}: expected 'activity_label: context' then a label 0-3")
        activity, ctx = query.split(": ", 1)
        m = _CTX_B.search(ctx)
        ctx_a, ctx_b = (ctx[: m.start(1)].rstrip(), m.group(1)) if m else (ctx, "")
        out.append({"ind": k // 6, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx,
                    "endings": endings, "source_id": "", "split": "val", "split_type": "",
                    "label": label.strip()})
    return out


def convert_arc_easy(items: Path, key: Path) -> list[dict]:
    """Oxen-AI ``{id, prompt, choices, answer_idx}``; labels A-E or 1-5 as the official key uses."""
    official = _official_keys(key)
    out = []
    for i, o in _jsonl(items):
        qid, choices = _field(items, i, o, "id", str), _field(items, i, o, "choices", list)
        idx = _field(items, i, o, "answer_idx", int)
        answer = official.get(qid)
        if answer is None:
            raise ConfigError(f"{items}:{i}: id {qid!r} is not in the official key {key}")
        labels = [str(j + 1) for j in range(len(choices))] if answer.isdigit() else \
            [chr(ord("A") + j) for j in range(len(choices))]
        if answer not in labels or labels.index(answer) != idx:
            raise ConfigError(f"{items}:{i}: answer_idx={idx} disagrees with the official answer {answer!r}")
        out.append({"id": qid, "question": _field(items, i, o, "prompt", str),
                    "choices": {"text": choices, "label": labels}, "answerKey": answer})
    return out


def labels_of(options: list[dict]) -> list[str]:
    return [c["label"] for c in options]


def convert_arc_challenge(items: Path, key: Path) -> list[dict]:
    """basic_evaluator ``{id, question, options[{label, text}], answer}``."""
    official = _official_keys(key)
    out = []
    for i, o in _jsonl(items):
        qid, options = _field(items, i, o, "id", str), _field(items, i, o, "options", list)
        if not all(isinstance(c, dict) and isinstance(c.get("label"), str) and isinstance(c.get("text"), str)
                   for c in options):
            raise ConfigError(f"{items}:{i}: options must be objects with string 'label' and 'text'")
        answer, labels = _field(items, i, o, "answer", str), labels_of(options)
        official_answer = official.get(qid)
        if official_answer and official_answer.isdigit() and not answer.isdigit():
            # This source relabelled the numbered items (1-5) with letters; the HF set keeps the numbers.
            labels = [str(j + 1) for j in range(len(options))]
            answer = labels[labels_of(options).index(answer)] if answer in labels_of(options) else answer
        if official_answer != answer or answer not in labels:
            raise ConfigError(f"{items}:{i}: answer {answer!r} disagrees with the official key {key}")
        out.append({"id": qid, "question": _field(items, i, o, "question", str),
                    "choices": {"text": [c["text"] for c in options], "label": labels}, "answerKey": answer})
    return out


def _common_word_prefix(a: str, b: str) -> str:
    n = len(os.path.commonprefix([a, b]))
    if n < min(len(a), len(b)):  # cut back to a word boundary: the blank starts a word
        n = a.rfind(" ", 0, n) + 1
    return a[:n]


def convert_winogrande(items: Path, labels: Path) -> list[dict]:
    rows = _jsonl(items)
    answers = _labels(labels, ("1", "2"), len(rows), items)
    out = []
    for (i, o), answer in zip(rows, answers, strict=True):
        ctxs, cont = _field(items, i, o, "context_options", list), _field(items, i, o, "continuation", str)
        gold = _field(items, i, o, "gold", int)
        if len(ctxs) != 2 or not all(isinstance(c, str) for c in ctxs):
            raise ConfigError(f"{items}:{i}: expected two string context_options")
        if str(gold + 1) != answer:
            raise ConfigError(f"{items}:{i}: gold={gold} disagrees with {labels} line {len(out) + 1} ({answer})")
        prefix = _common_word_prefix(*ctxs)
        if "_" in prefix:  # lm-eval finds the blank as the first "_"
            raise ConfigError(f"{items}:{i}: the context before the blank contains '_'")
        sep = "" if cont[:1] in ".,;:!?'" else " "
        out.append({"sentence": prefix + "_" + sep + cont, "option1": ctxs[0][len(prefix):],
                    "option2": ctxs[1][len(prefix):], "answer": answer})
    return out


def convert(task: str, data_dir: Path, variant: str = "subset") -> tuple[list[dict], dict[str, str]]:
    """Rows in lm-eval's schema and the source files used ({path: sha256})."""
    paths = [local_file(data_dir, key) for key in sources(task, variant)]
    rows = {
        "piqa": lambda: convert_piqa(*paths),
        "hellaswag": lambda: (convert_hellaswag_full if variant == "full" else convert_hellaswag_subset)(*paths),
        "arc_easy": lambda: convert_arc_easy(*paths),
        "arc_challenge": lambda: convert_arc_challenge(*paths),
        "winogrande": lambda: convert_winogrande(*paths),
    }[task]()
    if not rows:
        raise ConfigError(f"{paths[0]} holds no items")
    return rows, {str(p): file_sha256(p) for p in paths}


# ----------------------------------------------------------------------------- cached lm-eval task
@dataclass
class LocalTask:
    """A converted task on disk: ``yaml`` is what lm-eval's TaskManager loads."""

    task: str
    yaml: Path
    data: Path
    items: int
    sources: dict[str, str]  # source path -> sha256
    data_sha256: str


def task_yaml(task: str, data: Path, hf_cache: Path) -> str:
    """lm-eval's built-in config with only the data source replaced.

    The splits the local file does not have are set to null: lm-eval would otherwise index the
    missing train split to build its few-shot sampler (unused at zero shots).
    """
    split = BUILTIN[task][1]
    cfg = {
        "include": str(builtin_yaml(task)),
        "task": task,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data)}, "cache_dir": str(hf_cache)},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }
    head = f"# Generated by the harness: lm-eval's built-in {task} config, local data ({data.name}).\n"
    return head + "\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()) + "\n"  # JSON values are YAML


def write_local_task(task: str, data_dir: Path, variant: str, hashes: dict[str, str], out: Path,
                     hf_cache: Path) -> None:
    """Convert ``task``'s files and write the folder ``out`` (data, lm-eval YAML, info) atomically."""
    rows, _ = convert(task, data_dir, variant)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    info = {"task": task, "variant": variant, "items": len(rows), "sources": hashes,
            "data_sha256": hashlib.sha256(text.encode()).hexdigest(), "converter": CONVERTER_VERSION}
    with atomic_output(out) as tmp:  # the folder appears complete, or not at all
        tmp.mkdir()
        (tmp / "data.jsonl").write_text(text, encoding="utf-8")
        (tmp / f"{task}.yaml").write_text(task_yaml(task, out / "data.jsonl", hf_cache))
        (tmp / "info.json").write_text(json.dumps(info, indent=2))


def prepare(task: str, data_dir: Path, cache_dir: Path, variant: str = "subset") -> LocalTask:
    """Convert ``task``'s local files once (cached by their hashes) and return the task on disk."""
    if task not in BUILTIN:
        raise unknown("zero-shot task", task, BUILTIN)
    if variant not in HELLASWAG_VARIANTS:
        raise ConfigError(f"hellaswag variant {variant!r} is unknown; use {' or '.join(HELLASWAG_VARIANTS)}")
    paths = [local_file(data_dir, key) for key in sources(task, variant)]
    hashes = {str(p): file_sha256(p) for p in paths}
    key = hashlib.sha256(json.dumps([CONVERTER_VERSION, task, variant, sorted(hashes.values()),
                                     str(builtin_yaml(task))]).encode()).hexdigest()[:12]
    name = f"{task}-full" if task == "hellaswag" and variant == "full" else task
    out = cache_dir / "zeroshot" / f"{name}-{key}"
    if not (out / "info.json").is_file():
        with cache_lock(out):  # jobs that start together convert once; the others wait and read it
            if not (out / "info.json").is_file():
                write_local_task(task, data_dir, variant, hashes, out, cache_dir / "hf_datasets")
    info = json.loads((out / "info.json").read_text())
    return LocalTask(task=task, yaml=out / f"{task}.yaml", data=out / "data.jsonl", items=info["items"],
                     sources=info["sources"], data_sha256=info["data_sha256"])



