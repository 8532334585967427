r"""The study's table in one command: a grid of any step's option lists under one parent run.

    sciqa grid benchmark --model tiny-qwen2-vl,tiny-llava --setting QTCH,QTCHS --limit 8
    sciqa grid train-prefix --lr 1e-3,5e-3 --prefix-len 10,50 --epochs 3
    sciqa grid benchmark --model a,b --setting QTCH,QTCHS --slurm-gpu auto   # one Slurm job array
    mlflow run . -e grid -P step=benchmark -P grid="model=a,b;setting=QTCH,QTCHS"

An option given with commas is an axis; the cells are the cross product of the axes (in the order
given), every other option is the same in every cell. A value that holds a comma escapes it:
``--lora-targets 'q_proj\,v_proj'`` is one value. Each cell is exactly the run the single
command would make, started as a child of the grid's parent run the way ``main`` starts its
steps (:func:`sciqa.steps.pipeline._child`), so a finished identical cell is reused, an unfinished
one resumed, and re-running the grid fills in only what is missing. At the end the parent gets
the table (:mod:`sciqa.steps.grid_table`). With ``--slurm-gpu`` the cells are one job array per GPU
type instead (:mod:`sciqa.slurm.array`) and ``sciqa grid --collect GRID_RUN`` (or the dependent
job it submits) makes the table.
"""
from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from sciqa.errors import SciqaError

# step -> (CLI command, the metric of its heatmap, lower is better, its function: fn(cfg, parent_run_id=...))
STEPS: dict[str, tuple[str, str, bool, str]] = {
    "benchmark": ("benchmark", "acc", False, "sciqa.steps.benchmark:benchmark"),
    "score": ("score", "acc", False, "sciqa.steps.score:score"),
    "train_prefix": ("train-prefix", "val_loss_golden", True, "sciqa.steps.train:train"),
    "train_lora": ("train-lora", "val_loss_golden", True, "sciqa.steps.train:train"),
}
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
        return " ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class Grid:
    step: str
    axes: dict[str, list[str]]
    fixed: dict[str, str]  # options with one value that define the result
    settings: dict[str, str]  # ... and those that say how it is computed (workdir, batch size): not keyed
    cells: list[Cell]

    @property
    def command(self) -> str:
        return STEPS[self.step][0]

    @property
    def spec(self) -> str:
        """The axes as MLproject's ``grid`` parameter writes them: ``model=a,b;setting=QTCH,QTCHS``."""
        return ";".join(f"{k}={','.join(x.replace(',', _ESCAPED_COMMA) for x in v)}" for k, v in self.axes.items())

    def params(self) -> dict[str, str]:
        """What defines the grid (the parent run's key; ``grid_axes``, not ``grid``: MLproject's own
        ``grid`` parameter holds the user's string, fixed options included)."""
        return {"grid_step": self.step, "grid_axes": self.spec, "grid_cells": str(len(self.cells)), **self.fixed}


def step_name(step: str) -> str:
    name = step.replace("-", "_")
    if name not in STEPS:
        raise SciqaError(f"unknown grid step '{step}'; accepted: {', '.join(c for c, *_ in STEPS.values())}")
    return name


def _command(step: str):
    from sciqa.cli import main

    return main.commands[STEPS[step][0]]


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


