"""The MLflow run of a step: its key; reuse (finished), resume (unfinished), attach (``mlflow run``'s) or create."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunTag

from sciqa import slurm
from sciqa.config import params_of, redact
from sciqa.errors import SciqaError
from sciqa.files import source_digest
from sciqa.slurm.job import Stopped, in_slurm_job, job_log_path
from sciqa.tracking import runlock
from sciqa.tracking.store import check_uri, prepare, store_exists, store_identity, tracking_uri, wait_for_locks

DEFAULT_EXPERIMENT = "sciqa"
_EXPERIMENT: dict[str, str] = {}
_SLURM_STATUS = {"FINISHED": "COMPLETED", "FAILED": "FAILED", "KILLED": "STOPPED", "SCHEDULED": "REQUEUED"}


def connect() -> str:
    """Point MLflow at the store once it answers; creates nothing (no db, no experiment)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri()
    check_uri(uri)
    wait_for_locks(uri)  # sqlite: wait for another writer's lock instead of "database is locked"
    mlflow.set_tracking_uri(uri)
    return uri


def setup() -> str:
    """Connect and make the experiment current (creating store and experiment if needed)."""
    uri = connect()
    prepare(uri)  # a fresh sqlite store is created and migrated under its file lock (concurrent jobs)
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    name = None if exp_id else os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    _EXPERIMENT["id"] = mlflow.set_experiment(name, experiment_id=exp_id).experiment_id
    return uri


def experiment_id() -> str:
    return _EXPERIMENT.get("id") or os.environ.get("MLFLOW_EXPERIMENT_ID") or setup() and _EXPERIMENT["id"]


def get_run(run_id: str, what: str = "run"):
    """A run by id, or one line saying it does not exist in this store."""
    if not store_exists():
        raise SciqaError(f"{what} '{run_id}' does not exist: the store {tracking_uri()} has no runs yet")
    try:
        return MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown ids come as several exception types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SciqaError(f"{what} '{run_id}' cannot be read from {redact(tracking_uri())}: {first}") from None


def error_reason(exc: BaseException) -> str:
    """Why a run failed (its ``sciqa.error`` tag), redacted: a request error names the URL, credentials included."""
    text = str(exc) if isinstance(exc, SciqaError) else \
        f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return redact(text)[:5000]


