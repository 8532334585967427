"""MLproject, generated from the commands' options (the step configs) so it never drifts from ``sciqa <step>
--help`` (a test checks the committed file is current).

    python -m sciqa.mlproject > MLproject
"""
import yaml

from sciqa.cli import main

HEADER = """\
name: sciqa
# Generated from the step configs by `python -m sciqa.mlproject > MLproject`: edit the configs, not this file.
# One entry point per step; each is a thin call of the `sciqa` CLI (see README.md).
# Local: mlflow run . --env-manager local   Cluster: mlflow run . (builds conda.yaml's env: the dependencies;
# every command puts the checkout's src/ first on PYTHONPATH, so that env runs this checkout's sciqa)
conda_env: conda.yaml

entry_points:
"""
COMMANDS = ("main", "benchmark", "train-prefix", "train-lora", "score", "evaluate")  # one entry point each
SLURM = ("slurm_gpu", "slurm_profile", "slurm_time")  # of the command's --slurm-* options, those MLproject passes
SLURM_COMMENT = '      # Slurm: a GPU type of the profile submits the step as a job in this very run ("" = here)'
# How every entry point starts: the environment MLflow builds holds the dependencies, not sciqa
# (a src/ layout is importable only when installed or on the path); MLflow runs commands in the project.
PYTHON = "PYTHONPATH=$PWD/src:$PYTHONPATH python -m sciqa"
TYPES = {"integer": "int", "float": "float", "text": "string", "boolean": "string"}  # click type -> MLproject


def _yaml(value) -> str:
    if isinstance(value, bool):
        return f'"{str(value).lower()}"'
    if isinstance(value, str):
        plain = value != "" and not any(c in value for c in ",:#{}[]") and yaml.safe_load(value) == value
        return value if plain else f'"{value}"'
    return repr(value)


def entry(command: str) -> str:
    """The entry point of a config command: its options (the config fields it takes, then Slurm's)."""
    params = [p for p in main.commands[command].params if not p.name.startswith(("slurm", "wait")) or p.name in SLURM]
    lines = [f"  {command.replace('-', '_')}:", "    parameters:"]
    for p in params:
        if p.name == SLURM[0]:
            lines.append(SLURM_COMMENT)
        default = _yaml("" if p.default is None else p.default)
        lines.append(f"      {p.name}: {{type: {TYPES[p.type.name]}, default: {default}}}")
    wrapped, line = [], f"{PYTHON} {command}"
    for arg in (f"--{p.name.replace('_', '-')} {{{p.name}}}" for p in params):
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
    return HEADER + "\n\n".join([*map(entry, COMMANDS), COMPARE, GRID]) + "\n"


if __name__ == "__main__":
    print(render(), end="")
