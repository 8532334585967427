"""The ``sciqa`` command: one thin command per entry point; options derive from step configs.

Heavy imports (torch, transformers, mlflow) happen inside commands, so ``sciqa --help`` is fast.
"""
from __future__ import annotations

import dataclasses
import sys
import traceback
import typing
from collections.abc import Callable

import click

from sciqa.config import cli_name, redact, redact_logging
from sciqa.doctor import STEPS
from sciqa.errors import SciqaError
from sciqa.slurm.cli import slurm_group, slurm_options

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def _help(f: dataclasses.Field) -> str:
    """The field's help plus what it accepts (choices, bounds), so --help tells the whole contract."""
    meta, extra = f.metadata, []
    if meta.get("choices"):
        extra.append("one of " + ", ".join(map(str, meta["choices"])))
    for key, sign in (("min", ">="), ("above", ">"), ("max", "<=")):
        if meta.get(key) is not None:
            extra.append(f"{sign} {meta[key]}")
    return meta.get("help", "") + (f" [{'; '.join(extra)}]" if extra else "")


def config_options(config_cls, exclude: tuple[str, ...] = ()) -> Callable:
    """Click options from a dataclass config: ``--batch-size`` for ``batch_size``, its help and default.
    Booleans take an optional value so both ``--force`` and MLproject's ``--force false`` work.
    ``exclude``: fields this command does not take (they keep their defaults)."""
    hints = typing.get_type_hints(config_cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(config_cls)):
            if f.name in exclude:
                continue
            py = hints[f.name]
            kw = dict(default=f.default, show_default=True, help=_help(f), type=CLICK_TYPES[py])
            if py is bool:
                kw.update(is_flag=False, flag_value=True)
            fn = click.option(cli_name(f.name), f.name, **kw)(fn)
        return fn

    return decorate


EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells and schedulers expect after Ctrl-C


