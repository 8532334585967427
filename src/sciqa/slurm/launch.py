"""Any step as a Slurm job in a run ended SCHEDULED that the job re-opens (``MLFLOW_RUN_ID``), validated first: a
mistake leaves no run. A grid: a job array per (GPU type, count), task i runs cell i in its child run, then collect."""
import dataclasses
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import NoReturn

import click
import mlflow
from mlflow.entities import Param, RunTag

from sciqa import slurm
from sciqa.config import as_param, cli_name
from sciqa.doctor import require
from sciqa.errors import SciqaError
from sciqa.slurm.job import LOG_ENV
from sciqa.slurm.memory import idle_gpus, place
from sciqa.tracking import runs as tracking
from sciqa.tracking.store import sqlite_path

NO_RUN = "0" * 32  # a run id for the drafts that are checked before the run exists


def job_dir() -> Path:  # job files and logs: $SCIQA_SLURM_DIR, else ./sciqa-slurm (on shared disk)
    return Path(os.path.abspath(os.environ.get("SCIQA_SLURM_DIR") or "sciqa-slurm"))


def shared_tracking_uri(uri: str) -> str:
    """The URI a job can use: a local sqlite store made absolute, with a warning (only this host reaches it)."""
    if (path := sqlite_path(uri)) is None:
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


def job_args(cmd: click.Command, cfg) -> list[str]:
    """``<command> --opt value ...`` for every config field the command takes: the job runs exactly this config."""
    accepted = {p.name for p in cmd.params}
    return [cmd.name, *(a for f in dataclasses.fields(cfg) if f.name in accepted
                        for a in (cli_name(f.name), as_param(getattr(cfg, f.name))))]


def submit_step(step: str, args: list[str], cfg, check_fn: Callable | None, *, gpu: str, profile: str | None = None,
                time_limit: str | None = None, gpus: int | None = None, wait: bool = False,
                attach: str | None = None) -> int:
    """Validate (profile, GPU, time, ``sbatch --test-only``, the step's check), then submit in a run; the exit code."""
    prof = slurm.load_profile(profile or None)
    model = str(getattr(cfg, "model", "") or "")
    gpu, count, chosen = place(step, cfg, prof, gpu, check_fn) if gpu == "auto" else (gpu, prof.gpus_for(model), {})
    gpus = gpus or count
    partition = prof.gpu(gpu, gpus).name  # unknown type / too many GPUs: lists the accepted values
    log_dir, cmd = job_dir() / "logs", prof.command(args)

    def render(run_id: str, exp_id: str, uri: str) -> str:
        exports = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp_id,
                   LOG_ENV: str(log_dir / "%j.out")}  # as `mlflow run` sets them, and the log for the run
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
                         "sciqa.slurm_gpu": gpu, "sciqa.slurm_gpus": str(gpus), "sciqa.slurm_partition": partition,
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
    poll = 5.0  # seconds between squeue calls; tests poll faster
    with suppress(ValueError):
        poll = max(0.2, float(os.environ.get("SCIQA_SLURM_POLL_SECONDS", poll)))
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
    if not (job := tags.get("sciqa.slurm_job_id")):
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


def place_cells(grid, gpu: str, profile: slurm.Profile, check_fn: Callable) -> tuple[dict, dict[int, dict]]:
    """Cells by (GPU type, GPUs) and each cell's tags saying why: the given type, or auto per cell (one sinfo)."""
    idle = idle_gpus(profile) if gpu == "auto" else None
    groups: dict[tuple[str, int], list] = {}
    tags = {}
    for cell in grid.cells:
        try:
            gpu_type, count, tags[cell.index] = place(grid.step, cell.config, profile, gpu, check_fn, idle, cell.label)
        except SciqaError as exc:
            raise SciqaError(f"grid cell {cell.label}: {exc}") from None
        groups.setdefault((gpu_type, count), []).append(cell)
    return groups, tags


