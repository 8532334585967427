"""``main`` end to end, small: parent + child runs, comparison artifacts, caching by parameters."""
import mlflow
import pandas as pd
import pytest

from helpers import invoke_cli, run_cli

SMALL = ["main", "--variants", "pkv", "--limit", "6", "--eval-limit", "4", "--epochs", "1", "--max-new-tokens", "4",
         "--prefix-len", "2", "--train-batch-size", "3", "--batch-size", "4", "--teacher-max-new-tokens", "64",
         "--choice-score", "mean"]


def _children(experiment, parent_id):
    runs = mlflow.search_runs([experiment], output_format="list")
    return {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}


def _main(small_main, *args: str):
    """``sciqa main`` in the module's experiment and folder; returns (output, parent run id)."""
    out = invoke_cli(*args, "--workdir", str(small_main["cwd"] / "w"), cwd=small_main["cwd"], env=small_main["env"])
    return out, out.stdout.split("main run: ")[1].split()[0]


@pytest.fixture(scope="module")
def small_main(mlflow_server, tmp_path_factory, tiny_models) -> dict:
    """One small ``main`` in an experiment of its own, which the tests below read, rerun and change."""
    import time

    name = f"main-{time.time_ns()}"
    made = dict(experiment=mlflow.MlflowClient(mlflow_server).create_experiment(name),
                cwd=tmp_path_factory.mktemp("main"), env={"MLFLOW_EXPERIMENT_NAME": name, "MLFLOW_EXPERIMENT_ID": None})
    made["parent_id"] = _main(made, *SMALL)[1]
    return made


@pytest.mark.timeout(900)
def test_main_end_to_end(small_main, tmp_path):
    experiment, parent_id = small_main["experiment"], small_main["parent_id"]
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sciqa.step"] == "main"
    kids = _children(experiment, parent_id)
    steps = sorted(r.data.tags["sciqa.step"] for r in kids.values())
    assert steps == ["benchmark", "benchmark", "score", "score", "train_prefix", "train_prefix"]
    trains = [r for r in kids.values() if r.data.tags["sciqa.step"] == "train_prefix"]
    assert sorted(r.data.tags["sciqa.teacher"] for r in trains) == ["false", "true"]
    assert all(r.data.tags["sciqa.variant"] == "pkv" for r in trains)
    teacher = next(r for r in kids.values() if r.data.tags["sciqa.step"] == "benchmark"
                   and r.data.tags["sciqa.split"] == "train")
    assert teacher.data.tags["sciqa.model"] == "tiny-llava"
    kd = next(r for r in trains if r.data.tags["sciqa.teacher"] == "true")
    assert kd.data.tags["sciqa.teacher_run"] == teacher.info.run_id

    runs = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="compare/runs.csv",
                                                           dst_path=str(tmp_path / "a")))
    assert list(runs["model"]) == ["teacher (train split)", "base", "pkv golden", "pkv kd"]
    for row in runs.itertuples():
        score = mlflow.get_run(row.runs.split()[0] if row.model != "teacher (train split)" else row.runs).data.metrics
        assert row.acc == pytest.approx(score["acc"]) and row.cosine == pytest.approx(score["cosine"])
    golden, kd = (next(r for r in trains if r.data.tags["sciqa.teacher"] == t) for t in ("false", "true"))
    assert golden.data.params["train_ids_digest"] == kd.data.params["train_ids_digest"]  # the same problems
    deltas = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="compare/comparison.csv",
                                                             dst_path=str(tmp_path / "b")))
    pairs = set(zip(deltas["run"], deltas["baseline"]))
    assert pairs == {("pkv kd", "pkv golden"), ("pkv golden", "base"), ("pkv kd", "base")}
    acc = deltas[(deltas["metric"] == "acc") & (deltas["run"] == "pkv kd") & (deltas["baseline"] == "pkv golden")].iloc[0]
    assert acc["n"] == 4 and acc["ci_low"] <= acc["diff"] <= acc["ci_high"] and 0 <= acc["p_value"] <= 1
    assert parent.data.metrics["d_acc_pkv_kd_vs_pkv_golden"] == pytest.approx(acc["diff"])
    artifacts = {a.path for d in ("plots", "compare")
                 for a in mlflow.artifacts.list_artifacts(run_id=parent_id, artifact_path=d)}
    assert {"plots/loss_curves.png", "plots/metrics.png", "plots/deltas.png", "compare/comparison.md"} <= artifacts
    for r in kids.values():  # tags and params agree on every child
        for k in ("step", "model", "variant", "teacher", "split", "setting"):
            if f"sciqa.{k}" in r.data.tags and k in r.data.params:
                assert r.data.tags[f"sciqa.{k}"] == r.data.params[k], (r.info.run_name, k)


