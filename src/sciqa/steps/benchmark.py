"""Benchmark a VLM on one split and prompt setting: the outputs CSV of every problem.

    sciqa benchmark --model tiny-qwen2-vl --split validation --setting QTCHS
    sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA --batch-size 16
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sciqa.backends import backend_class
from sciqa.backends.base import check_answer_mode
from sciqa.data import Problem, load_problems
from sciqa.errors import SciqaError
from sciqa.prompts import check_setting
from sciqa.steps.generation import check_workdir, generate_outputs
from sciqa.tracking import StepRun, step_run


@dataclass
class BenchmarkConfig:
    model: str = field(default="tiny-qwen2-vl", metadata={"help": "tiny model name, hub id or local folder"})
    dataset: str = field(default="sample", metadata={"help": "sample, a hub dataset id, or a local folder"})
    split: str = field(default="validation", metadata={"help": "train, validation (val) or test"})
    setting: str = field(default="QTCH", metadata={"help": "prompt setting: QTCH, QTCHL, QTCHLS or QTCHS"})
    backend: str = field(default="hf", metadata={"help": "generation backend"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget per answer"})
    answer_mode: str = field(default="free", metadata={"help": "free (the study's) or choice: pick the likeliest "
                                                               "choice, then explain (hf backend)"})
    limit: int = field(default=0, metadata={"help": "first N problems only (0 = all)"})
    keep_all: bool = field(default=False, metadata={"help": "keep problems without lecture or solution"})
    revision: str = field(default="", metadata={"help": "model revision (hub models)"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16 or float16"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA + bf16 when present), cpu or cuda"})
    workdir: str = field(default="sciqa-work", metadata={"help": "local folder for outputs (resume state)"})
    force: bool = field(default=False, metadata={"help": "recompute even if a finished run matches"})
    # openai backend (any OpenAI-compatible chat-completions API)
    api_base: str = field(default="", metadata={"help": "openai backend: API base URL, e.g. http://127.0.0.1:8000/v1"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "openai backend: environment variable holding the API key (never logged; '' = send no key)"})
    concurrency: int = field(default=4, metadata={"help": "openai backend: requests in flight"})
    timeout: float = field(default=120.0, metadata={"help": "openai backend: seconds per request"})
    max_retries: int = field(default=5, metadata={"help": "openai backend: retries on 429/5xx/connection errors"})
    prompt_cost_per_1k: float = field(default=0.0, metadata={"help": "openai backend: price per 1k prompt tokens"})
    completion_cost_per_1k: float = field(default=0.0, metadata={
        "help": "openai backend: price per 1k completion tokens (logs api_cost)"})
    # vllm backend (pip install -e '.[vllm]'); serves LoRA adapters only, prefix adapters need --backend hf
    tensor_parallel: int = field(default=1, metadata={"help": "vllm backend: GPUs for tensor parallelism (vLLM serves LoRA adapters only; prefix adapters: --backend hf)"})
    max_model_len: int = field(default=0, metadata={"help": "vllm backend: context length cap (0 = model's)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vllm backend: GPU memory fraction"})
    max_images: int = field(default=1, metadata={"help": "vllm backend: images per prompt (limit_mm_per_prompt)"})
    cpu_offload_gb: float = field(default=0.0, metadata={
        "help": "vllm backend: GiB of weights offloaded to CPU (may be a no-op on vLLM V1)"})


# How the work is carried out, not what it produces: changing one must resume, not start over.
OPERATIONAL = ("workdir", "force", "batch_size", "concurrency", "timeout", "max_retries", "prompt_cost_per_1k",
               "completion_cost_per_1k", "gpu_memory_utilization", "cpu_offload_gb", "api_key_env")


def identity(cfg: BenchmarkConfig) -> dict:
    """The parameters that define the outputs: what the cache key and resume compare."""
    return {k: v for k, v in vars(cfg).items() if k not in OPERATIONAL}


def check(cfg: BenchmarkConfig) -> list[Problem]:
    """Every input error, before any run starts or any file is written; returns the problems."""
    from sciqa.models.base import check_dtype

    check_setting(cfg.setting)
    check_dtype(cfg.dtype)
    backend_cls = backend_class(cfg.backend)
    check_answer_mode(cfg.answer_mode, cfg.backend)
    check_workdir(cfg.workdir)
    problems = load_problems(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit or None)
    if not problems:
        raise SciqaError(f"no problems in split '{cfg.split}' of '{cfg.dataset}' after filtering")
    backend_cls.check(cfg)
    return problems


def benchmark(cfg: BenchmarkConfig, parent_run_id: str | None = None) -> StepRun:
    """Validate everything, then generate (resuming by id) inside one MLflow run."""
    problems = check(cfg)
    backend_cls = backend_class(cfg.backend)
    workdir = check_workdir(cfg.workdir)
    tags = {"sciqa.model": cfg.model, "sciqa.teacher": "false", "sciqa.split": problems[0].split,
            "sciqa.setting": cfg.setting, "sciqa.backend": cfg.backend}
    name = f"benchmark-{cfg.model.split('/')[-1]}-{problems[0].split}-{cfg.setting}"
    settings = {k: v for k, v in vars(cfg).items() if k in OPERATIONAL and k != "force"}
    with step_run("benchmark", identity(cfg), tags, name, cfg.force, parent_run_id, settings) as run:
        if run.reused:
            print(f"benchmark: reusing finished run {run.run_id}")
            return run
        generate_outputs(run, workdir, problems, cfg.setting, lambda: backend_cls.from_config(cfg), cfg.batch_size,
                         {"model": cfg.model, "adapter": ""})
    return run
