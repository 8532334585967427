"""A grid on Slurm: per (GPU type, GPU count) one job array whose task i runs its cell's single command in
the cell's child run (SCHEDULED under the grid's parent, attached as a ``--slurm-gpu`` job attaches), then
a job ``--dependency=afterany:<arrays>`` running ``sciqa grid --collect GRID_RUN`` (the table, the parent's end)."""
import os
from collections.abc import Callable

import mlflow
from mlflow.entities import Param, RunTag

from sciqa import slurm
from sciqa.errors import SciqaError
from sciqa.slurm.job import LOG_ENV
from sciqa.slurm.launch import NO_RUN, job_dir, reraise, sbatch_test_only, shared_tracking_uri
from sciqa.slurm.memory import idle_gpus, place
from sciqa.tracking import runs as tracking


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


def _child_runs(client, grid, exp: str, parent: str, cell_tags: dict[int, dict],
                tags: dict[str, str]) -> dict[int, str]:
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
    """Create the parent (``attach``: the run ``mlflow run`` made) and child runs, submit the arrays and the collect
    job (``grid`` is checked); what to print."""
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
