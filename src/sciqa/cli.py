"""The ``sciqa`` command: one thin command per step, its options the step's config; steps are imported when run."""
import dataclasses
import functools
import re
import sys
import traceback
import typing
from dataclasses import replace
from pathlib import Path
from pkgutil import resolve_name

import click

from sciqa.adapters import variants_of_step
from sciqa.config import cli_name, redact, redact_logging
from sciqa.doctor import STEPS
from sciqa.errors import SciqaError
from sciqa.slurm.cli import STATUS_BY_STEP, slurm_group, slurm_options

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells and schedulers expect after Ctrl-C


def _help(f: dataclasses.Field) -> str:
    """The field's help plus what it accepts (choices, bounds), so --help tells the whole contract."""
    meta, extra = f.metadata, []
    if meta.get("choices"):
        extra.append("one of " + ", ".join(map(str, meta["choices"])))
    for key, sign in (("min", ">="), ("above", ">"), ("max", "<=")):
        if meta.get(key) is not None:
            extra.append(f"{sign} {meta[key]}")
    return meta.get("help", "") + (f" [{'; '.join(extra)}]" if extra else "")


def _fail(message: str, attach: str | None) -> None:
    """One line on stderr, the run ``mlflow run`` made (``attach``) marked FAILED with the reason, exit 2."""
    from sciqa.tracking import runs as tracking

    message = redact(message)
    click.echo(f"sciqa: error: {message}", err=True)
    tracking.fail_attached(attach, message)
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
    """Bad input: one line on stderr, exit 2; Ctrl-C: where the run stands, exit 130; a crash: redacted traceback."""

    def invoke(self, ctx):
        from sciqa.slurm import job

        try:
            with job.watch():  # SIGUSR1/SIGTERM: every long loop stops at a safe point, state saved, exit 75
                return super().invoke(ctx)
        except click.UsageError as exc:
            sub = f" (sciqa {ctx.invoked_subcommand} --help)" if ctx.invoked_subcommand else ""
            _fail(exc.format_message().replace("\n", " ") + sub, ctx.obj)
        except SciqaError as exc:
            _fail(str(exc), ctx.obj)
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
    from sciqa.tracking.runs import claim_mlflow_run

    redact_logging()
    ctx.obj = claim_mlflow_run()  # the run `mlflow run` made: the command's own step attaches to it


main.add_command(slurm_group)  # sciqa slurm profiles | status RUN_ID
STATUS_BY_STEP["grid"] = "sciqa.steps.grid:status_lines"  # a grid run's status: one line per cell


def config_command(name: str, config: str, check: str = "", exclude: tuple[str, ...] = ()):
    """A command taking ``config``'s fields but ``exclude`` as options (booleans take a value: MLproject's
    ``--force false``); ``check`` ("module:function"): also --slurm-* options, checked before submitting."""
    cls = resolve_name(config)
    hints = typing.get_type_hints(cls)

    def decorate(fn):
        @functools.wraps(fn)
        def command(**kwargs):
            fn(cls(**kwargs), click.get_current_context().obj)

        if check:
            command = slurm_options(name.replace("-", "_"), cls, check)(command)
        for f in reversed(dataclasses.fields(cls)):
            if f.name not in exclude:
                flag = {"is_flag": False, "flag_value": True} if hints[f.name] is bool else {}
                command = click.option(cli_name(f.name), f.name, default=f.default, show_default=True, help=_help(f),
                                       type=CLICK_TYPES[hints[f.name]], **flag)(command)
        return main.command(name)(command)

    return decorate


@config_command("benchmark", "sciqa.steps.benchmark:BenchmarkConfig", "sciqa.steps.benchmark:check")
def benchmark(cfg, attach: str | None) -> None:
    """Benchmark a model on one split and setting; writes outputs/<split>_<setting>.csv."""
    from sciqa.steps.benchmark import benchmark as run

    click.echo(f"benchmark run: {run(cfg, attach=attach).run_id}")


@config_command("main", "sciqa.steps.pipeline:MainConfig", "sciqa.steps.pipeline:check")
def main_cmd(cfg, attach: str | None) -> None:
    """The whole experiment as one parent MLflow run with nested child runs."""
    from sciqa.steps.pipeline import main as run_main
    from sciqa.tracking.store import tracking_uri

    run_id, uri = run_main(cfg, attach), tracking_uri()
    where = f"open {uri}" if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    click.echo(f"main run: {run_id}\nlook at it: {where}")


TRAIN = "sciqa.steps.train:TrainConfig"


def _other_options(step: str) -> tuple[str, ...]:
    """The other training command's options: train-lora has no --prefix-len, train-prefix no --lora-r."""
    fields = resolve_name("sciqa.steps.train:STEP_FIELDS")
    return tuple(f for name, names in fields.items() if name != step for f in names)


@config_command("train-prefix", TRAIN, "sciqa.steps.train:check_prefix", _other_options("train_prefix"))
def train_prefix(cfg, attach: str | None) -> None:
    """Train a prefix adapter (--variant) on golden or teacher (KD) targets."""
    from sciqa.steps.train import train

    click.echo(f"train_prefix run: {train(cfg, step='train_prefix', attach=attach).run_id}")


@config_command("train-lora", TRAIN, "sciqa.steps.train:check_lora", _other_options("train_lora"))
def train_lora(cfg, attach: str | None) -> None:
    """Train a LoRA adapter on golden or teacher (KD) targets."""
    from sciqa.steps.train import train

    cfg = replace(cfg, variant=variants_of_step("train_lora")[0])
    click.echo(f"train_lora run: {train(cfg, attach=attach).run_id}")


@config_command("score", "sciqa.steps.score:ScoreConfig", "sciqa.steps.score:check")
def score_cmd(cfg, attach: str | None) -> None:
    """Generate for a split with the base model plus a trained adapter (same CSV as benchmark)."""
    from sciqa.steps.score import score

    click.echo(f"score run: {score(cfg, attach=attach).run_id}")


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

    click.echo(grid_step.command(main.commands, step, spec, ctx.args, collect=collect, gpu=slurm_gpu,
                                 profile=slurm_profile, time_limit=slurm_time, max_running=max_running,
                                 attach=ctx.obj))


@config_command("evaluate", "sciqa.steps.evaluate:EvaluateConfig")
def evaluate(cfg, attach: str | None) -> None:
    """Accuracy breakdowns and explanation metrics (BLEU, ROUGE-L, METEOR, cosine) of outputs."""
    from sciqa.steps.evaluate import evaluate as run

    click.echo(f"evaluate run: {run(cfg, attach=attach)}")


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
    from sciqa.tracking.server import serve

    sys.exit(serve(store, host, port, workers))