def test_main_again_reuses_every_step(small_main):
    experiment = small_main["experiment"]
    before = len(mlflow.search_runs([experiment], output_format="list"))
    again, second = _main(small_main, *SMALL)
    assert again.stdout.count("reusing finished run") == 6
    assert "row/s" not in again.stderr and "batch/s" not in again.stderr  # no generation, no training
    assert _children(experiment, second) == {}
    assert len(mlflow.search_runs([experiment], output_format="list")) == before + 1  # the new parent only


def test_standalone_kd_training_reuses_mains_teacher_benchmark(small_main):
    """One teacher config: after ``main --choice-score mean``, the same KD train-prefix benchmarks nothing."""
    experiment = small_main["experiment"]

    def benchmarks():
        return {r.info.run_id for r in mlflow.search_runs([experiment], output_format="list")
                if r.data.tags.get("sciqa.step") == "benchmark"}

    before = benchmarks()
    out = invoke_cli("train-prefix", "--variant", "pkv", "--teacher", "true", "--limit", "6", "--val-limit", "4",
                     "--epochs", "1", "--prefix-len", "2", "--batch-size", "3", "--teacher-max-new-tokens", "64",
                     "--workdir", str(small_main["cwd"] / "w"), cwd=small_main["cwd"], env=small_main["env"])
    assert benchmarks() == before and "benchmark: reusing finished run" in out.stdout
    kd = mlflow.get_run(out.stdout.split("train_prefix run: ")[1].split()[0])
    assert kd.data.tags["sciqa.teacher"] == "true" and kd.data.tags["sciqa.teacher_run"] in before


@pytest.mark.slow  # a third main: two more trainings and scorings
def test_main_with_more_epochs_recomputes_only_training_and_scoring(small_main):
    _, third = _main(small_main, *[a if a != "1" else "2" for a in SMALL])
    redone = sorted(r.data.tags["sciqa.step"] for r in _children(small_main["experiment"], third).values())
    assert redone == ["score", "score", "train_prefix", "train_prefix"]  # both benchmarks reused


def test_bad_teacher_csv_fails_before_any_run(cli, experiment, tmp_path):
    bad = tmp_path / "teacher.csv"
    pd.DataFrame({"index": ["1"], "answer": ["A"]}).to_csv(bad, index=False)
    proc = cli(*SMALL, "--teacher-csv", str(bad), "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("sciqa: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert mlflow.search_runs([experiment], output_format="list") == []


@pytest.mark.slow  # kill -9 of a real process
@pytest.mark.timeout(900)
def test_main_killed_mid_training_resumes_to_the_same_comparison(experiment, tmp_path):
    """kill -9 while a child trains; the same command resumes the parent and every unfinished child
    (no 'already active' error) and ends with the comparison of an uninterrupted main."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [*SMALL[:-2], "--limit", "24", "--epochs", "3", "--workdir", str(tmp_path / "w")]
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", *args], cwd=tmp_path, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((tmp_path / "w").glob("*/checkpoints/epoch_1")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (parent,) = [r for r in mlflow.search_runs([experiment], output_format="list")
                 if r.data.tags.get("sciqa.step") == "main"]
    assert parent.info.status == "RUNNING"
    out = run_cli(*args, cwd=tmp_path)
    assert out.stdout.split("main run: ")[1].split()[0] == parent.info.run_id
    assert "resumed from epoch_" in out.stdout and "already active" not in out.stderr
    assert all(r.info.status == "FINISHED" for r in mlflow.search_runs([experiment], output_format="list"))
    ref_exp = mlflow.create_experiment(f"ref-{experiment}")
    ref = run_cli(*args[:-1], str(tmp_path / "ref"), cwd=tmp_path,
                  env={"MLFLOW_EXPERIMENT_NAME": mlflow.get_experiment(ref_exp).name})
    ref_id = ref.stdout.split("main run: ")[1].split()[0]

    def deltas(run_id, sub):
        return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="compare/comparison.csv",
                                                               dst_path=str(tmp_path / sub)))
    cols = ["run", "baseline", "metric", "n", "a", "b", "diff", "ci_low", "ci_high", "p_value"]
    pd.testing.assert_frame_equal(deltas(parent.info.run_id, "x")[cols], deltas(ref_id, "y")[cols], rtol=1e-5)
