"""Benchmark a VLM on one split and prompt setting: the outputs CSV of every problem.

    sciqa benchmark --model tiny-qwen2-vl --split validation --setting QTCHS
    sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA --batch-size 16
"""
from __future__ import annotations

from dataclasses import dataclass

from sciqa.backends import BACKENDS, backend_class
from sciqa.backends.base import ANSWER_MODES, CHOICE_SCORES, check_answer_mode
from sciqa.config import DTYPE_CHOICES, check_ranges, identity, operational, option
from sciqa.prompts import SETTINGS
from sciqa.steps.generation import Inputs, check_inputs, generate_outputs, problem_inputs
from sciqa.tracking import StepRun, step_run


@dataclass
class BenchmarkConfig:
    model: str = option("tiny-qwen2-vl", "tiny model name, hub id or local folder")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    split: str = option("validation", "train, validation (val) or test")
    setting: str = option("QTCH", "prompt setting", choices=tuple(SETTINGS))
    backend: str = option("hf", "generation backend", choices=tuple(BACKENDS))
    batch_size: int = option(8, "prompts per generate() call", min=1, operational=True)
    max_new_tokens: int = option(256, "generation budget per answer", min=1)
    answer_mode: str = option("free", "free (the study's) or choice: pick the likeliest choice, then explain "
                                      "(hf backend)", choices=ANSWER_MODES)
    choice_score: str = option("sum", "choice mode: a choice's summed log-probability, or its per-token mean "
                                      "(length-normalised)", choices=CHOICE_SCORES)
    limit: int = option(0, "first N problems only (0 = all)", min=0)
    keep_all: bool = option(False, "keep problems without lecture or solution")
    strict_images: bool = option(False, "refuse problems whose image file is missing (default: warn and use "
                                        "the blank placeholder)", operational=True)
    revision: str = option("", "model revision (hub models)")
    dtype: str = option("auto", "weights dtype (auto: bf16 on CUDA, else float32)", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto (CUDA when present), cpu or cuda[:N]")
    workdir: str = option("sciqa-work", "local folder for outputs (resume state)", operational=True)
    force: bool = option(False, "recompute even if a finished run matches", operational=True)
    # openai backend (any OpenAI-compatible chat-completions API)
    api_base: str = option("", "openai backend: API base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", "openai backend: environment variable holding the API key "
                                                "(never logged; '' = send no key)", operational=True)
    concurrency: int = option(4, "openai backend: requests in flight", min=1, operational=True)
    timeout: float = option(120.0, "openai backend: seconds per request", above=0, operational=True)
    max_retries: int = option(5, "openai backend: retries on 429/5xx/connection errors", min=0, operational=True)
    prompt_cost_per_1k: float = option(0.0, "openai backend: price per 1k prompt tokens", min=0, operational=True)
    completion_cost_per_1k: float = option(0.0, "openai backend: price per 1k completion tokens (logs api_cost)",
                                           min=0, operational=True)
    # vllm backend (pip install -e '.[vllm]'); serves LoRA adapters only, prefix adapters need --backend hf
    tensor_parallel: int = option(1, "vllm backend: GPUs for tensor parallelism (vLLM serves LoRA adapters "
                                     "only; prefix adapters: --backend hf)", min=1)
    max_model_len: int = option(0, "vllm backend: context length cap (0 = model's)", min=0)
    gpu_memory_utilization: float = option(0.9, "vllm backend: GPU memory fraction", above=0, max=1,
                                           operational=True)
    max_images: int = option(1, "vllm backend: images per prompt (limit_mm_per_prompt)", min=1)
    cpu_offload_gb: float = option(0.0, "vllm backend: GiB of weights offloaded to CPU (may be a no-op on vLLM V1)",
                                   min=0, operational=True)


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
    from sciqa import models, tracking

    inputs = check(cfg)
    tracking.setup()
    split = inputs.problems[0].split
    params = {**identity(cfg, ignore=("choice_score",) if cfg.answer_mode == "free" else ()), "split": split, "data_digest": inputs.digest,
              "model_digest": models.fingerprint(cfg.model, cfg.revision or None)}
    tags = {"sciqa.model": cfg.model, "sciqa.teacher": "false", "sciqa.split": split,
            "sciqa.setting": cfg.setting, "sciqa.backend": cfg.backend}
    name = f"benchmark-{cfg.model.split('/')[-1]}-{split}-{cfg.setting}"
    with step_run("benchmark", params, tags, name, cfg.force, parent_run_id, operational(cfg)) as run:
        if run.reused:
            print(f"benchmark: reusing finished run {run.run_id}")
            return run
        backend_cls = backend_class(cfg.backend)
        generate_outputs(run, cfg.workdir, inputs, cfg.setting, lambda: backend_cls.from_config(cfg), cfg.batch_size,
                         {"model": cfg.model, "adapter": ""})
    return run
