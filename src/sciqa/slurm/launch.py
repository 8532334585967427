"""Any step as a Slurm job in the same MLflow run: validate first (a mistake leaves no run), submit in a run
ended SCHEDULED, which the job re-opens through ``MLFLOW_RUN_ID``."""
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import mlflow

from sciqa import slurm
from sciqa.doctor import require
from sciqa.errors import SciqaError
from sciqa.slurm.job import LOG_ENV
from sciqa.slurm.memory import place
from sciqa.tracking import runs as tracking
from sciqa.tracking.store import sqlite_path

JOB_DIR_ENV = "SCIQA_SLURM_DIR"  # job files and logs (default ./sciqa-slurm, on shared disk)
POLL_ENV = "SCIQA_SLURM_POLL_SECONDS"
DEFAULT_POLL = 5.0
NO_RUN = "0" * 32  # a run id for the drafts that are checked before the run exists


def job_dir() -> Path:
    return Path(os.path.abspath(os.environ.get(JOB_DIR_ENV) or "sciqa-slurm"))


def shared_tracking_uri(uri: str) -> str:
    """The URI a job can use: a local sqlite store made absolute, with a warning (only this host reaches it)."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    absolute = "sqlite:///" + os.path.abspath(path)
    print(f"sciqa: warning: tracking URI {absolute} is a local store: only jobs on this host can "
          "write to it and parallel jobs may hit 'database is locked'; on a real cluster run one "
          "`mlflow server --host 0.0.0.0 --artifacts-destination ...` and export "
          "MLFLOW_TRACKING_URI=http://<host>:<port>", file=sys.stderr)
    return absolute


def sbatch_test_only(script: str) -> None:
    """``sbatch --test-only``: the cluster accepts partition, GRES and time; nothing is queued."""
    res = slurm.run(["sbatch", "--test-only"], "submitting", stdin=script)
    if res.returncode != 0:
        raise SciqaError(f"the cluster refuses this job (sbatch --test-only, exit {res.returncode}): "
                         f"{slurm.one_line(res)}; check the profile against `sinfo -o '%P %G %l'`")


def reraise(what: str, exc: BaseException) -> NoReturn:
    if isinstance(exc, SciqaError):
        raise exc
    raise SciqaError(f"{what} failed: {type(exc).__name__}: {exc}".replace("\n", " ")) from exc


def submit_step(step: str, args: list[str], cfg, check_fn: Callable | None, *, gpu: str, profile: str | None = None,
                time_limit: str | None = None, gpus: int | None = None, wait: bool = False,
                attach: str | None = None) -> int:
    """Validate (profile, GPU, time, ``sbatch --test-only``, the step's check), submit in a run (``attach``: the one
    ``mlflow run`` made); the exit code."""
    prof = slurm.load_profile(profile or None)
    model = str(getattr(cfg, "model", "") or "")
    gpu, count, chosen = place(step, cfg, prof, gpu, check_fn) if gpu == "auto" else (gpu, prof.gpus_for(model), {})
    gpus = gpus or count
    spec = prof.gpu(gpu, gpus)  # unknown type / too many GPUs: lists the accepted values
    log_dir, cmd = job_dir() / "logs", prof.command(args)

    def render(run_id: str, exp_id: str, uri: str) -> str:
        exports = {**slurm.mlflow_exports(run_id, uri, exp_id), LOG_ENV: str(log_dir / "%j.out")}
        return slurm.build_job(prof, gpu, cmd, f"sciqa-{step}", time_limit, log_dir, exports, os.getcwd(), gpus=gpus)

    draft = render(NO_RUN, "0", "http://127.0.0.1:5000")  # time limit, signal margin
    require(step)  # `sciqa doctor`'s checks for this step (torch, WordNet, MiniLM, tracking, cache)
    sbatch_test_only(draft)  # the cluster's word on partition, GRES and time (milliseconds)
    if check_fn is not None:  # the step's own inputs (may import torch: seconds)
        check_fn(cfg)
    uri = shared_tracking_uri(tracking.setup())
    render(NO_RUN, "0", uri)  # a tracking URI with credentials in it is refused here
    run = mlflow.start_run(run_id=attach, run_name=None if attach else f"{step}-{model.split('/')[-1] or step}-slurm")
    try:
        script = render(run.info.run_id, run.info.experiment_id, uri)
        mlflow.set_tags({"sciqa.step": step, **({"sciqa.model": model} if model else {}), **chosen,
                         "sciqa.slurm_gpu": gpu, "sciqa.slurm_gpus": str(gpus), "sciqa.slurm_partition": spec.partition,
                         "sciqa.slurm_profile": prof.name, "sciqa.slurm_status": "PENDING"})
        mlflow.log_text(script, "slurm/job.sbatch")
        job_id = slurm.submit(script, job_dir() / f"{run.info.run_id}.sbatch")
        mlflow.set_tag("sciqa.slurm_job_id", str(job_id))
    except BaseException as exc:
        mlflow.end_run(status="FAILED")
        if not attach:  # nothing was queued: leave no run behind
            mlflow.MlflowClient().delete_run(run.info.run_id)
        reraise("submitting", exc)
    mlflow.end_run(status="SCHEDULED")  # the job re-opens it (RUNNING) through MLFLOW_RUN_ID
    run_id, log = run.info.run_id, log_dir / f"{job_id}.out"
    print(f"{step} run: {run_id}\nslurm job: {job_id} (log {log})")
    if wait:
        return wait_for(run_id, job_id, log)
    print(f"follow it: sciqa slurm status {run_id}")
    return 0


def wait_for(run_id: str, job_id: int, log: Path) -> int:
    """Poll until the job ends; print Slurm state and MLflow status; 0 only if both succeeded."""
    try:
        poll = max(0.2, float(os.environ.get(POLL_ENV, DEFAULT_POLL)))
    except ValueError:
        poll = DEFAULT_POLL
    try:
        state = slurm.wait_for_job(job_id, timeout=float("inf"), poll=poll)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} goes on: sciqa slurm status {run_id}", file=sys.stderr)
        return 130
    client = mlflow.MlflowClient()
    status = client.get_run(run_id).info.status
    if status in ("SCHEDULED", "RUNNING") and state != "COMPLETED":  # the job died without closing the run
        if log.is_file():
            client.log_text(run_id, log.read_text(errors="replace"), "slurm/job.log")
        status = "KILLED" if state in ("CANCELLED", "PREEMPTED", "DEADLINE") else "FAILED"
        client.set_tag(run_id, "sciqa.slurm_status", state)
        client.set_terminated(run_id, status)
    print(f"slurm job {job_id}: {state}\nmlflow run {run_id}: {status}")
    return 0 if state == "COMPLETED" and status == "FINISHED" else 1


def status_lines(run_id: str, by_step: dict[str, Callable] | None = None) -> list[str]:
    """The run's MLflow status and tags, the job's Slurm state; ``by_step``: a step's own lines (a grid's cells)."""
    tracking.connect()  # creates nothing, fails in seconds when a server is down
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - RestException / MlflowException
        raise SciqaError(f"no MLflow run {run_id} at {mlflow.get_tracking_uri()}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    tags = run.data.tags
    if tags.get("sciqa.step") in (by_step or {}):
        return by_step[tags["sciqa.step"]](run_id, run)
    lines = [f"run {run_id}: {run.info.status} (step {tags.get('sciqa.step', '?')}, "
             f"model {tags.get('sciqa.model', '?')})"]
    job = tags.get("sciqa.slurm_job_id")
    if not job:
        return [*lines, "not submitted to Slurm (no sciqa.slurm_job_id tag)"]
    try:
        state, restarts = slurm.job_state(job), slurm.job_info(job).get("Restarts")
    except SciqaError as exc:
        state, restarts = f"unknown ({exc})", None
    metric = run.data.metrics.get("slurm_restart_count")
    restarts = restarts if restarts is not None else str(int(metric)) if metric is not None else "?"
    return [*lines, f"slurm job {job}: {state}, restarts {restarts} (gpu {tags.get('sciqa.slurm_gpu', '?')} "
                    f"x{tags.get('sciqa.slurm_gpus', '1')}, partition {tags.get('sciqa.slurm_partition', '?')}, "
                    f"last reported by the job: {tags.get('sciqa.slurm_status', '?')})"]
