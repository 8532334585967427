#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine lacks for sciqa, offline-capable: WordNet for METEOR
# (apt: wordnet-base + wordnet-sense-index, laid out for nltk by sciqa itself), torch 2.13.0 first
# (a CPU build; a plain `torch` would pull a CUDA build of GBs), then sciqa with its test extras.
# The README's first command and .ci/run both call it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
bash .ci/wordnet.sh
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev]'
