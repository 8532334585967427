"""The generation run shared by ``benchmark`` and ``score``: resume by id, batches, CSV, metrics, evaluation."""
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sciqa.backends import ANSWER_MODES, BACKENDS, CHOICE_SCORES, Backend
from sciqa.config import DTYPE_CHOICES, identity, operational, option
from sciqa.data import Problem, check_images, load_problems, problems_digest
from sciqa.data.prompts import SETTINGS, build_prompt
from sciqa.errors import SciqaError
from sciqa.eval.outputs import OutputsCSV, read_outputs
from sciqa.eval.parsing import parse_output
from sciqa.files import cache_root, digest
from sciqa.slurm import job
from sciqa.steps.evaluate import evaluate_run
from sciqa.tracking.artifacts import fetch_artifact, log_problems
from sciqa.tracking.runs import StepRun, phase, step_run
from sciqa.tracking.store import store_identity, unwritable_reason

CSV_LOG_SECONDS = 300  # log the partial CSV this often (a signal-free crash loses at most this much)


@dataclass
class GenerationConfig:
    """What ``benchmark`` and ``score`` share; each backend reads the fields it declares in ``Backend.options``."""
    model: str = option("tiny-qwen2-vl", "tiny model name, hub id or local folder")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    split: str = option("validation", "train, validation (val) or test")
    setting: str = option("QTCH", "prompt setting", choices=tuple(SETTINGS))
    backend: str = option("hf", "generation backend", choices=tuple(BACKENDS))
    batch_size: int = option(8, "prompts per generate() call", min=1, operational=True)
    max_new_tokens: int = option(256, "generation budget per answer", min=1)
    answer_mode: str = option("free", "free (the study's) or choice: the likeliest choice, then explain",
                              choices=ANSWER_MODES)
    choice_score: str = option("sum", "choice mode: a choice's summed or per-token mean log-probability",
                               choices=CHOICE_SCORES)
    limit: int = option(0, "first N problems only (0 = all)", min=0)
    keep_all: bool = option(False, "keep problems without lecture or solution")
    strict_images: bool = option(False, "refuse problems whose image file is missing (else: a blank image)",
                                 operational=True)
    revision: str = option("", "model revision (hub models)")
    dtype: str = option("auto", "weights dtype (auto: bf16 on CUDA, else float32)", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto (CUDA when present), cpu or cuda[:N]")
    workdir: str = option("", "local folder for outputs (resume state); '' = $SCIQA_CACHE/work", operational=True)
    force: bool = option(False, "recompute even if a finished run matches", operational=True)
    api_base: str = option("", "openai backend: API base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", "openai backend: variable holding the API key ('' = none)",
                              operational=True)
    concurrency: int = option(4, "openai backend: requests in flight", min=1, operational=True)
    timeout: float = option(120.0, "openai backend: seconds per request", above=0, operational=True)
    max_retries: int = option(5, "openai backend: retries on 429/5xx/connection errors", min=0, operational=True)
    prompt_cost_per_1k: float = option(0.0, "openai backend: price per 1k prompt tokens", min=0, operational=True)
    completion_cost_per_1k: float = option(0.0, "openai backend: price per 1k completion tokens (logs api_cost)",
                                           min=0, operational=True)
    gpu_memory_gb: float = option(0.0, "hf backend: GiB of GPU for the model, the rest offloaded to CPU (0 = all)",
                                  min=0, operational=True)
    tensor_parallel: int = option(1, "vllm backend: GPUs for tensor parallelism (LoRA adapters only)", min=1)
    max_model_len: int = option(0, "vllm backend: context length cap (0 = model's)", min=0)
    gpu_memory_utilization: float = option(0.9, "vllm backend: GPU memory fraction", above=0, max=1, operational=True)
    max_images: int = option(1, "vllm backend: images per prompt (limit_mm_per_prompt)", min=1)
    cpu_offload_gb: float = option(0.0, "vllm backend: GiB of weights offloaded to CPU", min=0, operational=True)


def generation_identity(cfg: GenerationConfig, ignore: tuple[str, ...] = ()) -> dict:
    """The config minus what cannot change an answer: operational, other backends' and (free mode) choice options."""
    foreign = {name for spec in BACKENDS.values() for name in spec.options} - set(BACKENDS[cfg.backend].options)
    free = ("choice_score",) if cfg.answer_mode == "free" else ()
    return identity(cfg, ignore=(*ignore, *foreign, *free))


@dataclass(frozen=True)
class Inputs:
    """The problems a step reads, their content digest (cache key) and missing image files."""
    problems: list[Problem]
    digest: str
    images_missing: int


def workdir_path(workdir: str) -> Path:
    """``--workdir``, else one folder per tracking store (equal steps logged to two stores share no state)."""
    if workdir:
        return Path(workdir).expanduser()
    return cache_root() / "work" / digest(store_identity())[:12]


def check_workdir(workdir: str) -> Path:
    """The output folder, checked writable without creating anything (its nearest existing parent)."""
    try:
        path = workdir_path(workdir).resolve()
    except OSError:  # a relative path in a working folder that was deleted
        raise SciqaError(f"output folder '{workdir}': the current folder no longer exists; cd to a folder that "
                         "does, or pass --workdir") from None
    probe = next(p for p in (path, *path.parents) if p.exists())
    why = "not a folder" if not probe.is_dir() else unwritable_reason(probe)
    if why:
        raise SciqaError(f"output folder '{workdir or path}' is not writable ('{probe}': {why}); pass --workdir")
    return path


def problem_inputs(dataset: str, split: str, keep_all: bool, limit: int, strict_images: bool) -> Inputs:
    """The split's problems (non-empty), their digest, and the image check (before any run)."""
    problems = load_problems(dataset, split, keep_all, limit or None)
    if not problems:
        raise SciqaError(f"no problems in split '{split}' of '{dataset}' after filtering")
    return Inputs(problems, problems_digest(problems), check_images(problems, strict_images))


def generation_run(step: str, cfg: GenerationConfig, inputs: Inputs, run_info: tuple[dict, dict, str, dict],
                   make_backend: Callable[[], Backend], meta: dict[str, str], parent_run_id: str | None,
                   attach: str | None) -> StepRun:
    """One cached run (``run_info``: the step's own params, tags, name prefix, settings): generate, evaluate."""
    params, tags, prefix, settings = run_info
    split = inputs.problems[0].split
    params = {**params, "split": split, "data_digest": inputs.digest}
    tags = {"sciqa.model": cfg.model, "sciqa.split": split, "sciqa.setting": cfg.setting, "sciqa.backend": cfg.backend,
            **tags}
    name = f"{prefix}{cfg.model.split('/')[-1]}-{split}-{cfg.setting}"
    with step_run(step, params, tags, name, cfg.force, parent_run_id, {**operational(cfg), **settings},
                  attach=attach) as run:
        if run.reused:
            print(f"{step}: reusing finished run {run.run_id}")
            return run
        log_problems(inputs.problems, cfg.dataset, inputs.digest, "eval", cfg.setting)
        generate_outputs(run, cfg, inputs, make_backend, meta)
        evaluate_run(run.run_id, dataset=cfg.dataset)
    return run


def _rows(backend: Backend, batch: list[Problem], setting: str, meta: dict[str, str]) -> list[dict]:
    """One batch generated and parsed into CSV rows."""
    prompts = [build_prompt(p, setting) for p in batch]
    t0 = time.perf_counter()
    gens = backend.generate(batch, prompts)
    per_row = round((time.perf_counter() - t0) / len(batch), 4)
    parsed = [parse_output(g.raw_output, p.choices) for p, g in zip(batch, gens)]
    return [{**meta, "id": p.id, "split": p.split, "setting": setting, "prompt": prompt, "raw_output": g.raw_output,
             "answer_index": a.answer_index, "answer_text": a.answer_text, "solution": a.solution,
             "finish_reason": g.finish_reason, "n_output_tokens": g.n_output_tokens, "seconds": per_row}
            for p, prompt, g, a in zip(batch, prompts, gens, parsed)]


def _generate(out: OutputsCSV, problems: list[Problem], todo: list[Problem], setting: str,
              make_backend: Callable[[], Backend], batch_size: int, meta: dict[str, str]) -> int:
    """Generate ``todo`` batch by batch into the CSV, logging it every CSV_LOG_SECONDS and on a stop signal."""
    import mlflow

    def save_csv() -> None:  # the resume state, for a restart on another node
        if out.path.exists():
            mlflow.log_artifact(str(out.path), "outputs")

    with phase("load"):
        backend = make_backend()
    wanted, generated, saved = {p.id for p in problems}, 0, time.monotonic()
    with phase("generate"), tqdm(total=len(problems), initial=len(problems) - len(todo), unit="row",
                                 desc=setting) as bar:
        for i in range(0, len(todo), batch_size):
            # a stop signal: log the CSV and exit 75 (sciqa.slurm.job); the resumed run generates only what is missing
            job.check(lambda: f"{len(out.done & wanted)}/{len(problems)} rows of {out.path.name}", save_csv)
            if time.monotonic() - saved > CSV_LOG_SECONDS:
                save_csv()
                saved = time.monotonic()
            batch = todo[i: i + batch_size]
            generated += out.append(_rows(backend, batch, setting, meta))
            bar.update(len(batch))
            if extra := backend.metrics():  # API tokens/cost so far (a killed run keeps them)
                mlflow.log_metrics(extra)
    return generated


def generate_outputs(run: StepRun, cfg: GenerationConfig, inputs: Inputs, make_backend: Callable[[], Backend],
                     meta: dict[str, str]) -> Path:
    """Generate each problem not in the run's CSV (local, else the run's; repaired); log it and throughput metrics."""
    import mlflow

    problems, setting = inputs.problems, cfg.setting
    name = f"{problems[0].split}_{setting}.csv"
    path = run.state_dir(workdir_path(cfg.workdir)) / name
    if not path.exists():
        fetch_artifact(run.seeds, f"outputs/{name}", path)
    out = OutputsCSV(path)
    if out.dropped:
        print(f"sciqa: warning: {out.dropped} damaged or duplicated record(s) dropped from {path}; "
              "those problems are generated again", file=sys.stderr, flush=True)
    mlflow.log_metrics({"images_missing": inputs.images_missing, "csv_records_dropped": out.dropped})
    todo = [p for p in problems if p.id not in out.done]
    started = time.perf_counter()
    generated = _generate(out, problems, todo, setting, make_backend, cfg.batch_size, meta) if todo else 0
    seconds = time.perf_counter() - started
    df = read_outputs(out.path)
    df = df[df["id"].isin({p.id for p in problems})]
    mlflow.log_metrics({"rows": len(df), "rows_generated": generated, "seconds": seconds,
                        "rows_per_second": generated / seconds if generated else 0.0,
                        "mapped_rate": float(df["answer_index"].notna().mean()) if len(df) else 0.0,
                        "truncated_rate": float((df["finish_reason"] == "length").mean()) if len(df) else 0.0})
    mlflow.log_artifact(str(out.path), "outputs")
    return out.path
