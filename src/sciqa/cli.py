"""The ``sciqa`` command: one thin command per step, its options the step's config; steps are imported when run."""
import dataclasses
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from pkgutil import resolve_name

import click

from sciqa import slurm
from sciqa.adapters import variants_of_step
from sciqa.config import cli_name, redact, redact_logging
from sciqa.doctor import STEPS
from sciqa.errors import SciqaError
from sciqa.slurm import job

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}
SLURM_HELP = (
    "Run as a requeue-able Slurm job in the same MLflow run (MLFLOW_RUN_ID is exported; under `mlflow run` it "
    "attaches to that run). TYPE: a GPU type of the profile (`sciqa slurm profiles`), or auto: the idlest type "
    "whose memory holds the step's estimated peak. Secrets never enter the job script: the job inherits the "
    "environment (sbatch --export=ALL) or the profile's setup lines source them. Use an http(s) "
    "MLFLOW_TRACKING_URI the nodes reach; a local sqlite store works on one node only (warns).")


def _help(f: dataclasses.Field) -> str:
    """The field's help plus what it accepts (choices, bounds), so --help tells the whole contract."""
    meta = f.metadata
    extra = ["one of " + ", ".join(map(str, meta["choices"]))] if meta.get("choices") else []
    extra += [f"{sign} {meta[key]}" for key, sign in (("min", ">="), ("above", ">"), ("max", "<="))
              if meta.get(key) is not None]
    return meta.get("help", "") + (f" [{'; '.join(extra)}]" if extra else "")


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C: say where the run stands (``tracking.step_run`` marked it KILLED and named it), exit 130."""
    runs = getattr(exc, "sciqa_runs", [])  # innermost first
    where = "no run was started; nothing to resume"
    if runs:
        inside = f", inside run {runs[-1][1]} ({runs[-1][0]})" if len(runs) > 1 else ""
        where = (f"run {runs[0][1]} ({runs[0][0]}{inside}) is marked KILLED and resumable: the same command "
                 "continues it from what it saved")
    click.echo(f"\nsciqa: interrupted: {where}", err=True)
    sys.exit(130)  # 128 + SIGINT: what shells and schedulers expect after Ctrl-C


class Group(click.Group):
    """Bad input: one line on stderr, exit 2; Ctrl-C: where the run stands, exit 130; a crash: redacted traceback."""

    def invoke(self, ctx):
        try:
            with job.watch():  # SIGUSR1/SIGTERM: every long loop stops at a safe point, state saved, exit 75
                return super().invoke(ctx)
        except (click.UsageError, SciqaError) as exc:  # the run `mlflow run` made (ctx.obj) FAILED with the reason
            sub = f" (sciqa {ctx.invoked_subcommand} --help)" if ctx.invoked_subcommand else ""
            message = redact(str(exc) if isinstance(exc, SciqaError) else exc.format_message().replace("\n", " ") + sub)
            click.echo(f"sciqa: error: {message}", err=True)
            if ctx.obj:  # imports MLflow: not for a usage error outside `mlflow run`
                from sciqa.tracking.runs import fail_attached

                fail_attached(ctx.obj, message)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:  # a bug: its traceback, as Python prints it, but with credentials redacted
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """sciqa: ScienceQA experiments (benchmark, adapters, KD vs golden) tracked in MLflow."""
    redact_logging()
    # the run `mlflow run` made: only the command's own step attaches to it (left in the environment, MLflow
    # would also open it for nested runs, mlflow#15713)
    ctx.obj = os.environ.pop("MLFLOW_RUN_ID", "") or None


def _empty_to_none(_ctx, _param, value):
    return value or None  # MLproject passes '' for "not set"


SLURM_PROFILE = click.option("--slurm-profile", "slurm_profile", default=None, callback=_empty_to_none,
                             envvar="SCIQA_SLURM_PROFILE", metavar="NAME|PATH",
                             help="cluster profile: a name in slurm/profiles or a .toml path "
                                  "[env SCIQA_SLURM_PROFILE; default: local]")
SLURM_OPTIONS = [
    click.option("--slurm-gpu", "slurm_gpu", default=None, callback=_empty_to_none, metavar="TYPE", help=SLURM_HELP),
    SLURM_PROFILE,
    click.option("--slurm-time", "slurm_time", default=None, callback=_empty_to_none, metavar="HH:MM:SS",
                 help="job time limit (default: the partition's default from the profile)"),
    click.option("--slurm-gpus", "slurm_gpus", default=None, type=click.IntRange(min=1), metavar="N",
                 help="GPUs for the job (default: the profile's count for --model, else 1)"),
    click.option("--wait", "wait", is_flag=True, default=False, help="with --slurm-gpu: wait for the job to end; "
                 "print its final state and the run's MLflow status; exit 1 if it failed"),
]


@main.group("slurm")
def slurm_group() -> None:
    """Slurm cluster profiles and the state of submitted runs."""


@slurm_group.command("profiles")
@SLURM_PROFILE
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

    click.echo("\n".join(status_lines(run_id, {"grid": resolve_name("sciqa.steps.grid:status_lines")})))


def config_command(name: str, config: str, run: str, doc: str, check: str = "", exclude: tuple[str, ...] = (),
                   fixed: dict | None = None, then: Callable[[], str] | None = None, **call) -> None:
    """``sciqa <name>``: ``config``'s fields but ``exclude`` as options (a bool takes a value: ``--force false``), runs
    ``run`` (+ ``call``) on it with ``fixed`` set, prints its run id; ``check``: also --slurm-* options (a job)."""
    cls = resolve_name(config)
    hints = typing.get_type_hints(cls)

    def command(slurm_gpu=None, slurm_profile=None, slurm_time=None, slurm_gpus=None, wait=False, **kwargs) -> None:
        given = [n for n, v in (("--slurm-time", slurm_time), ("--slurm-gpus", slurm_gpus), ("--wait", wait)) if v]
        if given and not slurm_gpu:
            raise SciqaError(f"{', '.join(given)}: only for a Slurm job; add --slurm-gpu TYPE "
                             "(`sciqa slurm profiles` lists the types)")
        ctx, cfg = click.get_current_context(), replace(cls(**kwargs), **(fixed or {}))
        if not slurm_gpu:
            result = resolve_name(run)(cfg, attach=ctx.obj, **call)
            click.echo(f"{name.replace('-', '_')} run: {getattr(result, 'run_id', result)}")
            if then:
                click.echo(then())
            return
        from sciqa.slurm.launch import job_args, submit_step  # lazy: MLflow and torch only when submitting

        code = submit_step(name.replace("-", "_"), job_args(ctx.command, cfg), cfg, resolve_name(check),
                           gpu=slurm_gpu, profile=slurm_profile, time_limit=slurm_time, gpus=slurm_gpus, wait=wait,
                           attach=ctx.obj)
        if code:
            sys.exit(code)

    if check:
        command.__sciqa_slurm__ = (name.replace("-", "_"), cls, check)  # grid and tests read these
        for opt in reversed(SLURM_OPTIONS):  # innermost: these options come last in --help
            command = opt(command)
    for f in reversed(dataclasses.fields(cls)):
        if f.name not in exclude:
            flag = {"is_flag": False, "flag_value": True} if hints[f.name] is bool else {}
            command = click.option(cli_name(f.name), f.name, default=f.default, show_default=True, help=_help(f),
                                   type=CLICK_TYPES[hints[f.name]], **flag)(command)
    main.command(name, help=doc)(command)


def _look_at_it() -> str:
    """Where to see a main run: its server, or the `mlflow ui` command for a local store."""
    from sciqa.tracking.store import tracking_uri

    uri = tracking_uri()
    return "look at it: " + (f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}")


def _other_options(step: str) -> tuple[str, ...]:
    """The other training command's options: train-lora has no --prefix-len, train-prefix no --lora-r."""
    fields = resolve_name("sciqa.steps:STEP_FIELDS")
    return tuple(f for name, names in fields.items() if name != step for f in names)


