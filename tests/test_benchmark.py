"""Benchmark end to end against the real MLflow server, with the tiny models."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from helpers import run_cli
from sciqa import models
from sciqa.backends.hf import HFBackend
from sciqa.data import load_problems
from sciqa.data.prompts import build_prompt
from sciqa.eval.outputs import COLUMNS, read_outputs


def _csv(workdir):
    found = list(workdir.glob("*/validation_QTCH.csv"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("model", ["tiny-qwen2-vl", "tiny-llava"])
def test_benchmark_logs_run_and_csv(cli, model, experiment, tmp_path):
    out = cli("benchmark", "--model", model, "--limit", "5", "--max-new-tokens", "8", "--batch-size", "2",
              "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    run_id = out.stdout.strip().split()[-1]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["sciqa.step"] == "benchmark" and run.data.tags["sciqa.model"] == model
    assert run.data.params["model"] == model and run.data.params["batch_size"] == "2"
    assert run.data.metrics["rows"] == 5 and run.data.metrics["rows_generated"] == 5
    assert run.data.metrics["rows_per_second"] > 0
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="outputs/validation_QTCH.csv",
                                                dst_path=str(tmp_path / "dl"))
    df = read_outputs(local)
    assert list(df.columns) == COLUMNS
    assert list(df["id"]) == [p.id for p in load_problems("sample", "validation", limit=5)]
    assert set(df["finish_reason"]) <= {"stop", "length"} and (df["n_output_tokens"] <= 8).all()
    assert (df["model"] == model).all()
    again = cli("benchmark", "--model", model, "--limit", "5", "--max-new-tokens", "8", "--batch-size", "2",
                "--workdir", str(tmp_path / "w2"), cwd=tmp_path)
    assert "reusing finished run " + run_id in again.stdout  # no generation
    assert len(mlflow.search_runs([experiment], output_format="list")) == 1


@pytest.mark.slow  # kill -9 of a real process
def test_kill_9_then_rerun_leaves_every_id_once(experiment, tmp_path):
    args = ["benchmark", "--limit", "24", "--batch-size", "2", "--max-new-tokens", "16", "--workdir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", *args], cwd=tmp_path, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        files = list(tmp_path.glob("*/validation_QTCH.csv"))
        if files and 4 <= len(read_outputs(files[0])) < 24:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(read_outputs(_csv(tmp_path)))
    assert 4 <= partial < 24
    out = run_cli(*args, cwd=tmp_path)
    df = read_outputs(_csv(tmp_path))
    assert sorted(df["id"]) == sorted(p.id for p in load_problems("sample", "validation", limit=24))
    assert df["id"].is_unique
    run = mlflow.get_run(out.stdout.strip().split()[-1])
    assert run.info.status == "FINISHED" and run.data.metrics["rows_generated"] == 24 - partial
    assert len(mlflow.search_runs([experiment], output_format="list")) == 1  # the killed run was resumed


@pytest.mark.parametrize("model", ["tiny-qwen2-vl", "tiny-llava"])
def test_batched_greedy_equals_batch_of_one(model):
    backend = HFBackend(models.load(model, dtype="float32", device="cpu"), max_new_tokens=12)
    problems = load_problems("sample", "validation", limit=6)
    prompts = [build_prompt(p, "QTCHL") for p in problems]
    assert len({len(p) for p in prompts}) > 1  # different lengths: padding is exercised
    batched = backend.generate(problems, prompts)
    single = [backend.generate([p], [t])[0] for p, t in zip(problems, prompts)]
    assert [g.raw_output for g in batched] == [g.raw_output for g in single]
    assert all(g.raw_output for g in batched)
