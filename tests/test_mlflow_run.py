"""The entry points exactly as users type them: ``mlflow run <project> -e STEP --env-manager local``.

Each step logs into the run ``mlflow run`` made, tagged as itself (a KD run is a KD training run,
never its teacher's benchmark); an inner step gets its own run; a second identical command reuses
the finished run; a killed one is continued; bad input marks the run FAILED with the reason.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers import runs_of

pytestmark = pytest.mark.slow  # `mlflow run` processes

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["-P", "limit=4", "-P", "val_limit=2", "-P", "epochs=2", "-P", "batch_size=2", "-P", "max_length=0",
         "-P", "teacher_max_new_tokens=64", "-P", "log_every=0"]
KEYS = ("step", "model", "variant", "teacher", "split", "setting")


@pytest.fixture
def project(tmp_path):
    """A fresh copy of the project files ``mlflow run`` reads (the package itself is installed)."""
    dest = tmp_path / "project"
    dest.mkdir()
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def mlflow_run(project: Path, entry: str, *params: str, check: bool = True, background: bool = False):
    exp = os.environ["MLFLOW_EXPERIMENT_NAME"]
    cmd = [sys.executable, "-m", "mlflow", "run", str(project), "-e", entry, "--env-manager", "local",
           "--experiment-name", exp, *params]
    if background:
        return subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"mlflow run -e {entry} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def live_runs(experiment: str) -> list:
    """The experiment's runs, without those that only record a reuse (nested under the reused run)."""
    return [r for r in runs_of(experiment) if "sciqa.reused_run" not in r.data.tags]


def assert_tags_equal_params(run) -> None:
    """Where a run has both, the sciqa.* tag and the param agree ("" = the derived default)."""
    tags, params = run.data.tags, {k: " ".join(shlex.split(v)) for k, v in run.data.params.items()}
    for k in KEYS:  # mlflow run logs string parameters shell-quoted ('' for an empty one)
        if f"sciqa.{k}" in tags and params.get(k):
            assert tags[f"sciqa.{k}"] == params[k], (run.info.run_name, k, tags[f"sciqa.{k}"], params[k])


def by_step(runs: list, step: str) -> list:
    return [r for r in runs if r.data.tags.get("sciqa.step") == step]


@pytest.mark.timeout(900)
def test_kd_training_under_mlflow_run_is_a_kd_run_and_is_reused(project, experiment):
    mlflow_run(project, "train_prefix", "-P", "teacher=true", *SMALL)
    runs = live_runs(experiment)
    (kd,) = by_step(runs, "train_prefix")
    (teacher,) = by_step(runs, "benchmark")
    assert kd.data.tags["mlflow.project.entryPoint"] == "train_prefix"
    assert kd.info.run_name.startswith("train_prefix-pkv-kd")
    assert {f"sciqa.{k}": kd.data.tags[f"sciqa.{k}"] for k in ("teacher", "model", "variant")} == {
        "sciqa.teacher": "true", "sciqa.model": "tiny-qwen2-vl", "sciqa.variant": "pkv"}
    assert kd.data.tags["sciqa.teacher_run"] == teacher.info.run_id != kd.info.run_id
    assert teacher.info.status == "FINISHED" and teacher.data.tags["sciqa.split"] == "train"
    assert teacher.data.tags["sciqa.model"] == "tiny-llava"
    assert teacher.data.tags["mlflow.parentRunId"] == kd.info.run_id  # nested under the KD run
    assert "outputs/train_QTCH.csv" not in {a.path for a in mlflow.artifacts.list_artifacts(
        run_id=kd.info.run_id, artifact_path="outputs")}
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(kd.info.run_id, "train_loss")] == [1, 2]
    for r in runs:
        assert_tags_equal_params(r)

    again = mlflow_run(project, "train_prefix", "-P", "teacher=true", *SMALL)
    assert f"reusing finished run {kd.info.run_id}" in again.stdout + again.stderr
    assert {r.info.run_id for r in live_runs(experiment)} == {r.info.run_id for r in runs}
    (pointer,) = [r for r in runs_of(experiment) if "sciqa.reused_run" in r.data.tags]
    assert pointer.data.tags["mlflow.parentRunId"] == kd.info.run_id and pointer.info.status == "FINISHED"
    assert "sciqa.step" not in pointer.data.tags  # filters on sciqa.step never count it

    lora = mlflow_run(project, "train_lora", "-P", "teacher=true", *SMALL)
    (kd_lora,) = by_step(live_runs(experiment), "train_lora")
    assert kd_lora.data.tags["sciqa.teacher"] == "true" and kd_lora.data.tags["sciqa.variant"] == "lora"
    assert kd_lora.data.tags["sciqa.teacher_run"] == teacher.info.run_id  # the same teacher, reused
    assert "reusing finished run " + teacher.info.run_id in lora.stdout + lora.stderr
    assert_tags_equal_params(kd_lora)

    score = mlflow_run(project, "score", "-P", f"adapter_run={kd.info.run_id}", "-P", "limit=3",
                       "-P", "max_new_tokens=4")
    (scored,) = by_step(live_runs(experiment), "score")
    assert scored.info.status == "FINISHED" and "acc" in scored.data.metrics, score.stdout[-2000:]
    assert scored.data.tags["mlflow.project.entryPoint"] == "score"
    assert len(live_runs(experiment)) == len(runs) + 2  # the LoRA run and the score run: nothing stray
    assert_tags_equal_params(scored)
    assert not (project / "sciqa-work").exists()  # step state went to sciqa's cache, not into the checkout


@pytest.mark.timeout(900)
def test_killed_mlflow_run_training_is_continued_by_the_next(project, experiment):
    work = project.parent / "work"  # this test's own (the default, sciqa's cache, holds other tests' state)
    params = ["-P", "limit=16", "-P", "val_limit=2", "-P", "epochs=4", "-P", "batch_size=2", "-P", "log_every=0",
              "-P", f"workdir={work}"]
    proc = mlflow_run(project, "train_prefix", *params, background=True)
    deadline = time.time() + 400
    while time.time() < deadline and not list(work.glob("*/checkpoints/epoch_1")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed,) = live_runs(experiment)
    assert killed.info.status == "RUNNING"
    shutil.rmtree(work)  # as on a fresh node: the checkpoint comes from the artifacts
    out = mlflow_run(project, "train_prefix", *params)
    text = out.stdout + out.stderr
    assert f"continues the unfinished run {killed.info.run_id}" in text and "resumed from epoch_" in text
    runs = {r.info.run_id: r for r in live_runs(experiment)}
    (new,) = [r for r in runs.values() if r.info.run_id != killed.info.run_id]
    old = runs[killed.info.run_id]
    assert old.info.status == "KILLED" and old.data.tags["sciqa.superseded_by"] == new.info.run_id
    assert new.info.status == "FINISHED" and new.data.tags["sciqa.step"] == "train_prefix"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(new.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]


@pytest.mark.timeout(600)
def test_bad_parameter_under_mlflow_run_fails_the_run_with_the_reason(project, experiment):
    proc = mlflow_run(project, "benchmark", "-P", "setting=QTX", check=False)
    assert proc.returncode != 0
    (run,) = live_runs(experiment)
    assert run.info.status == "FAILED" and "unknown setting 'QTX'" in run.data.tags["sciqa.error"]
    assert "Traceback" not in proc.stderr.split("mlflow.exceptions")[0].split("ExecutionException")[0]
