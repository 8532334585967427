"""Any step as a Slurm job in the same MLflow run: the submit side (the job side is :mod:`sciqa.slurm.job`).

``sciqa <step> ... --slurm-gpu h100`` (see :mod:`sciqa.slurm.cli`): :func:`submit_step` validates everything first (profile, GPU type, time, ``sbatch`` on
PATH, ``sbatch --test-only``, then the step's own config) so a mistake costs one line and
leaves no MLflow run; then it creates the run (or takes ``mlflow run``'s
``MLFLOW_RUN_ID``), writes and logs ``slurm/job.sbatch``, submits, tags the job id and
ends the run SCHEDULED.  The job re-opens that run through ``MLFLOW_RUN_ID``; on a stop signal
it saves and exits 75 (:mod:`sciqa.slurm.job`), and the restarted job resumes in the same run.

Secrets never enter the job file: sbatch's default ``--export=ALL`` hands the submitting
environment (HF_TOKEN, MLFLOW_TRACKING_TOKEN, ...) to the job, or the profile's set-up
lines source a private file on the cluster.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sciqa import slurm
from sciqa.errors import SciqaError
from sciqa.slurm.job import LOG_ENV

JOB_DIR_ENV = "SCIQA_SLURM_DIR"  # job files and logs (default ./sciqa-slurm, on shared disk)
POLL_ENV = "SCIQA_SLURM_POLL_SECONDS"
DEFAULT_POLL = 5.0

def job_dir() -> Path:
    return Path(os.path.abspath(os.environ.get(JOB_DIR_ENV) or "sciqa-slurm"))


def shared_tracking_uri(uri: str) -> str:
    """The URI the job can use: http(s) as it is; a local sqlite/file store made absolute, with
    a warning (only the submitting host can reach it, and parallel jobs lock sqlite)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return uri
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        absolute = uri if path.startswith("/") else "sqlite:///" + os.path.abspath(path)
    elif uri.startswith("file:"):
        absolute = uri
    elif "://" not in uri:
        absolute = os.path.abspath(uri)
    else:
        absolute = uri
    print(f"sciqa: warning: tracking URI {absolute} is a local store: only jobs on this host can "
          "write to it and parallel jobs may hit 'database is locked'; on a real cluster run one "
          "`mlflow server --host 0.0.0.0 --artifacts-destination ...` and export "
          "MLFLOW_TRACKING_URI=http://<host>:<port> (see DESIGN.md, MLflow server on a cluster)",
          file=sys.stderr)
    return absolute


def job_args(command: str, cfg) -> list[str]:
    """``<command> --opt value ...`` for every config field the command takes (train-prefix has no
    LoRA options, train-lora no prefix options): the job runs exactly this config."""
    from sciqa.cli import main
    from sciqa.config import as_param

    accepted = {p.name for p in main.commands[command].params}
    args = [command]
    for f in dataclasses.fields(cfg):
        if f.name in accepted:
            args += ["--" + f.name.replace("_", "-"), as_param(getattr(cfg, f.name))]
    return args


