"""MLflow run handling shared by every step: where runs go, reuse, resume, attach, end state.

A step's identity is a hash of its entry point, the parameters that define its result (with
content digests of what it read: problems, teacher rows, adapter files) and a digest of sciqa's
own source (tag ``sciqa.key``). A finished run with the same key is reused; an unfinished one
(crash, ``kill -9``, a dead node leaves it RUNNING) is resumed; ``--force`` starts a new one.

``MLFLOW_RUN_ID`` (set by ``mlflow run`` and by our Slurm jobs) names the run of the *outer*
step of this process only: the CLI takes it out of the environment at start (:func:`claim_outer_run`),
so a step run inside another (a KD training's teacher benchmark, ``main``'s children) never
attaches to it (mlflow#15713). When ``mlflow run`` made a fresh run and a finished identical one
exists, the finished one is reused and the fresh one only records that (nested under it); when an unfinished identical one
exists, the fresh run continues its work (checkpoints, CSV) and the old one is marked superseded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from sciqa.config import params_of, redact
from sciqa.errors import SciqaError
from sciqa.files import source_digest
from sciqa.slurm.job import Stopped, job_log_path

DEFAULT_URI = "sqlite:///mlflow.db"  # what `mlflow ui` and `mlflow run` default to (MLflow >= 3.6)
DEFAULT_EXPERIMENT = "sciqa"
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_OUTER: dict[str, str | bool | None] = {"id": None, "used": False}
_EXPERIMENT: dict[str, str] = {}


# ---------------------------------------------------------------- where runs go

def claim_outer_run() -> str | None:
    """Take ``MLFLOW_RUN_ID`` out of the environment: only the outer step of this process uses it."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None) or _OUTER["id"]
    _OUTER.update(id=run_id or None)
    return _OUTER["id"]  # type: ignore[return-value]


def outer_run_id() -> str | None:
    """The claimed run while no step has attached to it yet (the parent of an inner step)."""
    return None if _OUTER["used"] else _OUTER["id"]  # type: ignore[return-value]


def take_outer_run() -> str | None:
    """The claimed run, for the one step that attaches to it (later calls get None)."""
    run_id = outer_run_id()
    if run_id:
        _OUTER["used"] = True
    return run_id


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_uri(uri: str) -> None:
    """A store sciqa can use, or one line saying what to use instead."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https", "databricks"):
        return
    if scheme == "sqlite":
        from sciqa.tracking.store import sqlite_path, unwritable_reason

        path = sqlite_path(uri)
        folder = path.parent if path is not None else None
        if folder is not None and not folder.is_dir():  # MLflow would create every missing folder on the way
            raise SciqaError(f"tracking store {uri}: folder '{folder}' does not exist; create it, or set "
                             "MLFLOW_TRACKING_URI to a store in an existing folder")
        why = unwritable_reason(folder) if folder is not None else None
        if why:
            raise SciqaError(f"tracking store {uri}: folder '{folder}' is not writable ({why}); run where you can "
                             "write or set MLFLOW_TRACKING_URI")
        return
    if scheme in _SQL_SCHEMES:
        import sqlalchemy

        try:
            sqlalchemy.create_engine(uri)
        except ModuleNotFoundError as exc:
            raise SciqaError(f"tracking store {redact(uri)} needs the database driver '{exc.name}': "
                             f"pip install it, or use sqlite:///mlflow.db") from None
        except Exception as exc:  # noqa: BLE001 - malformed URLs come as several types
            raise SciqaError(f"tracking store {redact(uri)} is not a valid database URL ({exc})") from None
        return
    if scheme in ("", "file"):
        raise SciqaError(f"tracking URI '{redact(uri)}' is a file store, which MLflow has deprecated; use "
                         "sqlite:///mlflow.db (`mlflow migrate-filestore` converts old runs) or an http server")
    raise SciqaError(f"tracking URI '{redact(uri)}': unknown scheme '{scheme}'; accepted: sqlite:///FILE, "
                     "http(s)://HOST:PORT, postgresql://…, mysql://…")


def connect() -> str:
    """Point MLflow at the store and make sure it answers; creates nothing (no db, no experiment)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = tracking_uri()
    check_uri(uri)
    from sciqa.tracking.store import wait_for_locks

    wait_for_locks(uri)  # sqlite: wait for another writer's lock instead of "database is locked"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise SciqaError(f"MLflow server at {redact(uri)} cannot be reached ({type(exc).__name__}); start it, "
                             "or unset MLFLOW_TRACKING_URI to log to ./mlflow.db") from None
    mlflow.set_tracking_uri(uri)
    return uri


