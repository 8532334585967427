"""A grid (:mod:`sciqa.steps.grid`) on Slurm: one job array per GPU type, a dependent collect job.

The submit side validates everything first (every cell's inputs, the cluster's word on each
array with ``sbatch --test-only``), then creates the grid's parent run and one child run per cell
(SCHEDULED, nested under the parent), and submits per GPU type one ``sbatch --array=0-N[%K]``
whose task i exports its cell's ``MLFLOW_RUN_ID`` and runs the cell's single command
(``python -m sciqa benchmark --model ...``): the task attaches to its child run exactly as a
single ``--slurm-gpu`` job does (reuse, resume, requeue: :mod:`sciqa.slurm.launch`,
:mod:`sciqa.slurm.job`). A job ``--dependency=afterany:<arrays>`` then runs
``sciqa grid --collect GRID_RUN``, which makes the table and ends the parent.
"""
from __future__ import annotations

import os
import shutil

from sciqa import slurm
from sciqa.errors import SciqaError
from sciqa.slurm.job import LOG_ENV
from sciqa.slurm.launch import _log_as, _test_only, job_dir, shared_tracking_uri


def gpu_of_cells(grid, gpu: str, profile) -> dict[int, tuple[str, int, dict[str, str]]]:
    """cell index -> (GPU type, GPUs, tags saying why): the given type, or auto per cell (one sinfo)."""
    from sciqa.slurm.gpu_auto import idle_gpus, place

    idle = idle_gpus(profile) if gpu == "auto" else None
    out = {}
    for cell in grid.cells:
        try:
            out[cell.index] = place(grid.step, cell.config, profile, gpu, idle, cell.label)
        except SciqaError as exc:
            raise SciqaError(f"grid cell {cell.label}: {exc}") from None
    return out


