"""The --slurm-* options without a cluster: wiring of every command, the job's command line."""
from __future__ import annotations

import dataclasses
from pkgutil import resolve_name

import pytest
from click.testing import CliRunner

from sciqa.cli import main
from sciqa.slurm.launch import job_args, shared_tracking_uri

SLURM_OPTIONS = {"--slurm-gpu", "--slurm-profile", "--slurm-time", "--slurm-gpus", "--wait"}


def slurm_commands():
    return {name: cmd for name, cmd in main.commands.items() if hasattr(cmd.callback, "__sciqa_slurm__")}


def test_benchmark_has_the_options_and_every_check_resolves():
    commands = slurm_commands()
    assert "benchmark" in commands
    for name, cmd in commands.items():
        opts = {o for p in cmd.params for o in p.opts}
        assert opts >= SLURM_OPTIONS, name
        step, config_cls, check_fn = cmd.callback.__sciqa_slurm__
        assert check_fn is None or callable(resolve_name(check_fn)), (name, check_fn)
        from sciqa.steps.train import STEP_FIELDS

        other = {f for step_name, fields in STEP_FIELDS.items() if step_name != step for f in fields}
        wanted = {f.name for f in dataclasses.fields(config_cls)} - (other if step in STEP_FIELDS else set())
        assert wanted <= {p.name for p in cmd.params}, name


@pytest.mark.parametrize("name", sorted(slurm_commands()))
def test_job_command_line_parses_back_to_the_same_config(name):
    """The job runs `<command> --field value ...`: every value must survive the round trip."""
    cmd = main.commands[name]
    _, config_cls, _ = cmd.callback.__sciqa_slurm__
    accepted = {p.name for p in cmd.params}
    odd = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in accepted:  # another command's option (train-lora has no --prefix-len): its default
            continue
        if f.type in (bool, "bool"):
            odd[f.name] = not f.default
        elif f.type in (str, "str"):
            odd[f.name] = "" if f.default else "a b'c"
    cfg = dataclasses.replace(config_cls(), **odd)
    args = job_args(cmd, cfg)
    assert args[0] == name and not SLURM_OPTIONS & set(args)
    ctx = cmd.make_context(name, args[1:])
    assert {k: v for k, v in ctx.params.items() if k in odd} == odd
    assert config_cls(**{f.name: ctx.params[f.name] if f.name in accepted else getattr(cfg, f.name)
                         for f in dataclasses.fields(config_cls)}) == cfg


def test_local_tracking_store_is_made_absolute_and_warned(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert shared_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    assert capsys.readouterr().err == ""
    assert shared_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert "local store" in capsys.readouterr().err


def test_slurm_options_without_a_gpu_type_are_refused():
    res = CliRunner().invoke(main, ["benchmark", "--wait"])
    assert res.exit_code == 2 and "--wait: only for a Slurm job" in res.output
