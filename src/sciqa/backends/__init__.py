"""The backend interface and registry: name -> class (imported lazily), the config fields it reads, its adapters."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pkgutil import resolve_name

from sciqa.adapters import VARIANTS
from sciqa.data import Problem
from sciqa.errors import SciqaError


@dataclass(frozen=True)
class BackendSpec:
    impl: str  # "module:Class"
    options: tuple[str, ...]  # the BenchmarkConfig fields it reads beyond the common ones
    adapters: str  # "all", "vllm" (the variants vLLM serves) or "none"


BACKENDS: dict[str, BackendSpec] = {
    "hf": BackendSpec("sciqa.backends.hf:HFBackend", ("gpu_memory_gb",), adapters="all"),
    "vllm": BackendSpec("sciqa.backends.vllm:VLLMBackend", ("tensor_parallel", "max_model_len",
                        "gpu_memory_utilization", "max_images", "cpu_offload_gb"), adapters="vllm"),
    "openai": BackendSpec("sciqa.backends.openai:OpenAIBackend", ("api_base", "api_key_env", "concurrency", "timeout",
                          "max_retries", "prompt_cost_per_1k", "completion_cost_per_1k"), adapters="none"),
}


def backend_class(name: str):  # names checked by check_ranges (the config's choices) before any step calls this
    return resolve_name(BACKENDS[name].impl)


def check_adapter(backend: str, variant: str) -> None:
    spec = BACKENDS[backend]
    if spec.adapters == "none" or (spec.adapters == "vllm" and not VARIANTS[variant].vllm):
        why = "vLLM serves LoRA adapters only" if spec.adapters == "vllm" else "an API has no adapters"
        raise SciqaError(f"backend '{backend}' cannot apply a '{variant}' adapter ({why}); score it with --backend hf")


ANSWER_MODES = ("free", "choice")  # choice: the likeliest choice, then the explanation (loglikelihood backends)
CHOICE_SCORES = ("sum", "mean")  # choice mode: summed or per-token mean log-probability of a choice's tokens


@dataclass(frozen=True)
class Generation:
    raw_output: str  # cut at the end of the turn
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    n_output_tokens: int


class Backend(ABC):
    loglikelihood: bool = False  # scores texts with the model's own log-probabilities: answer mode "choice"

    @classmethod
    def check(cls, cfg) -> None:
        """Validate the config before any run starts (raise SciqaError); loads nothing heavy."""
        if cfg.answer_mode == "choice" and not cls.loglikelihood:
            able = ", ".join(name for name in BACKENDS if backend_class(name).loglikelihood)
            raise SciqaError(f"unknown answer mode 'choice' for backend '{cfg.backend}'; accepted: free, "
                             f"choice ({able} backend only)")

    @classmethod
    def from_config(cls, cfg, adapter: str | None = None) -> Backend:  # adapter: a trained adapter folder
        return cls(cfg, adapter)

    @abstractmethod
    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]: ...

    def metrics(self) -> dict[str, float]:  # counters to log after generation (API tokens, cost)
        return {}
