"""The one small interface every generation backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from sciqa.backends import BACKENDS, backend_class
from sciqa.data.problems import Problem
from sciqa.errors import SciqaError

# free: the study's free generation; choice: the likeliest choice, then the explanation (loglikelihood backends)
ANSWER_MODES = ("free", "choice")
CHOICE_SCORES = ("sum", "mean")  # choice mode: summed or per-token mean log-probability of a choice's tokens


@dataclass(frozen=True)
class Generation:
    """One model answer: the text (cut at the end of the turn) and why generation stopped."""

    raw_output: str
    finish_reason: str  # "stop" (end of turn) or "length" (max_new_tokens reached)
    n_output_tokens: int


class Backend(ABC):
    """Generates answers for a batch of problems given their prompt texts (one per problem)."""

    name: str = ""
    loglikelihood: bool = False  # scores texts with the model's own log-probabilities: answer mode "choice"

    @classmethod
    def check(cls, cfg) -> None:
        """Validate the config before any run starts (raise SciqaError); loads nothing heavy."""
        if cfg.answer_mode == "choice" and not cls.loglikelihood:
            able = ", ".join(name for name in BACKENDS if backend_class(name).loglikelihood)
            raise SciqaError(f"unknown answer mode 'choice' for backend '{cls.name}'; accepted: free, "
                             f"choice ({able} backend only)")

    @classmethod
    @abstractmethod
    def from_config(cls, cfg, adapter: str | None = None) -> Backend:
        """Build the backend for a step config; ``adapter``: a trained adapter folder to apply."""

    @abstractmethod
    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        """Greedy by default; the same stop handling in every backend."""

    def metrics(self) -> dict[str, float]:
        """Counters to log as MLflow metrics after generation (API tokens, cost); none by default."""
        return {}
