r"""``sciqa grid``: the cross product of a step's comma-separated options (``'q_proj\,v_proj'``: one value), each
cell the run the single command would make, as children of one parent run, here or as Slurm job arrays."""
import functools
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pkgutil import resolve_name
from typing import Any

import click
import mlflow
from mlflow import MlflowClient
from tqdm import tqdm

from sciqa import slurm
from sciqa.adapters import variants_of_step
from sciqa.config import as_param
from sciqa.errors import SciqaError
from sciqa.slurm import job
from sciqa.slurm.launch import job_args, submit_grid
from sciqa.steps.compare import collect_grid, effective_run
from sciqa.steps.pipeline import _child
from sciqa.tracking import runs as tracking
from sciqa.tracking.runs import step_run

# step -> (its CLI command, its function: fn(cfg, parent_run_id=...))
STEPS = {"benchmark": ("benchmark", "sciqa.steps.benchmark:benchmark"), "score": ("score", "sciqa.steps.score:score"),
         "train_prefix": ("train-prefix", "sciqa.steps.train:train"),
         "train_lora": ("train-lora", "sciqa.steps.train:train")}
_ESCAPED_COMMA = "\\,"  # inside one value
_NOT_AXES = ("slurm_gpu", "slurm_profile", "slurm_time", "slurm_gpus", "wait")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its axis values, the step's config and the command line it is."""
    index: int
    values: dict[str, str]
    config: Any
    args: tuple[str, ...]  # ``<command> --opt value ...``: what a Slurm task runs

    @property
    def label(self) -> str:
        return label(self.values)


@dataclass(frozen=True)
class Grid:
    step: str
    axes: dict[str, list[str]]
    fixed: dict[str, str]  # options with one value that define the result
    settings: dict[str, str]  # ... and those that say how it is computed (workdir, batch size): not keyed
    cells: list[Cell]
    cmd: click.Command = field(repr=False, compare=False)

    @property
    def spec(self) -> str:
        """The axes as MLproject's ``grid`` parameter writes them: ``model=a,b;setting=QTCH,QTCHS``."""
        return ";".join(f"{k}={','.join(x.replace(',', _ESCAPED_COMMA) for x in v)}" for k, v in self.axes.items())

    def params(self) -> dict[str, str]:
        """The parent run's key (``grid_axes``: MLproject's own ``grid`` parameter holds the user's string)."""
        return {"grid_step": self.step, "grid_axes": self.spec, "grid_cells": str(len(self.cells)), **self.fixed}