def parse(step: str, spec: str = "", extra: list[str] | tuple[str, ...] = ()) -> Grid:
    """The grid's cells, each validated by the step command's own option parsing (types, choices)."""
    from sciqa.config import as_param
    from sciqa.slurm.launch import job_args

    step = step_name(step)
    cmd = _command(step)
    options = {p.name: p for p in cmd.params if p.name not in _NOT_AXES}
    bools = {n for n, p in options.items() if getattr(p.type, "name", "") == "boolean"}
    axes: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for raw, value in _pairs(spec, list(extra), bools):
        name = raw.replace("-", "_")
        if name not in options:
            raise SciqaError(f"grid {STEPS[step][0]}: unknown option '{raw}'; accepted: "
                             f"{', '.join(sorted(o.replace('_', '-') for o in options))}")
        if name in axes or name in fixed:
            raise SciqaError(f"grid option '{raw}' is given twice; list its values once, comma-separated")
        values = [v.strip().replace(_ESCAPED_COMMA, ",") for v in re.split(r"(?<!\\),", value)]  # "a\,b": one value
        if len(set(values)) != len(values) or "" in values:
            raise SciqaError(f"grid option '{raw}': values must be non-empty and each given once, got '{value}'")
        if len(values) > 1:
            axes[name] = values
        else:
            fixed[name] = values[0]
    if not axes:
        raise SciqaError("a grid needs at least one option with several comma-separated values, "
                         "e.g. --setting QTCH,QTCHS")
    config_cls, make = _config_maker(step)
    cells = []
    for index, combo in enumerate(itertools.product(*axes.values())):
        values = dict(zip(axes, combo))
        argv = [a for k, v in {**fixed, **values}.items() for a in ("--" + k.replace("_", "-"), v)]
        ctx = cmd.make_context(cmd.name, argv)  # bad values: click's own one-line usage error
        cfg = make({f.name: ctx.params[f.name] for f in fields(config_cls) if f.name in ctx.params})
        cells.append(Cell(index, values, cfg, tuple(job_args(cmd.name, cfg))))
    operational = {f.name for f in fields(config_cls) if f.metadata.get("operational")}
    given = {k: as_param(getattr(cells[0].config, k)) for k in fixed}
    return Grid(step, axes, {k: v for k, v in given.items() if k not in operational},
                {k: v for k, v in given.items() if k in operational}, cells)


def _config_maker(step: str) -> tuple[type, Callable[[dict], Any]]:
    """The step's config class, and how its command turns options into a config."""
    step_info = _command(step).callback.__sciqa_slurm__  # (step, config class, check) of slurm_options
    config_cls = step_info[1]
    if step == "train_lora":
        from sciqa.adapters import variants_of_step

        return config_cls, lambda kw: config_cls(**{**kw, "variant": variants_of_step("train_lora")[0]})
    return config_cls, lambda kw: config_cls(**kw)


def check(grid: Grid) -> None:
    """Every cell's inputs, before any run starts or any job is submitted."""
    from sciqa.slurm.cli import _resolve

    check_fn = _resolve(_command(grid.step).callback.__sciqa_slurm__[2])
    for cell in grid.cells:
        try:
            check_fn(cell.config)
        except SciqaError as exc:
            raise SciqaError(f"grid cell {cell.label}: {exc}") from None


def runner(step: str) -> Callable:
    """``fn(cfg, parent_run_id=...) -> StepRun``: the step function the single command calls."""
    from sciqa.slurm.cli import _resolve

    fn = _resolve(STEPS[step][3])
    return functools.partial(fn, step=step) if step.startswith("train") else fn


