"""Backend registry: name -> "module:Class", imported lazily (vLLM and API clients are optional)."""
from __future__ import annotations

import importlib

from sciqa.errors import SciqaError

BACKENDS: dict[str, str] = {
    "hf": "sciqa.backends.hf:HFBackend",
    "vllm": "sciqa.backends.vllm:VLLMBackend",
    "openai": "sciqa.backends.openai:OpenAIBackend",
}


def backend_class(name: str):
    if name not in BACKENDS:
        raise SciqaError(f"unknown backend '{name}'; accepted: {', '.join(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attr)
