"""The install surface: conda.yaml agrees with pyproject, MLproject calls real commands, --help is light."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from sciqa.mlproject import PYTHON

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_matches_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in conda


def test_mlproject_entry_points_call_existing_commands():
    from click.testing import CliRunner

    from sciqa.cli import main

    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert {"main", "benchmark"} <= set(project["entry_points"])
    for name, entry in project["entry_points"].items():
        assert entry["command"].startswith(PYTHON + " "), name  # src/ on the path in any environment
        command = entry["command"][len(PYTHON):].split()
        result = CliRunner().invoke(main, [command[0], "--help"])
        assert result.exit_code == 0, (name, result.output)
        options = set(re.findall(r"(--[a-z-]+)", result.output))
        used = set(re.findall(r"(--[a-z-]+) ", entry["command"] + " "))
        assert used <= options, (name, used - options)
        for param in entry.get("parameters", {}):
            assert "{" + param + "}" in entry["command"], (name, param)


def test_mlproject_is_generated_from_the_configs():
    """Parameters, types and defaults come from the dataclasses: a drifted default fails here."""
    from sciqa.mlproject import render

    assert (ROOT / "MLproject").read_text() == render(), "run: python -m sciqa.mlproject > MLproject"
    project = yaml.safe_load(render())["entry_points"]
    assert project["train_lora"]["parameters"]["lr"]["default"] == project["train_prefix"]["parameters"]["lr"]["default"]
    assert "variant" not in project["train_lora"]["parameters"] and "lora_r" not in project["train_prefix"]["parameters"]


def test_help_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from sciqa.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "[CliRunner().invoke(main, [c, '--help']) for c in main.commands]; "
            "print(sorted(m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