def run_local(grid: Grid) -> str:
    """Every cell, one after another, as a child of one parent run; then the table. Returns the parent id."""
    from tqdm import tqdm

    from sciqa.slurm import job
    from sciqa.steps.grid_table import collect
    from sciqa.steps.pipeline import _child
    from sciqa.tracking import runs as tracking
    from sciqa.tracking.runs import step_run

    check(grid)
    tracking.setup()
    tags = {"sciqa.grid_step": grid.step}
    with step_run("grid", grid.params(), tags, f"grid-{grid.step}", settings=grid.settings, reuse=False) as parent:
        pid = parent.run_id
        runs: dict[int, str] = {}
        failed: list[str] = []
        for cell in tqdm(grid.cells, desc=f"grid {grid.command}", unit="cell"):
            print(f"grid: cell {cell.index + 1}/{len(grid.cells)}: {cell.label}", flush=True)
            try:
                runs[cell.index] = _child(pid, f"cell {cell.label}", runner(grid.step), cell.config).run_id
            except job.Stopped:
                raise  # state saved: the same command resumes the parent and this cell
            except Exception as exc:  # noqa: BLE001 - the other cells still run; the re-run retries this one
                failed.append(f"{cell.label} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        log_cells(pid, grid, runs)
        if failed:
            raise SciqaError(f"{len(failed)} of {len(grid.cells)} grid cells failed: {'; '.join(failed)}; "
                             "run the same command again to retry them (finished cells are reused)")
        text = collect(pid, grid.step, cells_of(pid))
    print(text)
    return pid


def log_cells(parent_id: str, grid: Grid, runs: dict[int, str], jobs: dict[int, str] | None = None) -> None:
    """``grid/cells.json`` on the parent: per cell its values, run, command and (Slurm) array task."""
    import mlflow

    cells = [{"index": c.index, "values": c.values, "run_id": runs.get(c.index, ""), "args": list(c.args),
              **({"job": jobs[c.index]} if jobs and c.index in jobs else {})} for c in grid.cells]
    mlflow.MlflowClient().log_text(parent_id, json.dumps(cells, indent=2), "grid/cells.json")


def cells_of(parent_id: str) -> list[dict]:
    """The parent's ``grid/cells.json``, or one line saying the run is not a grid."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="grid/cells.json",
                                                       dst_path=tmp)
        except Exception:  # noqa: BLE001 - "not found" comes as several exception types
            raise SciqaError(f"run '{parent_id}' is not a grid run (no grid/cells.json)") from None
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def collect_run(parent_id: str) -> str:
    """``sciqa grid --collect``: the table of a (submitted) grid from its cells; the parent ends
    FINISHED when every cell did, else FAILED naming the missing ones (re-submit the grid to fill them)."""
    from mlflow import MlflowClient

    from sciqa.steps.grid_table import collect, effective_run
    from sciqa.tracking import runs as tracking

    tracking.connect()
    run = tracking.get_run(parent_id, "grid run")
    if run.data.tags.get("sciqa.step") != "grid":
        raise SciqaError(f"run '{parent_id}' is not a grid run (tag sciqa.step is "
                         f"'{run.data.tags.get('sciqa.step', '')}')")
    cells = cells_of(parent_id)
    text = collect(parent_id, run.data.params["grid_step"], cells)
    states = {" ".join(f"{k}={v}" for k, v in c["values"].items()):
              effective_run(c["run_id"]).info.status if c.get("run_id") else "MISSING" for c in cells}
    missing = [f"{label} ({state})" for label, state in states.items() if state != "FINISHED"]
    if not missing:
        MlflowClient().set_terminated(parent_id, "FINISHED")
        return text + f"\ngrid run: {parent_id}"
    if any(state in ("RUNNING", "SCHEDULED") for state in states.values()):  # collected early: leave it open
        return text + f"\ngrid run {parent_id}: the table so far; still to come: {'; '.join(missing)}"
    MlflowClient().set_tag(parent_id, "sciqa.grid_missing", "; ".join(missing)[:5000])
    MlflowClient().set_terminated(parent_id, "FAILED")
    return text + (f"\ngrid run {parent_id}: {len(missing)} cell(s) did not finish: {'; '.join(missing)}; "
                   "submit the same grid again to fill them in (finished cells are reused)")


def command(step: str, spec: str, extra: list[str], *, collect: str = "", gpu: str = "", profile: str = "",
            time_limit: str = "", max_running: int = 0) -> str:
    """``sciqa grid``: run here, submit as job arrays, or collect a submitted grid's table."""
    if collect:
        if step or spec or extra or gpu:
            raise SciqaError("--collect GRID_RUN takes no step and no options")
        return collect_run(collect)
    if not step:
        raise SciqaError("grid needs a STEP (benchmark, score, train-prefix, train-lora) or --collect GRID_RUN")
    grid = parse(step, spec, extra)
    if gpu:
        from sciqa.slurm.array import submit_grid

        return submit_grid(grid, gpu, profile=profile or None, time_limit=time_limit or None,
                           max_running=max_running)
    if time_limit or max_running:
        raise SciqaError("--slurm-time and --slurm-max-running: only for a Slurm grid; add --slurm-gpu TYPE|auto")
    return f"grid run: {run_local(grid)}"