TRAIN = "sciqa.steps:TrainConfig"
config_command("benchmark", "sciqa.steps:BenchmarkConfig", "sciqa.steps.benchmark:benchmark",
               "Benchmark a model on one split and setting; writes outputs/<split>_<setting>.csv.",
               "sciqa.steps.benchmark:check")
config_command("main", "sciqa.steps:MainConfig", "sciqa.steps.pipeline:main",
               "The whole experiment as one parent MLflow run with nested child runs.", "sciqa.steps.pipeline:check",
               then=_look_at_it)
config_command("train-prefix", TRAIN, "sciqa.steps.train:train",
               "Train a prefix adapter (--variant) on golden or teacher (KD) targets.",
               "sciqa.steps.train:check_prefix", _other_options("train_prefix"), step="train_prefix")
config_command("train-lora", TRAIN, "sciqa.steps.train:train",
               "Train a LoRA adapter on golden or teacher (KD) targets.", "sciqa.steps.train:check_lora",
               _other_options("train_lora"), fixed={"variant": variants_of_step("train_lora")[0]}, step="train_lora")
config_command("score", "sciqa.steps:ScoreConfig", "sciqa.steps.score:score",
               "Generate for a split with the base model plus a trained adapter (same CSV as benchmark).",
               "sciqa.steps.score:check")