def _test_only(script: str) -> None:
    """``sbatch --test-only``: the cluster accepts partition, GRES and time; nothing is queued."""
    exe = shutil.which("sbatch")
    try:
        res = subprocess.run([exe, "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SciqaError("sbatch --test-only did not answer within 60 s: is slurmctld up?") from None
    if res.returncode != 0:
        msg = " ".join((res.stderr or res.stdout).split()) or "no output"
        raise SciqaError(f"the cluster refuses this job (sbatch --test-only, exit {res.returncode}): {msg}; "
                         "check the profile against `sinfo -o '%P %G %l'`")


@dataclasses.dataclass
class Submitted:
    run_id: str
    job_id: int
    job_file: Path
    log_file: Path


def submit_step(step: str, command: str, cfg, check_fn: Callable | None, *, gpu: str,
                profile: str | None = None, time_limit: str | None = None, gpus: int | None = None,
                wait: bool = False) -> int:
    """Validate, create the run, submit; print run and job id.  Returns the exit code:
    0 once submitted (or, with ``wait``, when the job completed and the run FINISHED), 1 when
    the waited-for job failed."""
    sub = submit(step, command, cfg, check_fn, gpu=gpu, profile=profile, time_limit=time_limit, gpus=gpus)
    print(f"{step} run: {sub.run_id}\nslurm job: {sub.job_id} (log {sub.log_file.parent / (str(sub.job_id) + '.out')})")
    if not wait:
        print(f"follow it: sciqa slurm status {sub.run_id}")
        return 0
    return wait_for(sub)


def submit(step: str, command: str, cfg, check_fn: Callable | None, *, gpu: str, profile: str | None = None,
           time_limit: str | None = None, gpus: int | None = None) -> Submitted:
    """Everything but printing: see :func:`submit_step`."""
    prof = slurm.load_profile(profile or None)
    model = str(getattr(cfg, "model", "") or "")
    chosen: dict[str, str] = {}
    if gpu == "auto":  # the idlest GPU type that holds the step's estimated memory
        from sciqa.slurm.gpu_auto import place

        gpu, _, chosen = place(step, cfg, prof, gpu)
    gpus = gpus or prof.gpus_for(model)
    spec = prof.gpu(gpu, gpus)  # unknown type / too many GPUs: lists the accepted values
    base = job_dir()
    log_dir = base / "logs"
    cmd = slurm.sciqa_command(prof, job_args(command, cfg))
    job_name = f"sciqa-{step}"

    def render(run_id: str, exp_id: str, uri: str) -> str:
        exports = {**slurm.mlflow_exports(run_id, uri, exp_id), LOG_ENV: str(log_dir / "%j.out")}
        return slurm.build_job(prof, gpu, cmd, job_name, time_limit, log_dir, exports, os.getcwd(), gpus=gpus)

    draft = render("0" * 32, "0", "http://127.0.0.1:5000")  # time limit, signal margin
    from sciqa.doctor import require

    require(step)  # `sciqa doctor`'s checks for this step (torch, WordNet, MiniLM, tracking, cache)
    if shutil.which("sbatch") is None:
        raise SciqaError("sbatch not found on PATH: submitting needs the Slurm client tools (run on the "
                         "cluster's login node, or drop --slurm-gpu to run here)")
    _test_only(draft)  # the cluster's word on partition, GRES and time (milliseconds)
    if check_fn is not None:  # the step's own inputs (may import torch: seconds)
        check_fn(cfg)

    from sciqa.tracking import runs as tracking

    uri = shared_tracking_uri(tracking.setup())
    import mlflow

    render("0" * 32, "0", uri)  # a tracking URI with credentials in it is refused here

    attach = tracking.take_outer_run()  # `mlflow run` made the run: use it, make no second one
    short = model.split("/")[-1] or step
    run = mlflow.start_run(run_id=attach) if attach else mlflow.start_run(run_name=f"{step}-{short}-slurm")
    run_id = run.info.run_id
    try:
        script = render(run_id, run.info.experiment_id, uri)
        mlflow.set_tags({"sciqa.step": step, **({"sciqa.model": model} if model else {}), **chosen,
                         "sciqa.slurm_gpu": gpu, "sciqa.slurm_gpus": str(gpus),
                         "sciqa.slurm_partition": spec.partition, "sciqa.slurm_profile": prof.name,
                         "sciqa.slurm_status": "PENDING"})
        job_file = base / f"{run_id}.sbatch"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        job_file.write_text(script)
        _log_as(mlflow.MlflowClient(), run_id, job_file, "slurm", "job.sbatch")
        job_id = slurm.submit(script, job_file)
        mlflow.set_tag("sciqa.slurm_job_id", str(job_id))
    except BaseException as exc:
        mlflow.end_run(status="FAILED")
        if not attach:  # nothing was queued: leave no run behind
            mlflow.MlflowClient().delete_run(run_id)
        if isinstance(exc, SciqaError):
            raise
        raise SciqaError(f"submitting failed: {type(exc).__name__}: {exc}".replace("\n", " ")) from exc
    mlflow.end_run(status="SCHEDULED")  # the job re-opens it (RUNNING) through MLFLOW_RUN_ID
    return Submitted(run_id=run_id, job_id=job_id, job_file=job_file, log_file=log_dir / "%j.out")


def _log_as(client, run_id: str, path: Path, artifact_dir: str, name: str) -> None:
    """Log ``path`` as ``artifact_dir/name``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.write_bytes(path.read_bytes())
        client.log_artifact(run_id, str(target), artifact_dir)


def poll_seconds() -> float:
    try:
        return max(0.2, float(os.environ.get(POLL_ENV, DEFAULT_POLL)))
    except ValueError:
        return DEFAULT_POLL


def wait_for(sub: Submitted) -> int:
    """Poll until the job ends; print Slurm state and MLflow status; 0 only if both succeeded."""
    import mlflow

    try:
        state = slurm.wait_for_job(sub.job_id, timeout=float("inf"), poll=poll_seconds())
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {sub.job_id} goes on: sciqa slurm status {sub.run_id}", file=sys.stderr)
        return 130
    client = mlflow.MlflowClient()
    run = client.get_run(sub.run_id)
    status = run.info.status
    if status in ("SCHEDULED", "RUNNING") and state != "COMPLETED":
        # the job died before (or without) closing the run: record it and keep its log
        log = Path(str(sub.log_file).replace("%j", str(sub.job_id)))
        if log.is_file():
            _log_as(client, sub.run_id, log, "slurm", "job.log")
        status = "KILLED" if state in ("CANCELLED", "PREEMPTED", "DEADLINE") else "FAILED"
        client.set_tag(sub.run_id, "sciqa.slurm_status", state)
        client.set_terminated(sub.run_id, status)
    print(f"slurm job {sub.job_id}: {state}\nmlflow run {sub.run_id}: {status}")
    return 0 if state == "COMPLETED" and status == "FINISHED" else 1


def status_lines(run_id: str) -> list[str]:
    """``sciqa slurm status``: the run's MLflow status and tags, the job's Slurm state."""
    import mlflow

    from sciqa.tracking import runs as tracking

    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.DEFAULT_URI
    if uri.startswith(("http://", "https://")):  # fail in seconds, not after MLflow's retries
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise SciqaError(f"MLflow server at {uri} cannot be reached ({type(exc).__name__})") from None
    mlflow.set_tracking_uri(uri)  # tracking.setup() would create an experiment: not for a read
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - RestException / MlflowException
        raise SciqaError(f"no MLflow run {run_id} at {mlflow.get_tracking_uri()}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    tags, metrics = run.data.tags, run.data.metrics
    if tags.get("sciqa.step") == "grid":
        from sciqa.slurm.array import status_lines as grid_status

        return grid_status(run_id, run)
    job = tags.get("sciqa.slurm_job_id")
    lines = [f"run {run_id}: {run.info.status} (step {tags.get('sciqa.step', '?')}, "
             f"model {tags.get('sciqa.model', '?')})"]
    if not job:
        lines.append("not submitted to Slurm (no sciqa.slurm_job_id tag)")
        return lines
    try:
        state = slurm.job_state(job)
        restarts = slurm.job_info(job).get("Restarts")
    except SciqaError as exc:
        state, restarts = f"unknown ({exc})", None
    restart_metric = metrics.get("slurm_restart_count")
    restarts = restarts if restarts is not None else (
        str(int(restart_metric)) if restart_metric is not None else "?")
    lines.append(f"slurm job {job}: {state}, restarts {restarts} "
                 f"(gpu {tags.get('sciqa.slurm_gpu', '?')} x{tags.get('sciqa.slurm_gpus', '1')}, "
                 f"partition {tags.get('sciqa.slurm_partition', '?')}, "
                 f"last reported by the job: {tags.get('sciqa.slurm_status', '?')})")
    return lines

