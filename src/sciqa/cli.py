"""The ``sciqa`` command: one thin command per entry point; options derive from step configs.

Heavy imports (torch, transformers, mlflow) happen inside commands, so ``sciqa --help`` is fast.
"""
from __future__ import annotations

import dataclasses
import sys
import types
from typing import Callable

import click

from sciqa.errors import SciqaError

CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}


def config_options(config_cls) -> Callable:
    """Click options from a dataclass config: ``--batch-size`` for ``batch_size``, its help and default.
    Booleans take an optional value so both ``--force`` and MLproject's ``--force false`` work."""
    hints = {f.name: f.type for f in dataclasses.fields(config_cls)}

    def decorate(fn):
        for f in reversed(dataclasses.fields(config_cls)):
            py = eval(hints[f.name], vars(types)) if isinstance(hints[f.name], str) else hints[f.name]  # noqa: S307
            kw = dict(default=f.default, show_default=True, help=f.metadata.get("help", ""), type=CLICK_TYPES[py])
            if py is bool:
                kw.update(is_flag=False, flag_value=True)
            fn = click.option("--" + f.name.replace("_", "-"), f.name, **kw)(fn)
        return fn

    return decorate


class Group(click.Group):
    """Turns a SciqaError into one line on stderr and exit code 2, after cleaning up."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SciqaError as exc:
            click.echo(f"sciqa: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """sciqa: ScienceQA experiments (benchmark, adapters, KD vs golden) tracked in MLflow."""


def _benchmark_config():
    from sciqa.steps.benchmark import BenchmarkConfig

    return BenchmarkConfig


@main.command()
@config_options(_benchmark_config())
def benchmark(**kwargs) -> None:
    """Benchmark a model on one split and setting; writes outputs/<split>_<setting>.csv."""
    from sciqa import tracking
    from sciqa.steps.benchmark import BenchmarkConfig, benchmark as run_benchmark

    tracking.setup()
    run = run_benchmark(BenchmarkConfig(**kwargs))
    click.echo(f"benchmark run: {run.run_id}")


def _main_config():
    from sciqa.steps.pipeline import MainConfig

    return MainConfig


@main.command("main")
@config_options(_main_config())
def main_cmd(**kwargs) -> None:
    """The whole experiment as one parent MLflow run with nested child runs."""
    from sciqa import tracking
    from sciqa.steps.pipeline import MainConfig, main as run_main

    uri = tracking.setup()
    run_id = run_main(MainConfig(**kwargs))
    click.echo(f"main run: {run_id}\nlook at it: mlflow ui --backend-store-uri {uri}")