def submit_grid(grid, gpu: str, *, profile: str | None = None, time_limit: str | None = None,
                max_running: int = 0) -> str:
    """Validate, create the parent and child runs, submit the arrays and the collect job; what to print."""
    import mlflow

    from sciqa.steps.grid import check, log_cells
    from sciqa.tracking import runs as tracking

    prof = slurm.load_profile(profile)
    if shutil.which("sbatch") is None:
        raise SciqaError("sbatch not found on PATH: a Slurm grid needs the Slurm client tools (run on the "
                         "cluster's login node, or drop --slurm-gpu to run the grid here)")
    check(grid)
    placed = gpu_of_cells(grid, gpu, prof)
    groups: dict[tuple[str, int], list] = {}
    for cell in grid.cells:
        groups.setdefault(placed[cell.index][:2], []).append(cell)
    base = job_dir()
    log_dir = base / "logs"

    def script(gpu_type: str, count: int, cells: list, runs: dict[int, str], uri: str, exp: str) -> str:
        tasks = [({"MLFLOW_RUN_ID": runs.get(c.index, "0" * 32)}, slurm.sciqa_command(prof, list(c.args)))
                 for c in cells]
        exports = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp, LOG_ENV: str(log_dir / "%j.out")}
        return slurm.build_job(prof, gpu_type, [], f"sciqa-grid-{grid.step}", time_limit, log_dir, exports,
                               os.getcwd(), gpus=count, tasks=tasks, max_running=max_running)

    for (gpu_type, count), cells in groups.items():
        _test_only(script(gpu_type, count, cells, {}, "http://127.0.0.1:5000", "0"))
    uri = shared_tracking_uri(tracking.setup())
    exp = tracking.experiment_id()
    client = mlflow.MlflowClient()
    tags = {"sciqa.step": "grid", "sciqa.grid_step": grid.step, "sciqa.slurm_profile": prof.name,
            "sciqa.slurm_gpu": gpu, "sciqa.slurm_status": "PENDING"}
    attach = tracking.take_outer_run()  # `mlflow run -e grid` made the parent: use it
    parent = attach or client.create_run(exp, run_name=f"grid-{grid.step}-slurm", tags=tags).info.run_id
    try:
        for k, v in tags.items() if attach else ():
            client.set_tag(parent, k, v)
        have = client.get_run(parent).data.params  # `mlflow run` logged its own strings first
        client.log_batch(parent, params=[mlflow.entities.Param(k, v) for k, v in {**grid.settings, **grid.params()}.items()
                                         if k not in have])
        runs = {c.index: client.create_run(exp, run_name=f"{grid.step}-{c.label.replace(' ', '-')}", tags={
            "mlflow.parentRunId": parent, "sciqa.step": grid.step, "sciqa.grid_cell": str(c.index),
            "sciqa.slurm_status": "PENDING", **placed[c.index][2]}).info.run_id for c in grid.cells}
        jobs: dict[int, str] = {}
        arrays = []
        for (gpu_type, count), cells in groups.items():
            text = script(gpu_type, count, cells, runs, uri, exp)
            job_file = base / f"{parent}-{gpu_type}.sbatch"
            array_id = slurm.submit(text, job_file)
            _log_as(client, parent, job_file, "slurm", f"array-{gpu_type}.sbatch")
            arrays.append(str(array_id))
            for k, c in enumerate(cells):
                jobs[c.index] = f"{array_id}_{k}"
                client.set_tag(runs[c.index], "sciqa.slurm_job_id", jobs[c.index])
                client.set_terminated(runs[c.index], "SCHEDULED")
        log_cells(parent, grid, runs, jobs)
        first = next(iter(groups))
        collect = slurm.build_job(prof, first[0], slurm.sciqa_command(prof, ["grid", "--collect", parent]),
                                  "sciqa-grid-collect", time_limit, log_dir,
                                  {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": exp}, os.getcwd(),
                                  dependency="afterany:" + ":".join(arrays))
        collect_file = base / f"{parent}-collect.sbatch"
        collect_id = slurm.submit(collect, collect_file)
        for k, v in {"sciqa.slurm_job_id": ",".join(arrays), "sciqa.slurm_collect_job_id": str(collect_id)}.items():
            client.set_tag(parent, k, v)
        client.set_terminated(parent, "SCHEDULED")
    except BaseException as exc:
        client.set_terminated(parent, "FAILED")
        if isinstance(exc, SciqaError):
            raise
        raise SciqaError(f"submitting the grid failed: {type(exc).__name__}: {exc}".replace("\n", " ")) from exc
    lines = [f"grid run: {parent}"]
    lines += [f"slurm array {a}: {len(c)} x {t} ({count} GPU each)" for a, ((t, count), c) in zip(arrays, groups.items())]
    lines += [f"slurm job {collect_id}: collects the table when the arrays end",
              f"follow it: sciqa slurm status {parent}"]
    return "\n".join(lines)


def status_lines(parent_id: str, parent) -> list[str]:
    """``sciqa slurm status GRID_RUN``: one line per cell (values, run, MLflow status, Slurm state)."""
    from sciqa.steps.grid import cells_of
    from sciqa.steps.grid_table import effective_run

    lines = [f"grid run {parent_id}: {parent.info.status} ({parent.data.params.get('grid_step', '?')} "
             f"{parent.data.params.get('grid', '')}); collect job "
             f"{parent.data.tags.get('sciqa.slurm_collect_job_id', '-')}"]
    for cell in cells_of(parent_id):
        label = " ".join(f"{k}={v}" for k, v in cell["values"].items())
        run = effective_run(cell["run_id"]) if cell.get("run_id") else None
        job = cell.get("job", "")
        try:
            state = slurm.job_state(job) if job else "-"
        except SciqaError as exc:
            state = f"unknown ({exc})"
        restarts = run.data.metrics.get("slurm_restart_count") if run else None
        lines.append(f"  cell {cell['index']} {label}: run {run.info.run_id if run else '-'} "
                     f"{run.info.status if run else 'MISSING'}, slurm {job or '-'} {state}"
                     + (f", restarts {int(restarts)}" if restarts else ""))
    return lines
