"""Backend registry: name -> class (imported lazily: vLLM and API clients are optional), the ``GenerationConfig``
fields it reads (only those are part of a run's identity) and which trained adapters it applies."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from sciqa.adapters import VARIANTS
from sciqa.errors import SciqaError


@dataclass(frozen=True)
class BackendSpec:
    impl: str  # "module:Class"
    options: tuple[str, ...]  # the GenerationConfig fields it reads beyond the common ones
    adapters: str  # "all", "vllm" (the variants vLLM serves) or "none"


BACKENDS: dict[str, BackendSpec] = {
    "hf": BackendSpec("sciqa.backends.hf:HFBackend", ("gpu_memory_gb",), adapters="all"),
    "vllm": BackendSpec("sciqa.backends.vllm:VLLMBackend", ("tensor_parallel", "max_model_len",
                        "gpu_memory_utilization", "max_images", "cpu_offload_gb"), adapters="vllm"),
    "openai": BackendSpec("sciqa.backends.openai:OpenAIBackend", ("api_base", "api_key_env", "concurrency", "timeout",
                          "max_retries", "prompt_cost_per_1k", "completion_cost_per_1k"), adapters="none"),
}
BACKEND_OPTIONS = {name: spec.options for name, spec in BACKENDS.items()}


def backend_class(name: str):
    if name not in BACKENDS:
        raise SciqaError(f"unknown backend '{name}'; accepted: {', '.join(BACKENDS)}")
    module, attr = BACKENDS[name].impl.split(":")
    return getattr(importlib.import_module(module), attr)


def check_adapter(backend: str, variant: str) -> None:
    """The backend can apply an adapter of this variant, or one line naming the backend that can."""
    spec = BACKENDS[backend]
    if spec.adapters == "all" or (spec.adapters == "vllm" and VARIANTS[variant].vllm):
        return
    raise SciqaError(f"backend '{backend}' cannot apply a '{variant}' adapter "
                     f"({'vLLM serves LoRA adapters only' if spec.adapters == 'vllm' else 'an API has no adapters'}); "
                     "score it with --backend hf")
