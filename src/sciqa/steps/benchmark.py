"""Benchmark a VLM on one split and prompt setting: the outputs CSV of every problem, evaluated in the run.

    sciqa benchmark --model tiny-qwen2-vl --split validation --setting QTCHS
    sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA --batch-size 16
"""
from __future__ import annotations

from dataclasses import dataclass

from sciqa import models
from sciqa.backends import backend_class
from sciqa.config import check_ranges
from sciqa.eval.metrics import check_prerequisites
from sciqa.steps.generation import (
    GenerationConfig,
    Inputs,
    check_inputs,
    generation_identity,
    generation_run,
    problem_inputs,
)
from sciqa.tracking import runs
from sciqa.tracking.runs import StepRun


@dataclass
class BenchmarkConfig(GenerationConfig):
    """A model on one split and setting: every option is generation's."""


def check(cfg: BenchmarkConfig) -> Inputs:
    """Every input error, before any run starts or any file is written; returns what the run needs."""
    check_ranges(cfg)
    check_prerequisites()
    backend_cls = backend_class(cfg.backend)
    check_inputs(cfg.dtype, cfg.workdir)
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    backend_cls.check(cfg)
    return inputs


def benchmark(cfg: BenchmarkConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate (resuming by id) and evaluate inside one MLflow run."""
    inputs = check(cfg)
    runs.setup()
    split = inputs.problems[0].split
    params = {**generation_identity(cfg), "split": split, "data_digest": inputs.digest,
              "model_digest": models.fingerprint(cfg.model, cfg.revision or None)}
    tags = {"sciqa.model": cfg.model, "sciqa.teacher": "false", "sciqa.split": split,
            "sciqa.setting": cfg.setting, "sciqa.backend": cfg.backend}
    name = f"benchmark-{cfg.model.split('/')[-1]}-{split}-{cfg.setting}"
    return generation_run("benchmark", cfg, inputs, (params, tags, name, {}),
                          lambda: backend_class(cfg.backend).from_config(cfg), {"model": cfg.model, "adapter": ""},
                          parent_run_id)