def fail_attached(run_id: str | None, message: str) -> None:
    """Bad input under ``mlflow run``: its run FAILED with the reason (a keyed run is its step's to end, not ours)."""
    if not run_id or not store_exists():
        return
    try:
        client = MlflowClient(tracking_uri())
        if "sciqa.key" in client.get_run(run_id).data.tags:
            return
        client.set_tag(run_id, "sciqa.error", redact(message)[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store itself may be what is wrong
        pass


def discard_run(run_id: str, note: str, reused: str = "") -> None:
    """End a run made for this invocation with nothing new to hold: a FINISHED pointer nested under ``reused``."""
    client = MlflowClient()
    tags = {"sciqa.reused_run": reused or note, "mlflow.note.content": f"sciqa: {note}", "mlflow.parentRunId": reused}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items() if v])
    client.set_terminated(run_id, "FINISHED")
    print(f"sciqa: {note}; run {run_id} only records that" + (" (nested under it)" if reused else ""))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + source digest: part of every key."""
    try:
        v = version("sciqa")
    except PackageNotFoundError:
        v = "unknown"
    return f"{v}+src.{source_digest()}"


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def step_key(step: str, params: dict) -> str:
    """Identity of a step's result: entry point, parameters (as strings, digests included), code."""
    blob = json.dumps({"step": step, "code": code_version(), **params_of(params)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StepRun:
    """The run a step logs to; ``reused``: a finished one, nothing to do; ``adopted``: unfinished runs it continues."""

    run_id: str
    key: str
    reused: bool = False
    adopted: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[str]:
        return [self.run_id, *self.adopted]

    def state_dir(self, workdir: Path) -> Path:
        """The local folder of this run's resume state; another run's state there is wiped (``--force``)."""
        folder = Path(workdir) / self.key
        owner = folder / "run_id"
        if owner.exists() and owner.read_text().strip() not in self.seeds:
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        owner.write_text(self.run_id)
        return folder


def attached_run(attach: str, key: str = ""):
    """The run ``MLFLOW_RUN_ID`` names if fresh (``mlflow run``'s) or this very step's (``key``); else one line."""
    attached = get_run(attach, "MLFLOW_RUN_ID: run")
    if attached.data.tags.get("sciqa.key", key) != key:
        raise SciqaError(f"MLFLOW_RUN_ID names run {attach}, made with other parameters, data or code; "
                         "unset MLFLOW_RUN_ID (or run with the same parameters)")
    return attached


def _attach(client, attach: str, key: str, finished: list, unfinished: list, force: bool) -> StepRun:
    """The run ``mlflow run`` made (fresh, or of this very step): it holds the step, unless a finished one exists."""
    attached = attached_run(attach, key)
    if attached.data.tags.get("sciqa.key") == key or not (finished or unfinished):
        return StepRun(attach, key, reused=attached.info.status == "FINISHED" and not force)
    if finished:
        discard_run(attach, f"reusing finished run {finished[0].info.run_id}", finished[0].info.run_id)
        return StepRun(finished[0].info.run_id, key, reused=True)
    for r in unfinished:  # the fresh run continues their work; they are marked superseded
        runlock.wait_for_owner(client, r.info.run_id)
        client.set_tag(r.info.run_id, "sciqa.superseded_by", attach)
        client.delete_tag(r.info.run_id, "sciqa.key")
        client.set_terminated(r.info.run_id, "KILLED")
        print(f"sciqa: run {attach} continues the unfinished run {r.info.run_id} (now marked superseded)")
    return StepRun(attach, key, adopted=[r.info.run_id for r in unfinished])


def _open(client, key: str, run_name: str, attach: str | None, parent_run_id: str | None, force: bool,
          reuse: bool, note: Callable[[str], None]) -> StepRun:
    """Decide: attach (``mlflow run``/Slurm), reuse a finished run, resume an unfinished one, or create."""
    earlier = [r for r in client.search_runs([experiment_id()], filter_string=f"tags.`sciqa.key` = '{key}'",
                                             order_by=["attributes.start_time DESC"]) if r.info.run_id != attach]
    finished = [r for r in earlier if r.info.status == "FINISHED"] if reuse and not force else []
    unfinished = [] if force else [r for r in earlier if r.info.status != "FINISHED"]
    if attach:
        return _attach(client, attach, key, finished, unfinished, force)
    if finished:
        return StepRun(finished[0].info.run_id, key, reused=True)
    if unfinished:
        run_id = unfinished[0].info.run_id
        note(run_id)
        runlock.wait_for_owner(client, run_id)
        if parent_run_id:
            client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
        return StepRun(run_id, key)
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return StepRun(client.create_run(experiment_id(), tags=tags, run_name=run_name).info.run_id, key)


def _start(client, run: StepRun, step: str, tags: dict[str, str], run_name: str, logged: dict[str, str]) -> None:
    """Make the run active with its tags and the params it lacks (``mlflow run`` logged its own strings first)."""
    metrics_on = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() not in ("false", "0", "no")
    mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None, log_system_metrics=metrics_on)
    mlflow.set_tags({**tags, "sciqa.step": step, "sciqa.key": run.key, "sciqa.code_version": code_version(),
                     "sciqa.git_commit": git_commit(), "mlflow.runName": run_name})
    have = client.get_run(run.run_id).data.params
    mlflow.log_params({k: v for k, v in logged.items() if k not in have})  # MLflow refuses a changed value
    if in_slurm_job():  # restarts as a metric: params cannot change on requeue
        mlflow.set_tags({"sciqa.slurm_job_id": slurm.current_job_id() or "", "sciqa.slurm_status": "RUNNING"})
        mlflow.log_metric("slurm_restart_count", slurm.restart_count(), step=slurm.restart_count())


@contextmanager
def step_run(step: str, params: dict, tags: dict[str, str], run_name: str, force: bool = False,
             parent_run_id: str | None = None, settings: dict | None = None, reuse: bool = True,
             attach: str | None = None) -> Iterator[StepRun]:
    """The step's run (``attach``, or nested under ``parent_run_id``); ``settings``: logged, not keyed;
    ``reuse=False``: resume only."""
    client = MlflowClient()
    key = step_key(step, params)
    logged = params_of({**(settings or {}), **params})
    with runlock.key_lock(f"{store_identity()}|{experiment_id()}", key) as note:
        run = _open(client, key, run_name, attach, parent_run_id, force, reuse, note)
        if run.reused:
            yield run
            return
        note(run.run_id)
        _start(client, run, step, tags, run_name, logged)
        stop_heartbeat = runlock.heartbeat(client, run.run_id)
        status, started = "FAILED", time.monotonic()
        try:
            yield run
            status = "FINISHED"
        except KeyboardInterrupt as exc:  # Ctrl-C: the CLI says which run stopped (innermost first), exit 130
            status = "KILLED"
            exc.sciqa_runs = [*getattr(exc, "sciqa_runs", []), (step, run.run_id)]  # type: ignore[attr-defined]
            raise
        except Stopped as exc:  # a stop signal at a safe point: SCHEDULED when the job comes back, else KILLED
            status = "SCHEDULED" if exc.requeued else "KILLED"
            raise
        except Exception as exc:
            client.set_tag(run.run_id, "sciqa.error", error_reason(exc))
            raise
        finally:
            stop_heartbeat()
            _end(status, time.monotonic() - started, nested=parent_run_id is not None)
            mlflow.end_run(status=status)


def _end(status: str, seconds: float, nested: bool) -> None:
    """What the step cost (``wall_seconds`` summed over sessions; ``gpu_hours`` in a job), the job's state and log."""
    try:
        seconds += mlflow.get_run(mlflow.active_run().info.run_id).data.metrics.get("wall_seconds", 0.0)  # resumes
        gpus = slurm.allocated_gpus() if in_slurm_job() else 0
        mlflow.log_metrics({"wall_seconds": seconds, **({"gpu_hours": seconds / 3600 * gpus} if gpus else {})})
        if in_slurm_job():
            mlflow.set_tag("sciqa.slurm_status", _SLURM_STATUS.get(status, status))
            log = job_log_path()
            if log is not None and not nested:
                mlflow.log_text(log.read_text(errors="replace"), "slurm/job.log")
    except Exception as exc:  # noqa: BLE001 - never let the bookkeeping hide the step's own outcome
        print(f"sciqa: warning: could not log the step's cost or Slurm job log: {exc}", file=sys.stderr, flush=True)


@contextmanager
def phase(name: str, run_id: str | None = None) -> Iterator[None]:
    """Time one phase of a step as ``time_<name>_seconds`` of the active run (or ``run_id``)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        if run_id:
            MlflowClient().log_metric(run_id, f"time_{name}_seconds", seconds)
        elif mlflow.active_run() is not None:
            mlflow.log_metric(f"time_{name}_seconds", seconds)
