"""Benchmark a VLM on one split and setting (``score`` adds an adapter): resume by id, batches, CSV, evaluation."""
import sys
import time
from pathlib import Path
from typing import NamedTuple

import mlflow
from tqdm import tqdm

from sciqa import models
from sciqa.backends import BACKENDS, Backend, backend_class
from sciqa.config import check_ranges, identity, operational
from sciqa.data import Problem, check_images, load_problems, problems_digest
from sciqa.data.prompts import build_prompt
from sciqa.errors import SciqaError
from sciqa.eval.metrics import check_prerequisites
from sciqa.eval.outputs import OutputsCSV, read_outputs
from sciqa.eval.parsing import parse_output
from sciqa.files import cache_root, digest
from sciqa.slurm import job
from sciqa.steps import BenchmarkConfig
from sciqa.steps.evaluate import evaluate_run
from sciqa.tracking import runs
from sciqa.tracking.artifacts import fetch_artifact, log_problems
from sciqa.tracking.runs import StepRun, phase, step_run
from sciqa.tracking.store import store_identity, unwritable_reason

CSV_LOG_SECONDS = 300  # log the partial CSV this often (a signal-free crash loses at most this much)


def generation_identity(cfg: BenchmarkConfig, ignore: tuple[str, ...] = ()) -> dict:
    """The config minus what cannot change an answer: operational, other backends' and (free mode) choice options."""
    foreign = {name for spec in BACKENDS.values() for name in spec.options} - set(BACKENDS[cfg.backend].options)
    free = ("choice_score",) if cfg.answer_mode == "free" else ()
    return identity(cfg, ignore=(*ignore, *foreign, *free))


class Inputs(NamedTuple):
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


def generation_run(step: str, cfg: BenchmarkConfig, inputs: Inputs, run_info: tuple[dict, dict, str, dict],
                   parent_run_id: str | None, attach: str | None, adapter: str = "", source: str = "") -> StepRun:
    """One cached run (``run_info``: the step's params, tags, name prefix, settings): generate, evaluate."""
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
        generate_outputs(run, cfg, inputs, adapter, {"model": cfg.model, "adapter": source})
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


def _generate(out: OutputsCSV, cfg: BenchmarkConfig, problems: list[Problem], todo: list[Problem], adapter: str,
              meta: dict[str, str]) -> int:
    """Generate ``todo`` batch by batch into the CSV, logging it every CSV_LOG_SECONDS and on a stop signal."""
    def save_csv() -> None:  # the resume state, for a restart on another node
        if out.path.exists():
            mlflow.log_artifact(str(out.path), "outputs")

    with phase("load"):
        backend = backend_class(cfg.backend).from_config(cfg, adapter or None)
    wanted, generated, saved = {p.id for p in problems}, 0, time.monotonic()
    with phase("generate"), tqdm(total=len(problems), initial=len(problems) - len(todo), unit="row",
                                 desc=cfg.setting) as bar:
        for i in range(0, len(todo), cfg.batch_size):
            # a stop signal: log the CSV and exit 75 (sciqa.slurm.job); the resumed run generates only what is missing
            job.check(lambda: f"{len(out.done & wanted)}/{len(problems)} rows of {out.path.name}", save_csv)
            if time.monotonic() - saved > CSV_LOG_SECONDS:
                save_csv()
                saved = time.monotonic()
            batch = todo[i: i + cfg.batch_size]
            generated += out.append(_rows(backend, batch, cfg.setting, meta))
            bar.update(len(batch))
            if extra := backend.metrics():  # API tokens/cost so far (a killed run keeps them)
                mlflow.log_metrics(extra)
    return generated


def generate_outputs(run: StepRun, cfg: BenchmarkConfig, inputs: Inputs, adapter: str, meta: dict[str, str]) -> Path:
    """Generate each problem not in the run's CSV (local, else the run's; repaired); log it and throughput metrics."""
    problems = inputs.problems
    name = f"{problems[0].split}_{cfg.setting}.csv"
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
    generated = _generate(out, cfg, problems, todo, adapter, meta) if todo else 0
    seconds = time.perf_counter() - started
    df = read_outputs(out.path)
    df = df[df["id"].isin({p.id for p in problems})]
    mlflow.log_metrics({"rows": len(df), "rows_generated": generated, "seconds": seconds,
                        "rows_per_second": generated / seconds if generated else 0.0,
                        "mapped_rate": float(df["answer_index"].notna().mean()) if len(df) else 0.0,
                        "truncated_rate": float((df["finish_reason"] == "length").mean()) if len(df) else 0.0})
    mlflow.log_artifact(str(out.path), "outputs")
    return out.path


def check(cfg: BenchmarkConfig) -> Inputs:
    """Every input error, before any run starts or any file is written; returns what the run needs."""
    check_ranges(cfg)
    check_prerequisites()
    check_workdir(cfg.workdir)
    inputs = problem_inputs(cfg.dataset, cfg.split, cfg.keep_all, cfg.limit, cfg.strict_images)
    backend_class(cfg.backend).check(cfg)
    return inputs


def benchmark(cfg: BenchmarkConfig, parent_run_id: str | None = None, attach: str | None = None) -> StepRun:
    """Validate everything, then generate (resuming by id) and evaluate inside one MLflow run."""
    inputs = check(cfg)
    runs.setup()
    params = {**generation_identity(cfg), "model_digest": models.fingerprint(cfg.model, cfg.revision or None)}
    return generation_run("benchmark", cfg, inputs, (params, {"sciqa.teacher": "false"}, "benchmark-", {}),
                          parent_run_id, attach)
