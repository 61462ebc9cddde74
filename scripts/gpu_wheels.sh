#!/usr/bin/env bash
# Everything the GPU check needs that the lent GPU machine's image lacks, into .gpu_check/ (git-ignored, carried
# with the working tree: `carry: [".gpu_check"]`), at most 40 MiB:
#   wheels/     the distributions of scripts/gpu_wheels.txt, at the versions installed here (what the dry-run test
#               ran with), for CPython 3.12 on manylinux x86_64 (the image's Python)
#   tokenizer/  the default model's tokenizer; data/  WikiText-2 test and the local C4 documents (scripts/gpu_payload.py)
#
#   bash scripts/gpu_wheels.sh [DEST]       # DEST: .gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_check}
PY=${PYTHON:-python}
rm -rf "$DEST/wheels"
mkdir -p "$DEST/wheels"
specs=()
while read -r name; do
  name=${name%%#*}; name=${name// /}
  [ -z "$name" ] && continue
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") \
    || { echo "$name is not installed here: install the harness first (bash scripts/setup.sh)"; exit 1; }
  specs+=("$name==$version")
done < scripts/gpu_wheels.txt
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for spec in "${specs[@]}"; do
  # a wheel for the image's Python; else (antlr4-python3-runtime 4.9.3 ships only an sdist) a wheel built here,
  # accepted only if pure Python (py3-none-any), which installs there as it does here
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$DEST/wheels" "$spec" 2>/dev/null \
    || "$PY" -m pip wheel -q --no-deps -w "$DEST/wheels" "$spec" 2>/dev/null \
    || { echo "no wheel for $spec"; exit 1; }
done
for whl in "$DEST"/wheels/*.whl; do
  case "$whl" in *-none-any.whl|*cp312*manylinux*x86_64*.whl|*abi3*manylinux*x86_64*.whl) ;;
    *) echo "$whl does not install on the image's CPython 3.12 x86_64"; exit 1 ;; esac
done
"$PY" scripts/gpu_payload.py "$DEST"
size=$(du -sm "$DEST" | cut -f1)
echo "carried: ${specs[*]}; $DEST is ${size} MiB"
[ "$size" -le 40 ] || { echo "$DEST is over 40 MiB: carry less (the working tree travels within 64 MiB)"; exit 1; }