def _fail(message: str) -> None:
    """One line on stderr, the run ``mlflow run`` made marked FAILED with the reason, exit 2."""
    from sciqa.tracking import runs as tracking

    message = redact(message)
    click.echo(f"sciqa: error: {message}", err=True)
    tracking.fail_outer(message)
    sys.exit(2)


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Ctrl-C: say where the run stands (``tracking.step_run`` marked it KILLED and named it), exit 130."""
    runs = getattr(exc, "sciqa_runs", [])  # innermost first
    if runs:
        step, run_id = runs[0]
        inside = f", inside run {runs[-1][1]} ({runs[-1][0]})" if len(runs) > 1 else ""
        where = (f"run {run_id} ({step}{inside}) is marked KILLED and resumable: the same command continues it "
                 "from what it saved")
    else:
        where = "no run was started; nothing to resume"
    click.echo(f"\nsciqa: interrupted: {where}", err=True)
    sys.exit(EXIT_INTERRUPTED)


class Group(click.Group):
    """Turns bad input (a SciqaError, a click usage error) into one line on stderr and exit 2, Ctrl-C
    into a line saying where the run stands and exit 130, and redacts credentials from a crash's
    traceback."""

    def invoke(self, ctx):
        from sciqa.slurm import job

        try:
            with job.watch():  # SIGUSR1/SIGTERM: every long loop stops at a safe point, state saved, exit 75
                return super().invoke(ctx)
        except click.UsageError as exc:
            sub = f" (sciqa {ctx.invoked_subcommand} --help)" if ctx.invoked_subcommand else ""
            _fail(exc.format_message().replace("\n", " ") + sub)
        except SciqaError as exc:
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception:  # a bug: its traceback, as Python prints it, but with credentials redacted
            click.echo(redact(traceback.format_exc()), err=True, nl=False)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """sciqa: ScienceQA experiments (benchmark, adapters, KD vs golden) tracked in MLflow."""
    from sciqa.tracking.runs import claim_outer_run

    redact_logging()
    claim_outer_run()  # MLFLOW_RUN_ID is the outer step's only (mlflow#15713)


main.add_command(slurm_group)  # sciqa slurm profiles | status RUN_ID


def _benchmark_config():
    from sciqa.steps.benchmark import BenchmarkConfig

    return BenchmarkConfig


@main.command()
@config_options(_benchmark_config())
@slurm_options("benchmark", _benchmark_config(), "sciqa.steps.benchmark:check")
def benchmark(**kwargs) -> None:
    """Benchmark a model on one split and setting; writes outputs/<split>_<setting>.csv."""
    from sciqa.steps.benchmark import BenchmarkConfig
    from sciqa.steps.benchmark import benchmark as run_benchmark

    run = run_benchmark(BenchmarkConfig(**kwargs))
    click.echo(f"benchmark run: {run.run_id}")


def _main_config():
    from sciqa.steps.pipeline import MainConfig

    return MainConfig


@main.command("main")
@config_options(_main_config())
@slurm_options("main", _main_config(), "sciqa.steps.pipeline:check")
def main_cmd(**kwargs) -> None:
    """The whole experiment as one parent MLflow run with nested child runs."""
    from sciqa.steps.pipeline import MainConfig
    from sciqa.steps.pipeline import main as run_main
    from sciqa.tracking import runs as tracking

    run_id = run_main(MainConfig(**kwargs))
    uri = tracking.tracking_uri()
    where = f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    click.echo(f"main run: {run_id}\nlook at it: {where}")


def _train_config():
    from sciqa.steps.train import TrainConfig

    return TrainConfig


def _run_training(step: str, kwargs: dict) -> None:
    """Train; a stop signal saves a checkpoint and exits 75 (sciqa.slurm.job), the same command resumes."""
    from sciqa.steps.train import TrainConfig, train

    run = train(TrainConfig(**kwargs), step=step)
    click.echo(f"{step} run: {run.run_id}")


def _only(step: str) -> tuple[str, ...]:
    from sciqa.steps.train import STEP_FIELDS

    return tuple(f for other, fields in STEP_FIELDS.items() if other != step for f in fields)


@main.command("train-prefix")
@config_options(_train_config(), exclude=_only("train_prefix"))
@slurm_options("train_prefix", _train_config(), "sciqa.steps.train:check_prefix")
def train_prefix(**kwargs) -> None:
    """Train a prefix adapter (--variant pkv or peft) on golden or teacher (KD) targets."""
    from sciqa.adapters import variants_of_step

    if kwargs["variant"] not in variants_of_step("train_prefix"):
        raise SciqaError(f"unknown prefix variant '{kwargs['variant']}'; accepted: "
                         f"{', '.join(variants_of_step('train_prefix'))} (LoRA: train-lora)")
    _run_training("train_prefix", kwargs)


@main.command("train-lora")
@config_options(_train_config(), exclude=_only("train_lora"))
@slurm_options("train_lora", _train_config(), "sciqa.steps.train:check_lora")
def train_lora(**kwargs) -> None:
    """Train a LoRA adapter on golden or teacher (KD) targets."""
    from sciqa.adapters import variants_of_step

    _run_training("train_lora", {**kwargs, "variant": variants_of_step("train_lora")[0]})


def _score_config():
    from sciqa.steps.score import ScoreConfig

    return ScoreConfig


@main.command("score")
@config_options(_score_config())
@slurm_options("score", _score_config(), "sciqa.steps.score:check")
def score_cmd(**kwargs) -> None:
    """Generate for a split with the base model plus a trained adapter (same CSV as benchmark)."""
    from sciqa.steps.score import ScoreConfig, score

    run = score(ScoreConfig(**kwargs))
    click.echo(f"score run: {run.run_id}")


@main.command("grid", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("step", required=False, default="")
@click.option("--grid", "spec", default="", metavar="NAME=A,B;NAME=...",
              help="the axes in one string (MLproject's form), e.g. 'model=a,b;setting=QTCH,QTCHS'")
@click.option("--collect", "collect", default="", metavar="GRID_RUN",
              help="make the table of a submitted grid now (the dependent job does it when the array ends)")
@click.option("--slurm-gpu", "slurm_gpu", default="", metavar="TYPE|auto",
              help="submit the cells as one Slurm job array per GPU type; auto: the idlest type whose memory "
                   "holds each cell's estimated peak (see `sciqa slurm profiles`)")
@click.option("--slurm-profile", "slurm_profile", default="", envvar="SCIQA_SLURM_PROFILE", metavar="NAME|PATH",
              help="cluster profile [env SCIQA_SLURM_PROFILE; default: local]")
@click.option("--slurm-time", "slurm_time", default="", metavar="HH:MM:SS", help="time limit of each task")
@click.option("--slurm-max-running", "max_running", default=0, type=click.IntRange(min=0), metavar="K",
              help="at most K tasks of an array at once (sbatch --array=0-N%K; 0 = no limit)")
@click.pass_context
def grid_cmd(ctx, step: str, spec: str, collect: str, slurm_gpu: str, slurm_profile: str, slurm_time: str,
             max_running: int) -> None:
    """Cross product of a step's comma-separated options (benchmark, score, train-prefix, train-lora) as
    child runs of one parent, then the table (grid/table.csv|md, plots/grid.png, paired comparisons).

    \b
    sciqa grid benchmark --model tiny-qwen2-vl,tiny-llava --setting QTCH,QTCHS --limit 8
    sciqa grid train-lora --lr 1e-4,5e-4 --lora-r 8,16 --slurm-gpu auto --slurm-max-running 4
    sciqa grid --collect GRID_RUN
    """
    from sciqa.steps import grid as grid_step

    click.echo(grid_step.command(step, spec, ctx.args, collect=collect, gpu=slurm_gpu, profile=slurm_profile,
                                 time_limit=slurm_time, max_running=max_running))


def _evaluate_config():
    from sciqa.steps.evaluate import EvaluateConfig

    return EvaluateConfig


@main.command()
@config_options(_evaluate_config())
def evaluate(**kwargs) -> None:
    """Accuracy breakdowns and explanation metrics (BLEU, ROUGE-L, METEOR, cosine) of outputs."""
    from sciqa.steps.evaluate import EvaluateConfig
    from sciqa.steps.evaluate import evaluate as run_evaluate

    click.echo(f"evaluate run: {run_evaluate(EvaluateConfig(**kwargs))}")


@main.command("compare")
@click.argument("run_ids", nargs=-1)
@click.option("--runs", default="", help="the arms in one string, separated by ';' or spaces (the MLproject "
                                         "entry point's form): 'A1,A2,A3;B1,B2,B3'")
@click.option("--baseline", default="", help="the arm the others are compared with, as given [default: the first]")
@click.option("--by-group", type=click.BOOL, default=True, show_default=True,
              help="accuracy also per subject, context and grade (exploratory)")
def compare_cmd(run_ids: tuple[str, ...], runs: str, baseline: str, by_group: bool) -> None:
    """Paired statistics between arms of evaluated runs (benchmark, score, evaluate --csv). An arm is a
    run id, or the comma-joined ids of its seed runs (sciqa compare A1,A2,A3 B1,B2,B3): seeds are
    replicates. Each arm's accuracy vs the baseline is a primary test (Holm-adjusted), with 95 %
    intervals that cover problems and seeds, on the problems all runs share."""
    import re

    from sciqa.steps.compare import compare_command

    ids = [*run_ids, *(r for r in re.split(r"[;\s]+", runs) if r)]
    run_id, text = compare_command(ids, baseline, by_group)
    click.echo(text)
    click.echo(f"compare run: {run_id}")


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
    from pathlib import Path

    from sciqa import prefetch as pf

    if not model and not dataset:
        raise SciqaError("prefetch needs --model and/or --dataset")
    target = Path(dest).expanduser().resolve() if dest else None
    fetched = []
    if model:
        fetched.append(pf.prefetch_model(model, target, revision or None))
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
    missing = checks.blocking(results)
    if missing:
        raise SciqaError(f"missing: {missing}")


@main.command()
@click.argument("run_id")
@click.option("--dest", default="sciqa-artifacts", show_default=True, help="folder to download into")
@click.option("--children", is_flag=True, help="also the child runs (a main run's steps)")
def download(run_id: str, dest: str, children: bool) -> None:
    """Download a run's outputs, metrics, plots and comparison (like `mlflow artifacts download`)."""
    from sciqa.tracking import runs as tracking
    from sciqa.tracking.download import download as fetch

    tracking.connect()
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
