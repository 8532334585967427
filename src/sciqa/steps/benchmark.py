"""Benchmark a VLM on one split and prompt setting: the outputs CSV of every problem.

    sciqa benchmark --model tiny-qwen2-vl --split validation --setting QTCHS
    sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA --batch-size 16
"""
from __future__ import annotations

from dataclasses import dataclass

from sciqa.backends import backend_class
from sciqa.backends.base import check_answer_mode
from sciqa.config import check_ranges, operational
from sciqa.steps.generation import (
    GenerationConfig,
    Inputs,
    check_inputs,
    generate_outputs,
    generation_identity,
    problem_inputs,
)
from sciqa.tracking.runs import StepRun, step_run


@dataclass
class BenchmarkConfig(GenerationConfig):
    """A model on one split and setting: every option is generation's (``GenerationConfig``)."""


def check(cfg: BenchmarkConfig) -> Inputs:
    """Every input error, before any run starts or any file is written; returns what the run needs."""
    check_ranges(cfg)
    backend_cls = backend_class(cfg.backend)
    check_answer_mode(cfg.answer_mode, cfg.backend)
    check_inputs(cfg.dtype, cfg.workdir)
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    backend_cls.check(cfg)
    return inputs


def benchmark(cfg: BenchmarkConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate (resuming by id) inside one MLflow run."""
    from sciqa import models
    from sciqa.tracking import runs

    inputs = check(cfg)
    runs.setup()
    split = inputs.problems[0].split
    params = {**generation_identity(cfg), "split": split, "data_digest": inputs.digest,
              "model_digest": models.fingerprint(cfg.model, cfg.revision or None)}
    tags = {"sciqa.model": cfg.model, "sciqa.teacher": "false", "sciqa.split": split,
            "sciqa.setting": cfg.setting, "sciqa.backend": cfg.backend}
    name = f"benchmark-{cfg.model.split('/')[-1]}-{split}-{cfg.setting}"
    with step_run("benchmark", params, tags, name, cfg.force, parent_run_id, operational(cfg)) as run:
        if run.reused:
            print(f"benchmark: reusing finished run {run.run_id}")
            return run
        runs.log_problems(inputs.problems, cfg.dataset, inputs.digest, "eval", cfg.setting)
        backend_cls = backend_class(cfg.backend)
        generate_outputs(run, cfg.workdir, inputs, cfg.setting, lambda: backend_cls.from_config(cfg), cfg.batch_size,
                         {"model": cfg.model, "adapter": ""})
    return run
