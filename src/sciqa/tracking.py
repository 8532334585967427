"""MLflow run handling shared by every step: where runs go, reuse, resume, attach, end state.

A step's identity is a hash of its entry point and parameters (tag ``sciqa.key``). A finished run
with the same key is reused (no work is redone, as in MLflow's multistep example, but with the
parameters compared as strings so the cache really hits); an unfinished one (crash, ``kill -9``,
a dead node leaves it RUNNING) is resumed; ``MLFLOW_RUN_ID`` (set by ``mlflow run`` and by our
Slurm jobs) attaches to an existing run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sciqa.errors import SciqaError

DEFAULT_URI = "sqlite:///mlflow.db"  # what `mlflow ui` and `mlflow run` default to (MLflow >= 3.6)
DEFAULT_EXPERIMENT = "sciqa"
SECRET = re.compile(r"token|secret|password|passwd|api_key|apikey|credential", re.I)


def setup() -> str:
    """Point MLflow at MLFLOW_TRACKING_URI (unset: a sqlite store in the working directory) and
    fail within seconds, with one line, when a server cannot be reached."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise SciqaError(f"MLflow server at {uri} cannot be reached ({type(exc).__name__}); start it, "
                             "or unset MLFLOW_TRACKING_URI to log to ./mlflow.db") from None
    mlflow.set_tracking_uri(uri)
    if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    return uri


def public(params: dict) -> dict[str, str]:
    """Params as strings, without anything that looks like a secret."""
    return {k: "" if v is None else str(v) for k, v in params.items() if not SECRET.search(k)}


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus the git commit of the checkout it runs from (when it is one), so a
    cached step is redone after the code changes (MLflow's multistep example compares commits too)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sciqa")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+{sha[:12]}" if sha else v


def step_key(step: str, params: dict) -> str:
    """Identity of a step's result: entry point, parameters (as strings) and code version."""
    blob = json.dumps({"step": step, "code": code_version(), **public(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StepRun:
    """The run a step logs to. ``reused``: a finished run with the same key exists, do nothing.
    ``earlier``: runs with the same key, newest first, whose artifacts can seed a resume."""

    run_id: str
    key: str
    reused: bool = False
    earlier: list[str] = field(default_factory=list)


def _same_key_runs(key: str) -> list:
    import mlflow

    exp = mlflow.tracking.fluent._get_experiment_id()
    return mlflow.search_runs([exp], filter_string=f"tags.`sciqa.key` = '{key}'", output_format="list",
                              order_by=["attributes.start_time DESC"])


def _log_params(run_id: str, params: dict[str, str]) -> None:
    """Log params not yet on the run (``mlflow run`` logs its own strings first; MLflow refuses
    a changed value, and the entry point's value is the one the user typed)."""
    import mlflow

    have = mlflow.get_run(run_id).data.params
    new = {k: v for k, v in params.items() if k not in have}
    if new:
        mlflow.log_params(new)


@contextmanager
def step_run(step: str, params: dict, tags: dict[str, str], run_name: str, force: bool = False,
             parent_run_id: str | None = None, settings: dict | None = None) -> Iterator[StepRun]:
    """Start, resume, attach to or reuse the step's run; end it FINISHED, FAILED or KILLED.

    ``params`` define the result (the cache key); ``settings`` say how it was computed (batch size,
    concurrency...): logged as params too, but a change of them resumes instead of starting over."""
    import mlflow

    key = step_key(step, params)
    attach = None if parent_run_id else os.environ.get("MLFLOW_RUN_ID")
    earlier = [r for r in _same_key_runs(key) if r.info.run_id != attach]
    finished = [r for r in earlier if r.info.status == "FINISHED"]
    if finished and not force and not attach:
        yield StepRun(run_id=finished[0].info.run_id, key=key, reused=True)
        return
    unfinished = [r for r in earlier if r.info.status != "FINISHED"]
    if attach:
        run = mlflow.start_run(run_id=attach)
    elif unfinished and not force:
        run = mlflow.start_run(run_id=unfinished[0].info.run_id)
    else:
        run = mlflow.start_run(run_name=run_name, nested=parent_run_id is not None,
                               parent_run_id=parent_run_id)
    mlflow.set_tags({**tags, "sciqa.step": step, "sciqa.key": key, "sciqa.code_version": code_version()})
    _log_params(run.info.run_id, public({**(settings or {}), **params}))
    in_job = bool(os.environ.get("SLURM_JOB_ID"))
    if in_job:
        _slurm_job_start()
    status = "FAILED"
    try:
        yield StepRun(run_id=run.info.run_id, key=key,
                      earlier=[r.info.run_id for r in earlier if r.info.run_id != run.info.run_id])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as exc:
        # a Slurm stop signal ended the step at a safe point (sciqa.submit.StepStopped, training's
        # Preempted): SCHEDULED when the job comes back (requeued), KILLED otherwise
        sig = getattr(exc, "signal", None)
        if sig in ("SIGUSR1", "SIGTERM"):
            requeued = getattr(exc, "requeued", in_job and sig == "SIGUSR1")
            status = "SCHEDULED" if requeued else "KILLED"
        raise
    finally:
        if in_job:
            _slurm_job_end(status, nested=parent_run_id is not None)
        mlflow.end_run(status=status)


_SLURM_STATUS = {"FINISHED": "COMPLETED", "FAILED": "FAILED", "KILLED": "STOPPED", "SCHEDULED": "REQUEUED"}


def _slurm_job_start() -> None:
    """Inside a Slurm job: job id, restart count (a metric: params cannot change on requeue), state."""
    import mlflow

    from sciqa import slurm

    restarts = slurm.restart_count()
    mlflow.set_tags({"sciqa.slurm_job_id": slurm.current_job_id() or "", "sciqa.slurm_status": "RUNNING"})
    mlflow.log_metric("slurm_restart_count", restarts, step=restarts)


def _slurm_job_end(status: str, nested: bool) -> None:
    """Inside a Slurm job: the final state tag and (top-level runs) the job log as slurm/job.log."""
    import mlflow

    try:
        mlflow.set_tag("sciqa.slurm_status", _SLURM_STATUS.get(status, status))
        from sciqa.submit import job_log_path

        log = job_log_path()
        if log is not None and not nested:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "job.log"
                copy.write_bytes(log.read_bytes())
                mlflow.log_artifact(str(copy), "slurm")
    except Exception as exc:  # noqa: BLE001 - never let the log upload hide the step's own outcome
        print(f"sciqa: warning: could not attach the Slurm job log: {exc}", flush=True)


def fetch_artifact(run_ids: list[str], artifact_path: str, dest: Path) -> bool:
    """Copy an artifact from the first run that has it to ``dest`` (to resume from another machine)."""
    import mlflow

    for run_id in run_ids:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path)
        except Exception:  # noqa: BLE001 - "not found" comes as several exception types
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(Path(local).read_bytes())
        return True
    return False