def _child_runs(client, grid, exp: str, parent: str, cell_tags: dict[int, dict], tags: dict) -> dict[int, str]:
    """The parent's params and tags, and one SCHEDULED-to-be child run per cell: cell index -> run id."""
    have = client.get_run(parent).data.params  # `mlflow run -e grid` made the parent and logged its strings
    params = {k: v for k, v in {**grid.settings, **grid.params()}.items() if k not in have}
    client.log_batch(parent, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in {"sciqa.step": "grid", "sciqa.grid_step": grid.step,
                                                       "sciqa.slurm_status": "PENDING", **tags}.items()])
    return {c.index: client.create_run(exp, run_name=f"{grid.step}-{c.label.replace(' ', '-')}", tags={
        "mlflow.parentRunId": parent, "sciqa.step": grid.step, "sciqa.grid_cell": str(c.index),
        "sciqa.slurm_status": "PENDING", **cell_tags[c.index]}).info.run_id for c in grid.cells}


def submit_grid(grid, gpu: str, check_fn: Callable, log_cells: Callable, *, profile: str | None = None,
                time_limit: str | None = None, max_running: int = 0, attach: str | None = None) -> str:
    """Create the parent (or use ``attach``) and child runs, submit the arrays and the collect job; what to print."""
    prof = slurm.load_profile(profile)
    groups, cell_tags = place_cells(grid, gpu, prof, check_fn)
    log_dir = job_dir() / "logs"

    def script(gpu_type: str, count: int, cells: list, runs: dict[int, str], uri: str, exp: str) -> str:
        tasks = [({"MLFLOW_RUN_ID": runs.get(c.index, NO_RUN)}, prof.command(list(c.args))) for c in cells]
        exports = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp, LOG_ENV: str(log_dir / "%j.out")}
        return slurm.build_job(prof, gpu_type, [], f"sciqa-grid-{grid.step}", time_limit, log_dir, exports,
                               os.getcwd(), gpus=count, tasks=tasks, max_running=max_running)

    for (gpu_type, count), cells in groups.items():
        sbatch_test_only(script(gpu_type, count, cells, {}, "http://127.0.0.1:5000", "0"))
    uri = shared_tracking_uri(tracking.setup())
    exp, client = tracking.experiment_id(), mlflow.MlflowClient()
    parent = attach or client.create_run(exp, run_name=f"grid-{grid.step}-slurm").info.run_id
    try:
        runs = _child_runs(client, grid, exp, parent, cell_tags,
                           {"sciqa.slurm_profile": prof.name, "sciqa.slurm_gpu": gpu})
        jobs: dict[int, str] = {}
        arrays: list[str] = []
        for (gpu_type, count), cells in groups.items():
            text = script(gpu_type, count, cells, runs, uri, exp)
            client.log_text(parent, text, f"slurm/array-{gpu_type}.sbatch")
            arrays.append(str(slurm.submit(text, job_dir() / f"{parent}-{gpu_type}.sbatch")))
            for k, c in enumerate(cells):
                jobs[c.index] = f"{arrays[-1]}_{k}"
                client.set_tag(runs[c.index], "sciqa.slurm_job_id", jobs[c.index])
                client.set_terminated(runs[c.index], "SCHEDULED")
        log_cells(parent, grid, runs, jobs)
        exports = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp}
        collect_id = slurm.submit(slurm.build_job(
            prof, next(iter(groups))[0], prof.command(["grid", "--collect", parent]), "sciqa-grid-collect",
            time_limit, log_dir, exports, os.getcwd(), dependency="afterany:" + ":".join(arrays)),
            job_dir() / f"{parent}-collect.sbatch")
        client.log_batch(parent, tags=[RunTag("sciqa.slurm_job_id", ",".join(arrays)),
                                       RunTag("sciqa.slurm_collect_job_id", str(collect_id))])
        client.set_terminated(parent, "SCHEDULED")
    except BaseException as exc:
        client.set_terminated(parent, "FAILED")
        reraise("submitting the grid", exc)
    return "\n".join([f"grid run: {parent}", *(f"slurm array {a}: {len(c)} x {t} ({n} GPU each)" for a, ((t, n), c)
                                                in zip(arrays, groups.items())), f"slurm job {collect_id}: collects "
                      f"the table when the arrays end", f"follow it: sciqa slurm status {parent}"])