config_command("evaluate", "sciqa.steps:EvaluateConfig", "sciqa.steps.evaluate:evaluate",
               "Accuracy breakdowns and explanation metrics (BLEU, ROUGE-L, METEOR, cosine) of outputs.")


@main.command("grid", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("step", required=False, default="")
@click.option("--grid", "spec", default="", metavar="NAME=A,B;NAME=...",
              help="the axes in one string (MLproject's form), e.g. 'model=a,b;setting=QTCH,QTCHS'")
@click.option("--collect", "collect", default="", metavar="GRID_RUN",
              help="make the table of a submitted grid now (the dependent job does it when the array ends)")
@click.option("--slurm-gpu", "slurm_gpu", default="", metavar="TYPE|auto",
              help="submit the cells as one Slurm job array per GPU type; auto: the idlest type whose memory "
                   "holds each cell's estimated peak (see `sciqa slurm profiles`)")
@SLURM_PROFILE
@click.option("--slurm-time", "slurm_time", default="", metavar="HH:MM:SS", help="time limit of each task")
@click.option("--slurm-max-running", "max_running", default=0, type=click.IntRange(min=0), metavar="K",
              help="at most K tasks of an array at once (sbatch --array=0-N%K; 0 = no limit)")
@click.pass_context
def grid_cmd(ctx, step: str, spec: str, collect: str, slurm_gpu: str, slurm_profile: str | None, slurm_time: str,
             max_running: int) -> None:
    """Cross product of a step's comma-separated options (benchmark, score, train-prefix, train-lora) as
    child runs of one parent, then the table (grid/table.csv|md, plots/grid.png, paired comparisons).

    \b
    sciqa grid benchmark --model tiny-qwen2-vl,tiny-llava --setting QTCH,QTCHS --limit 8
    sciqa grid train-lora --lr 1e-4,5e-4 --lora-r 8,16 --slurm-gpu auto --slurm-max-running 4
    sciqa grid --collect GRID_RUN
    """
    from sciqa.steps import grid as grid_step

    click.echo(grid_step.command(main.commands, step, spec, ctx.args, collect=collect, gpu=slurm_gpu,
                                 profile=slurm_profile, time_limit=slurm_time, max_running=max_running,
                                 attach=ctx.obj))


@main.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--runs", default="", help="the arms in one string, separated by ';' or spaces (the MLproject "
                                         "entry point's form): 'A1,A2,A3;B1,B2,B3'")
@click.option("--baseline", default="", help="the arm the others are compared with, as given [default: the first]")
@click.option("--by-group", type=click.BOOL, default=True, show_default=True,
              help="accuracy also per subject, context and grade (exploratory)")
@click.pass_obj
def compare_cmd(attach: str | None, run_ids: tuple[str, ...], runs: str, baseline: str, by_group: bool) -> None:
    """Paired statistics between arms of evaluated runs (benchmark, score, evaluate --csv). An arm is a
    run id, or the comma-joined ids of its seed runs (sciqa compare A1,A2,A3 B1,B2,B3): seeds are
    replicates. Each arm's accuracy vs the baseline is a primary test (Holm-adjusted), with 95 %
    intervals that cover problems and seeds, on the problems all runs share."""
    from sciqa.steps.compare import compare_command

    ids = [*run_ids, *(r for r in re.split(r"[;\s]+", runs) if r)]
    run_id, text = compare_command(ids, baseline, by_group, attach=attach)
    click.echo(f"{text}\ncompare run: {run_id}")


@main.command()
@click.option("--model", "model", default="", help="hub id (or local folder, with --dest) of the model to fetch")
@click.option("--dataset", "dataset", default="", help="hub dataset id (or local folder, with --dest) to fetch")
@click.option("--dest", "dest", default="", help="copy into this folder instead of the Hugging Face cache")
@click.option("--revision", "revision", default="", help="model revision (branch, tag or commit)")
@click.option("--verify/--no-verify", "verify", default=True, show_default=True,
              help="load the copies afterwards with HF_HUB_OFFLINE=1")
def prefetch(model: str, dataset: str, dest: str, revision: str, verify: bool) -> None:
    """Download a model (with its processor) and a dataset for compute nodes without internet.

    Run it on a login node; with the default HF cache (HF_HOME on a shared filesystem) the jobs
    then run with HF_HUB_OFFLINE=1 and the same --model/--dataset; with --dest, pass the printed
    folders as --model/--dataset.
    """
    from sciqa import prefetch as pf

    if not model and not dataset:
        raise SciqaError("prefetch needs --model and/or --dataset")
    target = Path(dest).expanduser().resolve() if dest else None
    fetched = [pf.prefetch_model(model, target, revision or None)] if model else []
    if dataset:
        fetched.append(pf.prefetch_dataset(dataset, target))
    if verify:
        pf.verify_offline(fetched)
    for f in fetched:
        click.echo(f"{f.what}: {f.source} -> {f.path}")
        click.echo(f"  on compute nodes: HF_HUB_OFFLINE=1 sciqa ... --{f.what} {f.use_as}")


@main.command()
@click.option("--step", type=click.Choice(["all", *STEPS]), default="all", show_default=True,
              help="the step whose prerequisites decide the exit code")
@click.option("--slurm", is_flag=True, help="also the Slurm profile and whether sbatch/sinfo answer")
def doctor(step: str, slurm: bool) -> None:
    """What this machine has for sciqa (torch, CUDA, WordNet, MiniLM, tracking, Slurm, HF offline,
    cache), as a short table; exit 2 when something a step needs is missing."""
    from sciqa import doctor as checks

    results = checks.diagnose(STEPS if step == "all" else (step,), slurm)
    click.echo(checks.table(results))
    if missing := checks.blocking(results):
        raise SciqaError(f"missing: {missing}")


@main.command()
@click.argument("run_id")
@click.option("--dest", default="sciqa-artifacts", show_default=True, help="folder to download into")
@click.option("--children", is_flag=True, help="also the child runs (a main run's steps)")
def download(run_id: str, dest: str, children: bool) -> None:
    """Download a run's outputs, metrics, plots and comparison (like `mlflow artifacts download`)."""
    from sciqa.tracking.artifacts import download as fetch

    for path in fetch(run_id, dest, children):
        click.echo(str(path))


@main.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="port to listen on")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface, for jobs on other nodes)")
@click.option("--store", default=".", show_default=True, help="folder of mlflow.db and artifacts/ (created if needed)")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="server processes (one owns the sqlite file best)")
def server(port: int, host: str, store: str, workers: int) -> None:
    """Run one MLflow tracking server on STORE/mlflow.db (artifacts in STORE/artifacts) until Ctrl-C.

    For many jobs at once (a Slurm array, several terminals): they log to it over HTTP instead of
    sharing one sqlite file. Prints the `export MLFLOW_TRACKING_URI=...` line to use in the jobs.
    """
    from sciqa.tracking.store import serve

    sys.exit(serve(store, host, port, workers))
