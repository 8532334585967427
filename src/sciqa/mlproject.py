"""MLproject, generated from the step configs so its parameters, types and defaults never drift
from ``sciqa <step> --help`` (a test checks the committed file is current).

    python -m sciqa.mlproject > MLproject
"""
from __future__ import annotations

import dataclasses
import importlib
import typing

HEADER = """\
name: sciqa
# Generated from the step configs by `python -m sciqa.mlproject > MLproject`: edit the configs, not this file.
# One entry point per step; each is a thin call of the `sciqa` CLI (see README.md).
# Local: mlflow run . --env-manager local   Cluster: mlflow run . (builds conda.yaml's env: the dependencies;
# every command puts the checkout's src/ first on PYTHONPATH, so that env runs this checkout's sciqa)
conda_env: conda.yaml

entry_points:
"""
# entry point -> (command, "module:Config", fields the command does not take, Slurm options?)
ENTRY_POINTS = {
    "main": ("main", "sciqa.steps.pipeline:MainConfig", (), True),
    "benchmark": ("benchmark", "sciqa.steps.benchmark:BenchmarkConfig", (), True),
    "train_prefix": ("train-prefix", "sciqa.steps.train:TrainConfig", (), True),
    "train_lora": ("train-lora", "sciqa.steps.train:TrainConfig", (), True),
    "score": ("score", "sciqa.steps.score:ScoreConfig", (), True),
    "evaluate": ("evaluate", "sciqa.steps.evaluate:EvaluateConfig", (), False),
}
SLURM = ("slurm_gpu", "slurm_profile", "slurm_time")
# How every entry point starts: the environment MLflow builds holds the dependencies, not sciqa
# (a src/ layout is importable only when installed or on the path); MLflow runs commands in the project.
PYTHON = "PYTHONPATH=$PWD/src:$PYTHONPATH python -m sciqa"
TYPES = {int: "int", float: "float", str: "string", bool: "string"}


def _config(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def _yaml(value) -> str:
    if isinstance(value, bool):
        return f'"{str(value).lower()}"'
    if isinstance(value, str):
        import yaml

        plain = value != "" and not any(c in value for c in ",:#{}[]") and yaml.safe_load(value) == value
        return value if plain else f'"{value}"'
    return repr(value)


def entry(name: str) -> str:
    from sciqa.steps.train import STEP_FIELDS

    command, ref, skip, slurm = ENTRY_POINTS[name]
    cls = _config(ref)
    if name in ("train_prefix", "train_lora"):
        skip = (*skip, *(f for step, fields in STEP_FIELDS.items() if step != name for f in fields))
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    lines = [f"  {name}:", "    parameters:"]
    lines += [f"      {f.name}: {{type: {TYPES[hints[f.name]]}, default: {_yaml(f.default)}}}" for f in fields]
    names = [f.name for f in fields]
    if slurm:
        lines.append('      # Slurm: a GPU type of the profile submits the step as a job in this very run ("" = here)')
        lines += [f'      {s}: {{type: string, default: ""}}' for s in SLURM]
        names += list(SLURM)
    args = [f"--{n.replace('_', '-')} {{{n}}}" for n in names]
    wrapped, line = [], f"{PYTHON} {command}"
    for arg in args:
        if len(line) + len(arg) > 110:
            wrapped.append(line)
            line = ""
        line = f"{line} {arg}".strip()
    wrapped.append(line)
    lines += ["    command: >-", *[f"      {w}" for w in wrapped]]
    return "\n".join(lines)


COMPARE = """\
  compare:
    # Paired statistics between arms of evaluated runs: runs='A1,A2;B1,B2' (';' between arms, ',' between
    # an arm's seed runs; the first arm is the baseline unless given)
    parameters:
      runs: {type: string}
      baseline: {type: string, default: ""}
      by_group: {type: string, default: "true"}
    command: """ + PYTHON + """ compare --runs {runs} --baseline {baseline} --by-group {by_group}"""


GRID = """\
  grid:
    # A step over option lists as one parent run with a child run per cell, then the table (grid/table.md):
    # step=benchmark grid='model=a,b;setting=QTCH,QTCHS;limit=8' (a single value: the same in every cell)
    parameters:
      step: {type: string, default: benchmark}
      grid: {type: string}
      # Slurm: one job array per GPU type (auto: the idlest type that holds the estimated memory)
      slurm_gpu: {type: string, default: ""}
      slurm_profile: {type: string, default: ""}
      slurm_time: {type: string, default: ""}
      slurm_max_running: {type: int, default: 0}
    command: >-
      """ + PYTHON + """ grid {step} --grid {grid} --slurm-gpu {slurm_gpu}
      --slurm-profile {slurm_profile} --slurm-time {slurm_time} --slurm-max-running {slurm_max_running}"""


def render() -> str:
    return HEADER + "\n\n".join([*(entry(name) for name in ENTRY_POINTS), COMPARE, GRID]) + "\n"


if __name__ == "__main__":
    print(render(), end="")
