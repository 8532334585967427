"""Slurm on the command line: ``--slurm-gpu`` & co. for any config command (:func:`slurm_options`), and
``sciqa slurm profiles|status``. Light at import: the submit side loads only when submitting."""
import dataclasses
import functools
import sys
from collections.abc import Callable
from pkgutil import resolve_name

import click

from sciqa import slurm
from sciqa.config import as_param, cli_name
from sciqa.errors import SciqaError

SLURM_HELP = (
    "Run as a requeue-able Slurm job in the same MLflow run (MLFLOW_RUN_ID is exported; under `mlflow run` it "
    "attaches to that run). TYPE: a GPU type of the profile (`sciqa slurm profiles`), or auto: the idlest type "
    "whose memory holds the step's estimated peak. Secrets never enter the job script: the job inherits the "
    "environment (sbatch --export=ALL) or the profile's setup lines source them. Use an http(s) "
    "MLFLOW_TRACKING_URI the nodes reach; a local sqlite store works on one node only (warns).")
# step -> "module:function" giving `sciqa slurm status` lines for its runs (a grid's cells); filled by sciqa.cli
STATUS_BY_STEP: dict[str, str] = {}


def _resolve(check_fn: Callable | str | None) -> Callable | None:
    """A callable, or a lazy ``"module:function"`` (the check may import torch)."""
    if check_fn is None or callable(check_fn):
        return check_fn
    return resolve_name(check_fn)


def job_args(cmd: click.Command, cfg) -> list[str]:
    """``<command> --opt value ...`` for every config field the command takes: the job runs exactly this config."""
    accepted = {p.name for p in cmd.params}
    return [cmd.name, *(a for f in dataclasses.fields(cfg) if f.name in accepted
                        for a in (cli_name(f.name), as_param(getattr(cfg, f.name))))]


def _empty_to_none(_ctx, _param, value):
    return value or None  # MLproject passes '' for "not set"


_OPTIONS = [
    click.option("--slurm-gpu", "slurm_gpu", default=None, callback=_empty_to_none, metavar="TYPE", help=SLURM_HELP),
    click.option("--slurm-profile", "slurm_profile", default=None, callback=_empty_to_none,
                 envvar="SCIQA_SLURM_PROFILE", metavar="NAME|PATH",
                 help="cluster profile: a name in slurm/profiles or a .toml path "
                      "[env SCIQA_SLURM_PROFILE; default: local]"),
    click.option("--slurm-time", "slurm_time", default=None, callback=_empty_to_none, metavar="HH:MM:SS",
                 help="job time limit (default: the partition's default from the profile)"),
    click.option("--slurm-gpus", "slurm_gpus", default=None, type=click.IntRange(min=1), metavar="N",
                 help="GPUs for the job (default: the profile's count for --model, else 1)"),
    click.option("--wait", "wait", is_flag=True, default=False, help="with --slurm-gpu: wait for the job to end; "
                 "print its final state and the run's MLflow status; exit 1 if it failed"),
]


def slurm_options(step_name: str, config_cls, check_fn: Callable | str | None = None) -> Callable:
    """Add ``--slurm-gpu/--slurm-profile/--slurm-time/--slurm-gpus/--wait``; without ``--slurm-gpu`` it runs here."""
    fields = {f.name for f in dataclasses.fields(config_cls)}

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, slurm_gpu=None, slurm_profile=None, slurm_time=None, slurm_gpus=None, wait=False, **kw):
            if not slurm_gpu:
                given = [n for n, v in (("--slurm-time", slurm_time), ("--slurm-gpus", slurm_gpus), ("--wait", wait))
                         if v]
                if given:
                    raise SciqaError(f"{', '.join(given)}: only for a Slurm job; add --slurm-gpu TYPE "
                                     "(`sciqa slurm profiles` lists the types)")
                return fn(*args, **kw)
            from sciqa.slurm.launch import submit_step  # lazy: MLflow and torch only when submitting

            cfg, ctx = config_cls(**{k: v for k, v in kw.items() if k in fields}), click.get_current_context()
            code = submit_step(step_name, job_args(ctx.command, cfg), cfg, _resolve(check_fn), gpu=slurm_gpu,
                               profile=slurm_profile, time_limit=slurm_time, gpus=slurm_gpus, wait=wait, attach=ctx.obj)
            if code:
                sys.exit(code)

        wrapper.__sciqa_slurm__ = (step_name, config_cls, check_fn)  # for tests: check_fn must resolve
        for opt in reversed(_OPTIONS):  # innermost decorator: these options come last in --help
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
    profile = slurm.load_profile(slurm_profile or None)
    click.echo(slurm.describe_profile(profile))
    click.echo("profiles: " + ", ".join(f"{n}{' (shown)' if p == profile.path else ''}"
                                       for n, p in sorted(slurm.list_profiles().items())))


@slurm_group.command("status")
@click.argument("run_id")
def status_cmd(run_id: str) -> None:
    """Slurm state of a submitted run (job id from its tags) and its MLflow status."""
    from sciqa.slurm.launch import status_lines

    click.echo("\n".join(status_lines(run_id, {step: _resolve(fn) for step, fn in STATUS_BY_STEP.items()})))
