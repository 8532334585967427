"""Slurm on the command line: ``--slurm-gpu`` & co. for any step command, and ``sciqa slurm``.

    sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --slurm-gpu a100 --slurm-time 04:00:00 --wait
    mlflow run . -e benchmark -P slurm_gpu=h100         # the job attaches to mlflow run's run
    sciqa slurm profiles                                # GPU types and partitions of the profile
    sciqa slurm status RUN_ID                           # Slurm state + MLflow status of a run

One line applies it to a command built from a dataclass config (``cli.py``)::

    @main.command("train-prefix")
    @config_options(_train_prefix_config())
    @slurm_options("train_prefix", _train_prefix_config(), "sciqa.steps.train:check_prefix")
    def train_prefix(**kwargs): ...

``check_fn`` (a callable or a lazy ``"module:function"``) validates the config with no side
effects; it runs before anything is submitted.  Heavy imports happen only when submitting.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from collections.abc import Callable

import click

SLURM_HELP = (
    "Run as a Slurm job instead of here: with --slurm-gpu TYPE the command is submitted with "
    "simple-slurm to the partition the profile maps TYPE to, in the same MLflow run "
    "(MLFLOW_RUN_ID is exported into the job; under `mlflow run` the job attaches to its run). "
    "Jobs are requeue-able and resume after a requeue or preemption. Secrets (HF_TOKEN, "
    "MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD, ...) are never written into the job script: "
    "the job inherits the submitting environment (sbatch --export=ALL) or sources a private file "
    "from the profile's setup lines. Use an http(s) MLFLOW_TRACKING_URI (one `mlflow server` the "
    "nodes can reach); a local sqlite store works only on a single-node cluster and warns.")


def _resolve(check_fn: Callable | str | None) -> Callable | None:
    if check_fn is None or callable(check_fn):
        return check_fn
    module, _, attr = check_fn.partition(":")
    return getattr(importlib.import_module(module), attr)


def _empty_to_none(_ctx, _param, value):
    return value or None  # MLproject passes '' for "not set"


def slurm_options(step_name: str, config_cls, check_fn: Callable | str | None = None) -> Callable:
    """Add ``--slurm-gpu/--slurm-profile/--slurm-time/--slurm-gpus/--wait`` to a config command.

    Without ``--slurm-gpu`` (or with an empty value) the command runs here as before."""

    fields = {f.name for f in dataclasses.fields(config_cls)}

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, slurm_gpu=None, slurm_profile=None, slurm_time=None, slurm_gpus=None,
                    wait=False, **kwargs):
            if not slurm_gpu:
                given = [n for n, v in (("--slurm-time", slurm_time), ("--slurm-gpus", slurm_gpus),
                                        ("--wait", wait)) if v]
                if given:
                    from sciqa.errors import SciqaError

                    raise SciqaError(f"{', '.join(given)}: only for a Slurm job; add --slurm-gpu TYPE "
                                     "(`sciqa slurm profiles` lists the types)")
                return fn(*args, **kwargs)
            from sciqa.slurm.launch import submit_step

            ctx = click.get_current_context()
            cfg = config_cls(**{k: v for k, v in kwargs.items() if k in fields})
            code = submit_step(step_name, ctx.info_name, cfg, _resolve(check_fn), gpu=slurm_gpu,
                               profile=slurm_profile, time_limit=slurm_time, gpus=slurm_gpus, wait=wait)
            if code:
                sys.exit(code)

        options = [
            click.option("--slurm-gpu", "slurm_gpu", default=None, callback=_empty_to_none, metavar="TYPE",
                         help=SLURM_HELP + " TYPE: a GPU type of the profile (see `sciqa slurm profiles`), or auto: the "
                              "idlest type whose memory (profile: memory_gb) holds the step's estimated peak."),
            click.option("--slurm-profile", "slurm_profile", default=None, callback=_empty_to_none,
                         envvar="SCIQA_SLURM_PROFILE", metavar="NAME|PATH",
                         help="cluster profile: a name in slurm/profiles or a .toml path "
                              "[env SCIQA_SLURM_PROFILE; default: local]"),
            click.option("--slurm-time", "slurm_time", default=None, callback=_empty_to_none, metavar="HH:MM:SS",
                         help="job time limit (default: the partition's default from the profile)"),
            click.option("--slurm-gpus", "slurm_gpus", default=None, type=click.IntRange(min=1), metavar="N",
                         help="GPUs for the job (default: the profile's count for --model, else 1)"),
            click.option("--wait", "wait", is_flag=True, default=False,
                         help="with --slurm-gpu: wait for the job to end; print its final state and the "
                              "run's MLflow status; exit 1 if it failed"),
        ]
        wrapper.__sciqa_slurm__ = (step_name, config_cls, check_fn)  # for tests: check_fn must resolve
        for opt in reversed(options):  # innermost decorator: these options come last in --help
            wrapper = opt(wrapper)
        return wrapper

    return decorate


@click.group("slurm")
def slurm_group() -> None:
    """Slurm cluster profiles and the state of submitted runs."""


@slurm_group.command("profiles")
@click.option("--slurm-profile", "slurm_profile", default=None, envvar="SCIQA_SLURM_PROFILE",
              metavar="NAME|PATH", help="profile to show [env SCIQA_SLURM_PROFILE; default: local]")
def profiles_cmd(slurm_profile: str | None) -> None:
    """GPU types, partitions and limits of a cluster profile (what --slurm-gpu accepts)."""
    from sciqa import slurm

    profile = slurm.load_profile(slurm_profile or None)
    click.echo(slurm.describe_profile(profile))
    found = slurm.list_profiles()
    click.echo("profiles: " + ", ".join(f"{n}{' (shown)' if p == profile.path else ''}"
                                       for n, p in sorted(found.items())))


@slurm_group.command("status")
@click.argument("run_id")
def status_cmd(run_id: str) -> None:
    """Slurm state of a submitted run (job id from its tags) and its MLflow status."""
    from sciqa.slurm.launch import status_lines

    for line in status_lines(run_id):
        click.echo(line)
