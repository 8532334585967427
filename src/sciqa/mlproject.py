"""MLproject from the commands' options, so it never drifts from them: ``python -m sciqa.mlproject > MLproject``."""
import json
from textwrap import wrap

from sciqa.cli import main
from sciqa.config import as_param

HEADER = """\
name: sciqa
# Generated from the step configs by `python -m sciqa.mlproject > MLproject`: edit the configs, not this file.
# One entry point per step; each is a thin call of the `sciqa` CLI (see README.md).
# Local: mlflow run . --env-manager local   Cluster: mlflow run . (builds conda.yaml's env: the dependencies;
# every command puts the checkout's src/ first on PYTHONPATH, so that env runs this checkout's sciqa)
conda_env: conda.yaml

entry_points:
"""
PYTHON = "PYTHONPATH=$PWD/src:$PYTHONPATH python -m sciqa"  # MLflow's env holds the dependencies, not sciqa
COMMANDS = {  # one entry point each, with its comment
    "main": "", "benchmark": "", "train-prefix": "", "train-lora": "", "score": "", "evaluate": "",
    "compare": "Paired statistics between arms of evaluated runs: runs='A1,A2;B1,B2' (';' between arms, ',' "
               "between an arm's seed runs; the first arm is the baseline unless given)",
    "grid": "A step over option lists as one parent run with a child run per cell, then the table (grid/table.md): "
            "step=benchmark grid='model=a,b;setting=QTCH,QTCHS;limit=8' (a single value: the same in every cell)",
}
SKIPPED = ("slurm_gpus", "wait", "run_ids", "collect")  # CLI-only: a job's GPU count, blocking, internal plumbing
REQUIRED = ("runs", "grid")  # no default: `mlflow run` asks for them
DEFAULTS = {"step": "benchmark"}  # MLproject's default where the CLI has none
STEP_SLURM = 'a GPU type of the profile submits the step as a job in this very run ("" = here)'
SLURM = {"grid": "one job array per GPU type (auto: the idlest type that holds the estimated memory)"}
TYPES = {"integer": "int", "integer range": "int", "float": "float", "text": "string", "boolean": "string"}


def entry(command: str) -> str:
    """The entry point of a command: every option (named by its flag) and argument, Slurm's with a comment."""
    comment = [f"    # {line}" for line in wrap(COMMANDS[command], 110)]
    lines = [f"  {command.replace('-', '_')}:", *comment, "    parameters:"]
    args = [f"{PYTHON} {command}"]
    for p in (p for p in main.commands[command].params if p.name not in SKIPPED):
        name, kind = p.opts[0].lstrip("-").replace("-", "_"), TYPES[p.type.name]
        if name == "slurm_gpu":
            lines.append(f"      # Slurm: {SLURM.get(command, STEP_SLURM)}")
        value = as_param(DEFAULTS.get(name, p.default))
        default = "" if name in REQUIRED else f", default: {json.dumps(value) if kind == 'string' else value}"
        lines.append(f"      {name}: {{type: {kind}{default}}}")
        args.append(f"{{{name}}}" if p.param_type_name == "argument" else f"{p.opts[0]} {{{name}}}")
    return "\n".join([*lines, "    command: >-", *(f"      {a}" for a in args)])


def render() -> str:
    return HEADER + "\n\n".join(map(entry, COMMANDS)) + "\n"


if __name__ == "__main__":
    print(render(), end="")
