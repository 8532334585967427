"""Benchmark a VLM on one split and prompt setting: the outputs CSV of every problem, evaluated in the run."""
from dataclasses import dataclass

from sciqa import models
from sciqa.backends import backend_class
from sciqa.config import check_ranges
from sciqa.eval.metrics import check_prerequisites
from sciqa.steps import generation as gen
from sciqa.tracking import runs
from sciqa.tracking.runs import StepRun


@dataclass
class BenchmarkConfig(gen.GenerationConfig):
    pass  # every option is generation's


def check(cfg: BenchmarkConfig) -> gen.Inputs:
    """Every input error, before any run starts or any file is written; returns what the run needs."""
    check_ranges(cfg)
    check_prerequisites()
    gen.check_workdir(cfg.workdir)
    inputs = gen.problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    backend_class(cfg.backend).check(cfg)
    return inputs


def benchmark(cfg: BenchmarkConfig, parent_run_id: str | None = None, attach: str | None = None) -> StepRun:
    """Validate everything, then generate (resuming by id) and evaluate inside one MLflow run."""
    inputs = check(cfg)
    runs.setup()
    params = {**gen.generation_identity(cfg), "model_digest": models.fingerprint(cfg.model, cfg.revision or None)}
    return gen.generation_run("benchmark", cfg, inputs, (params, {"sciqa.teacher": "false"}, "benchmark-", {}),
                              lambda: backend_class(cfg.backend).from_config(cfg), {"model": cfg.model, "adapter": ""},
                              parent_run_id, attach)