def _pairs(spec: str, extra: list[str], bools: set[str]) -> list[tuple[str, str]]:
    """(option name, raw value) from ``a=1,2;b=x`` and ``--a 1,2 --b x`` (``--flag`` alone: true)."""
    pairs = []
    for part in (p.strip() for p in spec.split(";") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep:
            raise SciqaError(f"grid entry '{part}' is not NAME=VALUES; e.g. model=a,b;setting=QTCH,QTCHS")
        pairs.append((name.strip(), value.strip()))
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or token == "--":
            raise SciqaError(f"unexpected argument '{token}'; give options as --NAME VALUE[,VALUE...]")
        name, sep, value = token[2:].partition("=")
        if not sep:
            flag = name.replace("-", "_") in bools and (not tokens or tokens[0].startswith("--"))
            if not flag and not tokens:
                raise SciqaError(f"option --{name} needs a value")
            value = "true" if flag else tokens.pop(0)
        pairs.append((name, value))
    return pairs


def _axes(cmd: click.Command, spec: str, extra: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(axes: options with several values, fixed: options with one), checked against the command's options."""
    options = {p.name: p for p in cmd.params if p.name not in _NOT_AXES}
    bools = {n for n, p in options.items() if getattr(p.type, "name", "") == "boolean"}
    given: dict[str, list[str]] = {}
    for raw, value in _pairs(spec, extra, bools):
        name = raw.replace("-", "_")
        if name not in options:
            raise SciqaError(f"grid {cmd.name}: unknown option '{raw}'; accepted: "
                             f"{', '.join(sorted(o.replace('_', '-') for o in options))}")
        if name in given:
            raise SciqaError(f"grid option '{raw}' is given twice; list its values once, comma-separated")
        given[name] = [v.strip().replace(_ESCAPED_COMMA, ",") for v in re.split(r"(?<!\\),", value)]  # "a\,b": one
        if len(set(given[name])) != len(given[name]) or "" in given[name]:
            raise SciqaError(f"grid option '{raw}': values must be non-empty and each given once, got '{value}'")
    axes = {name: values for name, values in given.items() if len(values) > 1}
    fixed = {name: values[0] for name, values in given.items() if len(values) == 1}
    if not axes:
        raise SciqaError("a grid needs at least one option with several comma-separated values, "
                         "e.g. --setting QTCH,QTCHS")
    return axes, fixed


def parse(commands: Mapping[str, click.Command], step: str, spec: str = "", extra: list[str] | tuple = ()) -> Grid:
    """The grid's cells, each validated by the step command's own option parsing (types, choices)."""
    if step.replace("-", "_") not in STEPS:
        raise SciqaError(f"unknown grid step '{step}'; accepted: {', '.join(c for c, _ in STEPS.values())}")
    step = step.replace("-", "_")
    cmd = commands[STEPS[step][0]]
    config_cls = cmd.callback.__sciqa_slurm__[1]  # (step, config class, check) of cli.config_command
    variant = {"variant": variants_of_step("train_lora")[0]} if step == "train_lora" else {}
    axes, fixed = _axes(cmd, spec, list(extra))
    cells = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(axes, combo))
        argv = [a for k, v in {**fixed, **values}.items() for a in ("--" + k.replace("_", "-"), v)]
        ctx = cmd.make_context(cmd.name, argv)  # bad values: click's own one-line usage error
        cfg = config_cls(**{**{f.name: ctx.params[f.name] for f in fields(config_cls) if f.name in ctx.params},
                            **variant})
        cells.append(Cell(index, values, cfg, tuple(job_args(cmd, cfg))))
    operational = {f.name for f in fields(config_cls) if f.metadata.get("operational")}
    given = {k: as_param(getattr(cells[0].config, k)) for k in fixed}
    return Grid(step, axes, {k: v for k, v in given.items() if k not in operational},
                {k: v for k, v in given.items() if k in operational}, cells, cmd)


def _check_fn(grid: Grid) -> Callable:
    fn = grid.cmd.callback.__sciqa_slurm__[2]
    return resolve_name(fn) if isinstance(fn, str) else fn


def check(grid: Grid) -> None:
    """Every cell's inputs, before any run starts or any job is submitted."""
    check_fn = _check_fn(grid)
    for cell in grid.cells:
        try:
            check_fn(cell.config)
        except SciqaError as exc:
            raise SciqaError(f"grid cell {cell.label}: {exc}") from None


def run_local(grid: Grid, attach: str | None = None) -> str:
    """Every cell, one after another, as a child of one parent run; then the table. Returns the parent id."""
    check(grid)
    tracking.setup()
    fn = resolve_name(STEPS[grid.step][1])
    fn = functools.partial(fn, step=grid.step) if grid.step.startswith("train") else fn
    tags = {"sciqa.grid_step": grid.step}
    with step_run("grid", grid.params(), tags, f"grid-{grid.step}", settings=grid.settings, reuse=False,
                  attach=attach) as parent:
        runs: dict[int, str] = {}
        failed: list[str] = []
        for cell in tqdm(grid.cells, desc=f"grid {grid.cmd.name}", unit="cell"):
            print(f"grid: cell {cell.index + 1}/{len(grid.cells)}: {cell.label}", flush=True)
            try:
                runs[cell.index] = _child(parent.run_id, f"cell {cell.label}", fn, cell.config).run_id
            except job.Stopped:
                raise  # state saved: the same command resumes the parent and this cell
            except Exception as exc:  # noqa: BLE001 - the other cells still run; the re-run retries this one
                failed.append(f"{cell.label} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        cells = log_cells(parent.run_id, grid, runs)
        if failed:
            raise SciqaError(f"{len(failed)} of {len(grid.cells)} grid cells failed: {'; '.join(failed)}; "
                             "run the same command again to retry them (finished cells are reused)")
        text, _ = collect_grid(parent.run_id, grid.step, cells)
    print(text)
    return parent.run_id


def log_cells(parent_id: str, grid: Grid, runs: dict[int, str], jobs: dict[int, str] | None = None) -> list[dict]:
    """``grid/cells.json`` on the parent (and returned): per cell its values, run, command and (Slurm) array task."""
    cells = [{"index": c.index, "values": c.values, "run_id": runs.get(c.index, ""), "args": list(c.args),
              **({"job": jobs[c.index]} if jobs and c.index in jobs else {})} for c in grid.cells]
    MlflowClient().log_text(parent_id, json.dumps(cells, indent=2), "grid/cells.json")
    return cells


def cells_of(parent_id: str) -> list[dict]:
    """The parent's ``grid/cells.json``, or one line saying the run is not a grid."""
    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{parent_id}/grid/cells.json"))
    except Exception:  # noqa: BLE001 - "not found" comes as several exception types
        raise SciqaError(f"run '{parent_id}' is not a grid run (no grid/cells.json)") from None


def label(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def status_lines(parent_id: str, parent) -> list[str]:
    """``sciqa slurm status GRID_RUN``: one line per cell (values, run, MLflow status, Slurm state)."""
    lines = [f"grid run {parent_id}: {parent.info.status} ({parent.data.params.get('grid_step', '?')} "
             f"{parent.data.params.get('grid', '')}); collect job "
             f"{parent.data.tags.get('sciqa.slurm_collect_job_id', '-')}"]
    for cell in cells_of(parent_id):
        run = effective_run(cell["run_id"]) if cell.get("run_id") else None
        job_id = cell.get("job", "")
        try:
            state = slurm.job_state(job_id) if job_id else "-"
        except SciqaError as exc:
            state = f"unknown ({exc})"
        restarts = run.data.metrics.get("slurm_restart_count") if run else None
        lines.append(f"  cell {cell['index']} {label(cell['values'])}: run {run.info.run_id if run else '-'} "
                     f"{run.info.status if run else 'MISSING'}, slurm {job_id or '-'} {state}"
                     + (f", restarts {int(restarts)}" if restarts else ""))
    return lines


def collect_run(parent_id: str) -> str:
    """``sciqa grid --collect``: the table of a submitted grid; the parent ends FINISHED when every cell did,
    stays open while cells run, else ends FAILED naming the missing ones (re-submit the grid to fill them)."""
    tracking.connect()
    run = tracking.get_run(parent_id, "grid run")
    if run.data.tags.get("sciqa.step") != "grid":
        raise SciqaError(f"run '{parent_id}' is not a grid run (tag sciqa.step is "
                         f"'{run.data.tags.get('sciqa.step', '')}')")
    cells = cells_of(parent_id)
    text, frame = collect_grid(parent_id, run.data.params["grid_step"], cells)
    states = dict(zip((label(c["values"]) for c in cells), frame["status"]))
    missing = [f"{cell} ({state})" for cell, state in states.items() if state != "FINISHED"]
    if not missing:
        MlflowClient().set_terminated(parent_id, "FINISHED")
        return text + f"\ngrid run: {parent_id}"
    if any(state in ("RUNNING", "SCHEDULED") for state in states.values()):
        return text + f"\ngrid run {parent_id}: the table so far; still to come: {'; '.join(missing)}"
    MlflowClient().set_tag(parent_id, "sciqa.grid_missing", "; ".join(missing)[:5000])
    MlflowClient().set_terminated(parent_id, "FAILED")
    return text + (f"\ngrid run {parent_id}: {len(missing)} cell(s) did not finish: {'; '.join(missing)}; "
                   "submit the same grid again to fill them in (finished cells are reused)")


def command(commands: Mapping[str, click.Command], step: str, spec: str, extra: list[str], *, collect: str = "",
            gpu: str = "", profile: str = "", time_limit: str = "", max_running: int = 0,
            attach: str | None = None) -> str:
    """``sciqa grid`` (``commands``: the CLI's): run here, submit as job arrays, or collect a submitted grid's table."""
    if collect:
        if step or spec or extra or gpu:
            raise SciqaError("--collect GRID_RUN takes no step and no options")
        return collect_run(collect)
    if not step:
        raise SciqaError("grid needs a STEP (benchmark, score, train-prefix, train-lora) or --collect GRID_RUN")
    grid = parse(commands, step, spec, extra)
    if gpu:
        check(grid)
        return submit_grid(grid, gpu, _check_fn(grid), log_cells, profile=profile or None,
                           time_limit=time_limit or None, max_running=max_running, attach=attach)
    if time_limit or max_running:
        raise SciqaError("--slurm-time and --slurm-max-running: only for a Slurm grid; add --slurm-gpu TYPE|auto")
    return f"grid run: {run_local(grid, attach)}"
