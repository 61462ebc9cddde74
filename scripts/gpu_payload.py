"""The files the GPU check needs beside its wheels: the default model's tokenizer and the evaluation and
calibration text, copied into a folder that travels with the working tree (``scripts/gpu_wheels.sh``).

    python scripts/gpu_payload.py DEST      # DEST/tokenizer, DEST/data/{wikitext2,c4}/...

The GPU image lacks the default model's package (a 92 MB GGUF: too big to carry) and the benchmark data
beside the checkout. The check's runs use tiny random models and one random 7B-shaped block, so they need
only the tokenizer (saved from the embedded default, converted here once) and two files of text: the
WikiText-2 test file (evaluation) and the local C4 validation documents (docs 0–999 evaluate, 1000–1999
calibrate; ``harness.inputs.data``), with the paths ``harness.inputs.data`` expects.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_KEYS = ("wikitext2_test", "c4")  # harness.inputs.data.FILES keys the check's runs read


def copy_tokenizer(dest: Path, cache_dir: Path) -> Path:
    from harness.inputs.model import load_tokenizer

    tok = load_tokenizer("embedded", cache_dir)
    out = dest / "tokenizer"
    tok.save_pretrained(out)
    return out


def copy_data(dest: Path, data_dir: Path) -> list[Path]:
    from harness.inputs.data import FILES

    copied = []
    for key in DATA_KEYS:
        rel = FILES[key]
        target = dest / "data" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / rel, target)
        copied.append(target)
    return copied


def main() -> int:
    import os

    from harness.inputs.data import resolve_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("HARNESS_CACHE", "~/.cache/quant-harness")).expanduser())
    args = p.parse_args()
    data_dir = resolve_data_dir(None)
    if data_dir is None:
        sys.exit("no local benchmark data: set HARNESS_DATA to the folder of ../shared/data (see its README)")
    tok = copy_tokenizer(args.dest, args.cache_dir)
    files = copy_data(args.dest, data_dir)
    size = sum(f.stat().st_size for f in [*tok.iterdir(), *files])
    sys.stdout.write(f"tokenizer → {tok}; data → {args.dest / 'data'} ({size / 2**20:.1f} MiB)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
