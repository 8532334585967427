"""The generation loop shared by ``benchmark`` and ``score``: resume by id, batches, CSV, metrics."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sciqa.backends import BACKEND_OPTIONS, BACKENDS
from sciqa.backends.base import ANSWER_MODES, CHOICE_SCORES, Backend
from sciqa.config import DTYPE_CHOICES, option
from sciqa.data.problems import Problem
from sciqa.data.prompts import SETTINGS, build_prompt
from sciqa.errors import SciqaError
from sciqa.eval.outputs import OutputsCSV, read_outputs
from sciqa.slurm import job
from sciqa.tracking.runs import StepRun, fetch_artifact, phase

CSV_LOG_SECONDS = 300  # log the partial CSV this often (a signal-free crash loses at most this much)


@dataclass
class GenerationConfig:
    """What ``benchmark`` and ``score`` share: the model, the problems, the prompt, the backend and
    its options (each backend reads the fields it declares in ``Backend.options``), the budget."""

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
    workdir: str = option("", "local folder for outputs (resume state); '' = $SCIQA_CACHE/work, "
                              "never the folder the command runs in", operational=True)
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
    # hf backend
    gpu_memory_gb: float = option(0.0, "hf backend: GiB of the GPU the model may use; the layers beyond it are "
                                       "offloaded to CPU memory (device_map=auto, slower; 0 = all on the GPU)",
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


def generation_identity(cfg: GenerationConfig, ignore: tuple[str, ...] = ()) -> dict:
    """What defines the outputs: the config minus operational fields, minus the options of backends
    other than the one used and choice scoring in free mode (they cannot change a single answer)."""
    from sciqa.config import identity

    foreign = {name for other in BACKEND_OPTIONS.values() for name in other} - set(BACKEND_OPTIONS[cfg.backend])
    free = ("choice_score",) if cfg.answer_mode == "free" else ()
    return identity(cfg, ignore=(*ignore, *foreign, *free))


@dataclass(frozen=True)
class Inputs:
    """The problems a step reads, their content digest (cache key) and missing image files."""

    problems: list[Problem]
    digest: str
    images_missing: int


def workdir_path(workdir: str) -> Path:
    """``--workdir``, else sciqa's cache (``$SCIQA_CACHE/work/<store>``, ~/.cache/sciqa/...): step state
    never lands in the folder a command runs in, which under ``mlflow run`` is the project checkout
    (a git-URI run's is a temporary copy). One folder per tracking store: a state folder belongs to a
    run (:meth:`StepRun.state_dir`), and equal steps logged to two stores must not take each other's."""
    if workdir:
        return Path(workdir).expanduser()
    from sciqa.files import cache_root, digest
    from sciqa.tracking.runs import store_identity

    return cache_root() / "work" / digest(store_identity())[:12]


def check_workdir(workdir: str) -> Path:
    """The local folder for outputs, checked writable without creating anything (bad input must
    leave nothing behind): the folder itself if it exists, else its nearest existing parent."""
    from sciqa.tracking.store import unwritable_reason

    try:
        path = workdir_path(workdir).resolve()
    except OSError:  # a relative path in a working folder that was deleted
        raise SciqaError(f"output folder '{workdir}': the current folder no longer exists; cd to a folder that "
                         "does, or pass --workdir") from None
    probe = path
    while not probe.exists():
        probe = probe.parent
    why = "not a folder" if not probe.is_dir() else unwritable_reason(probe)
    if why:
        raise SciqaError(f"output folder '{workdir or path}' is not writable ('{probe}': {why}); pass --workdir")
    return path


def check_inputs(dtype: str, workdir: str) -> Path:
    """Checks every generating or training step shares."""
    from sciqa.config import DTYPE_CHOICES

    if dtype not in DTYPE_CHOICES:
        raise SciqaError(f"unknown dtype '{dtype}'; accepted: {', '.join(DTYPE_CHOICES)}")
    return check_workdir(workdir)


def problem_inputs(dataset: str, split: str, keep_all: bool, limit: int, strict_images: bool) -> Inputs:
    """The split's problems (non-empty), their digest, and the image check (before any run)."""
    from sciqa.data import load_problems
    from sciqa.data.problems import check_images, problems_digest

    problems = load_problems(dataset, split, keep_all, limit or None)
    if not problems:
        raise SciqaError(f"no problems in split '{split}' of '{dataset}' after filtering")
    return Inputs(problems, problems_digest(problems), check_images(problems, strict_images))


def csv_name(split: str, setting: str) -> str:
    return f"{split}_{setting}.csv"


def _open_csv(run: StepRun, workdir: str, name: str) -> OutputsCSV:
    """This run's CSV: local, else downloaded from the run (or the run it continues); repaired."""
    path = run.state_dir(workdir_path(workdir)) / name
    if not path.exists():
        fetch_artifact(run.seeds, f"outputs/{name}", path)
    out = OutputsCSV(path)
    if out.dropped:
        print(f"sciqa: warning: {out.dropped} damaged or duplicated record(s) dropped from {path}; "
              "those problems are generated again", file=sys.stderr, flush=True)
    return out


def generate_outputs(run: StepRun, workdir: str, inputs: Inputs, setting: str,
                     make_backend: Callable[[], Backend], batch_size: int, meta: dict[str, str]) -> Path:
    """Generate for every problem not yet in the run's CSV; log the CSV and throughput metrics.

    The CSV lives in the run's state folder under ``workdir``; when it is missing locally (another
    machine, a Slurm node) it is seeded from the run's artifacts, so no id is generated twice.
    """
    import mlflow

    from sciqa.eval.parsing import parse_output

    problems = inputs.problems
    name = csv_name(problems[0].split, setting)
    out = _open_csv(run, workdir, name)
    path = out.path
    mlflow.log_metrics({"images_missing": inputs.images_missing, "csv_records_dropped": out.dropped})
    wanted = {p.id for p in problems}
    todo = [p for p in problems if p.id not in out.done]
    started, generated = time.perf_counter(), 0

    def save_csv() -> None:  # the resume state, for a restart on another node
        if path.exists():
            mlflow.log_artifact(str(path), "outputs")

    if todo:
        with phase("load"):
            backend = make_backend()
        saved = time.monotonic()
        with phase("generate"), tqdm(total=len(problems), initial=len(problems) - len(todo), unit="row",
                                     desc=setting) as bar:
            for i in range(0, len(todo), batch_size):
                # a stop signal (Slurm time limit, preemption, requeue, kill): the batches done are in the
                # CSV; log it, exit 75 (sciqa.slurm.job); the resumed run generates only what is missing
                job.check(lambda: f"{len(out.done & wanted)}/{len(problems)} rows of {name}", save_csv)
                if time.monotonic() - saved > CSV_LOG_SECONDS:  # a node that dies loses at most this
                    save_csv()
                    saved = time.monotonic()
                batch = todo[i: i + batch_size]
                prompts = [build_prompt(p, setting) for p in batch]
                t0 = time.perf_counter()
                gens = backend.generate(batch, prompts)
                per_row = (time.perf_counter() - t0) / len(batch)
                rows = []
                for p, prompt, g in zip(batch, prompts, gens):
                    parsed = parse_output(g.raw_output, p.choices)
                    rows.append({**meta, "id": p.id, "split": p.split, "setting": setting, "prompt": prompt,
                                 "raw_output": g.raw_output, "answer_index": parsed.answer_index,
                                 "answer_text": parsed.answer_text, "solution": parsed.solution,
                                 "finish_reason": g.finish_reason, "n_output_tokens": g.n_output_tokens,
                                 "seconds": round(per_row, 4)})
                generated += out.append(rows)
                bar.update(len(batch))
                if extra := backend.metrics():  # API tokens/cost so far (a killed run keeps them)
                    mlflow.log_metrics(extra)
    seconds = time.perf_counter() - started
    df = read_outputs(path)
    df = df[df["id"].isin(wanted)]
    mlflow.log_metrics({"rows": len(df), "rows_generated": generated, "seconds": seconds,
                        "rows_per_second": generated / seconds if generated else 0.0,
                        "mapped_rate": float(df["answer_index"].notna().mean()) if len(df) else 0.0,
                        "truncated_rate": float((df["finish_reason"] == "length").mean()) if len(df) else 0.0})
    mlflow.log_artifact(str(path), "outputs")
    return path