def store_identity() -> str:
    """The store as one string for every process using it (a relative sqlite path made absolute)."""
    uri = tracking_uri()
    return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else uri


def store_exists() -> bool:
    """False for a sqlite file not created yet: reading it would create it."""
    uri = tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def setup() -> str:
    """Connect and make the experiment current (creating store and experiment if needed)."""
    import mlflow

    uri = connect()
    from sciqa.tracking.store import prepare

    prepare(uri)  # a fresh sqlite store is created and migrated under its file lock (concurrent jobs)
    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not exp_id:
        exp_id = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)).experiment_id
    else:
        mlflow.set_experiment(experiment_id=exp_id)
    _EXPERIMENT["id"] = exp_id
    return uri


def experiment_id() -> str:
    return _EXPERIMENT.get("id") or os.environ.get("MLFLOW_EXPERIMENT_ID") or setup() and _EXPERIMENT["id"]


def get_run(run_id: str, what: str = "run"):
    """A run by id, or one line saying it does not exist in this store."""
    from mlflow import MlflowClient

    if not store_exists():
        raise SciqaError(f"{what} '{run_id}' does not exist: the store {tracking_uri()} has no runs yet")
    try:
        return MlflowClient().get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown ids come as several exception types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SciqaError(f"{what} '{run_id}' cannot be read from {redact(tracking_uri())}: {first}") from None


def error_reason(exc: BaseException) -> str:
    """Why a run failed, as its ``sciqa.error`` tag: a user error's line, else the exception's type
    and first line; redacted (a request error names the URL, credentials included)."""
    text = str(exc) if isinstance(exc, SciqaError) else \
        f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return redact(text)[:5000]


def fail_outer(message: str) -> None:
    """Bad input under ``mlflow run``: mark the run it made FAILED with the reason as a tag."""
    run_id = outer_run_id()
    if not run_id or not store_exists():
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri())
        client.set_tag(run_id, "sciqa.error", redact(message)[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store itself may be what is wrong
        pass


def release_outer(note: str, reused: str = "") -> None:
    """The outer run was not needed (the result lives in ``reused``): see :func:`discard_run`."""
    run_id = take_outer_run()
    if run_id:
        get_run(run_id, "MLFLOW_RUN_ID: run")
        discard_run(run_id, note, reused)


def discard_run(run_id: str, note: str, reused: str = "") -> None:
    """End a run made for this invocation (by ``mlflow run`` or a Slurm submission) that has nothing
    new to hold: it stays as a FINISHED pointer, nested under the reused run so the UI folds it away
    (MLflow cannot delete it: ``mlflow run`` ends the run itself after the command exits)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {"sciqa.reused_run": reused or note, "mlflow.note.content": f"sciqa: {note}"}
    if reused:
        tags["mlflow.parentRunId"] = reused
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, "FINISHED")
    print(f"sciqa: {note}; run {run_id} only records that" + (" (nested under it)" if reused else ""))


# ---------------------------------------------------------------- identity

@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version + source digest (the key), and the git commit where there is one (a tag)."""
    from importlib.metadata import PackageNotFoundError, version

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


# ---------------------------------------------------------------- the step's run

@dataclass
class StepRun:
    """The run a step logs to. ``reused``: a finished run with the same key exists, do nothing.
    ``adopted``: unfinished runs of the same key whose state (CSV, checkpoints) this run continues."""

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


def _same_key_runs(client, key: str) -> list:
    return client.search_runs([experiment_id()], filter_string=f"tags.`sciqa.key` = '{key}'",
                              order_by=["attributes.start_time DESC"])


def _agrees(typed: str, ours: str) -> bool:
    """A value ``mlflow run`` logged as typed agrees with ours (shell quoting, types, aliases, and
    "" = a default sciqa derives, such as score's setting from the adapter's training run)."""
    try:
        words = shlex.split(typed)  # mlflow run logs string parameters shell-quoted: '' for empty
        typed = words[0] if len(words) == 1 else "" if not words else typed
    except ValueError:
        pass
    if typed == ours or typed == "":
        return True
    low = {typed.lower(), ours.lower()}
    if low <= {"true", "1"} or low <= {"false", "0"}:
        return True
    try:
        return float(typed) == float(ours)
    except ValueError:
        from sciqa.data.problems import SPLITS

        return SPLITS.get(typed) == ours


def _check_attach(run, key: str, logged: dict[str, str]) -> None:
    """``MLFLOW_RUN_ID`` must name a run of this very step, not one made with other parameters."""
    have = run.data.params
    differ = [k for k, v in logged.items() if k in have and not _agrees(have[k], v)]
    if differ or run.data.tags.get("sciqa.key", key) != key:
        what = ", ".join(f"{k}={have[k]!r} there, {logged[k]!r} here" for k in differ[:3]) or \
            "other parameters, data or code"
        raise SciqaError(f"MLFLOW_RUN_ID names run {run.info.run_id}, made with {what}; unset MLFLOW_RUN_ID "
                         "(or run with the same parameters)")


def _supersede(client, old: str, by: str) -> None:
    client.set_tag(old, "sciqa.superseded_by", by)
    client.delete_tag(old, "sciqa.key")
    client.set_terminated(old, "KILLED")
    print(f"sciqa: run {by} continues the unfinished run {old} (now marked superseded)")


def _open(client, key: str, run_name: str, attach: str | None, parent_run_id: str | None, force: bool,
          reuse: bool, holder) -> StepRun:
    """Decide: attach (``mlflow run``/Slurm), reuse a finished run, resume an unfinished one, or create."""
    from sciqa.tracking import runlock

    earlier = [r for r in _same_key_runs(client, key) if r.info.run_id != attach]
    finished = [r for r in earlier if r.info.status == "FINISHED"] if reuse and not force else []
    unfinished = [] if force else [r for r in earlier if r.info.status != "FINISHED"]
    if attach:
        attached = client.get_run(attach)
        if attached.data.tags.get("sciqa.key") == key or not (finished or unfinished):
            return StepRun(attach, key, reused=attached.info.status == "FINISHED" and not force)
        if finished:
            discard_run(attach, f"reusing finished run {finished[0].info.run_id}", finished[0].info.run_id)
            return StepRun(finished[0].info.run_id, key, reused=True)
        for r in unfinished:
            runlock.wait_for_owner(client, r.info.run_id)
            _supersede(client, r.info.run_id, attach)
        return StepRun(attach, key, adopted=[r.info.run_id for r in unfinished])
    if finished:
        return StepRun(finished[0].info.run_id, key, reused=True)
    if unfinished:
        run_id = unfinished[0].info.run_id
        holder.note(run_id)
        runlock.wait_for_owner(client, run_id)
        if parent_run_id:
            client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
        return StepRun(run_id, key)
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    return StepRun(client.create_run(experiment_id(), tags=tags, run_name=run_name).info.run_id, key)


@contextmanager
def step_run(step: str, params: dict, tags: dict[str, str], run_name: str, force: bool = False,
             parent_run_id: str | None = None, settings: dict | None = None,
             reuse: bool = True) -> Iterator[StepRun]:
    """Start, resume, attach to or reuse the step's run; end it FINISHED, FAILED or KILLED.

    ``params`` define the result (the cache key); ``settings`` say how it was computed (batch size,
    concurrency...): logged as params too, but a change of them resumes instead of starting over.
    ``reuse=False`` (``main``): never reuse a finished run, but still resume an unfinished one."""
    import mlflow
    from mlflow import MlflowClient

    from sciqa.tracking import runlock

    client = MlflowClient()
    key = step_key(step, params)
    logged = params_of({**(settings or {}), **params})
    with runlock.key_lock(f"{store_identity()}|{experiment_id()}", key) as holder:
        attach = take_outer_run() if parent_run_id is None else None
        if attach:
            _check_attach(get_run(attach, "MLFLOW_RUN_ID: run"), key, logged)
        run = _open(client, key, run_name, attach, parent_run_id, force, reuse, holder)
        if run.reused:
            yield run
            return
        holder.note(run.run_id)
        mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None,
                         log_system_metrics=system_metrics_on())
        mlflow.set_tags({**tags, "sciqa.step": step, "sciqa.key": key, "sciqa.code_version": code_version(),
                         "sciqa.git_commit": git_commit(), "mlflow.runName": run_name})
        _log_params(client, run.run_id, logged)
        heartbeat = runlock.Heartbeat(client, run.run_id)
        in_job = bool(os.environ.get("SLURM_JOB_ID"))
        if in_job:
            _slurm_job_start()
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
            heartbeat.stop()
            _log_cost(time.monotonic() - started)
            if in_job:
                _slurm_job_end(status, nested=parent_run_id is not None)
            mlflow.end_run(status=status)


def log_problems(problems: list, dataset: str, digest_: str, context: str, setting: str = "",
                 source: str = "") -> None:
    """What the step read, as an MLflow dataset input of the active run (the UI's Datasets column):
    the problems actually used, named ``<dataset>/<split>``, with sciqa's content digest, which is
    also part of the step's cache key; ``context`` is train, validation, eval or teacher (whose
    ``source`` is the teacher run's outputs or CSV)."""
    import warnings

    import mlflow
    import pandas as pd
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    from sciqa.data.sources import SAMPLE_DIR

    split = problems[0].split
    frame = pd.DataFrame({"id": [p.id for p in problems], "question": [p.question for p in problems],
                          "choices": [" | ".join(p.choices) for p in problems],
                          "answer": [str(p.answer) for p in problems],
                          "has_image": [str(p.has_image).lower() for p in problems]})
    folder = Path(dataset).expanduser()
    source = source or (str(SAMPLE_DIR) if dataset == "sample" else str(folder.resolve()) if folder.is_dir() else
                        HuggingFaceDatasetSource(path=dataset, split=split))
    with warnings.catch_warnings():  # MLflow warns when it infers a source's kind from a path
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(frame, source=source, name=f"{Path(dataset).name or dataset}/{split}",
                                     digest=digest_)
    for attempt in range(3):  # MLflow looks the dataset up, then inserts it: jobs logging it at once collide
        try:
            mlflow.log_input(ds, context=context, tags={"setting": setting} if setting else None)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == 2 or not any(s in str(exc) for s in ("UNIQUE constraint", "duplicate key")):
                raise
            time.sleep(0.5 * (attempt + 1))  # the other job's row exists now: the retry only links it


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    """Log params not yet on the run (``mlflow run`` logs its own strings first; MLflow refuses
    a changed value, and the entry point's value is the one the user typed)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in have]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i: i + 100])


@contextmanager
def phase(name: str, run_id: str | None = None) -> Iterator[None]:
    """Time one phase of a step (load, generate, train, evaluate, log) as ``time_<name>_seconds``
    of the active run (or ``run_id``): where a step's wall time goes, per run and in ``main``'s table."""
    import mlflow

    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        if run_id:
            mlflow.MlflowClient().log_metric(run_id, f"time_{name}_seconds", seconds)
        elif mlflow.active_run() is not None:
            mlflow.log_metric(f"time_{name}_seconds", seconds)


def system_metrics_on() -> bool:
    """MLflow's system metrics (CPU, memory; GPU with pynvml) on every step run, unless switched
    off with ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``."""
    return os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() not in ("false", "0", "no")


def _log_cost(seconds: float) -> None:
    """What the step cost: ``wall_seconds`` (summed over its sessions: a resumed run adds to it), and
    in a Slurm job ``gpu_hours`` (that wall time × the job's GPUs; the GPU type is the run's tag
    ``sciqa.slurm_gpu``)."""
    import mlflow

    from sciqa.slurm import allocated_gpus

    try:
        run_id = mlflow.active_run().info.run_id
        seconds += mlflow.MlflowClient().get_run(run_id).data.metrics.get("wall_seconds", 0.0)  # earlier sessions
        metrics = {"wall_seconds": seconds}
        gpus = allocated_gpus() if os.environ.get("SLURM_JOB_ID") else 0
        if gpus:
            metrics["gpu_hours"] = seconds / 3600 * gpus
        mlflow.log_metrics(metrics)
    except Exception as exc:  # noqa: BLE001 - never let the bookkeeping hide the step's own outcome
        print(f"sciqa: warning: could not log the step's cost: {exc}", file=sys.stderr, flush=True)


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
        log = job_log_path()
        if log is not None and not nested:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "job.log"
                copy.write_bytes(log.read_bytes())
                mlflow.log_artifact(str(copy), "slurm")
    except Exception as exc:  # noqa: BLE001 - never let the log upload hide the step's own outcome
        print(f"sciqa: warning: could not attach the Slurm job log: {exc}", file=sys.stderr, flush=True)


def fetch_artifact(run_ids: list[str], artifact_path: str, dest: Path) -> bool:
    """Copy an artifact (file or folder) from the first run that has it to ``dest``, atomically:
    downloaded into a temp folder beside ``dest`` and moved into place, so a failed download
    never leaves half a folder that later looks complete."""
    import mlflow

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for run_id in run_ids:
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
            except Exception:  # noqa: BLE001 - "not found" comes as several exception types
                continue
            if dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            os.replace(local, dest)
            return True
    return False
