"""``main`` end to end, small: parent + child runs, comparison artifacts, caching by parameters."""
import mlflow
import pandas as pd
import pytest

from helpers import run_cli

SMALL = ["main", "--variants", "pkv", "--limit", "6", "--eval-limit", "4", "--epochs", "1", "--max-new-tokens", "4",
         "--prefix-len", "2", "--train-batch-size", "3", "--batch-size", "4"]


def _children(experiment, parent_id):
    runs = mlflow.search_runs([experiment], output_format="list")
    return {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}


@pytest.mark.timeout(900)
def test_main_end_to_end_reuse_and_partial_recompute(experiment, tmp_path):
    out = run_cli(*SMALL, "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    parent_id = out.stdout.split("main run: ")[1].split()[0]
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sciqa.step"] == "main"
    kids = _children(experiment, parent_id)
    steps = sorted(r.data.tags["sciqa.step"] for r in kids.values())
    assert steps == ["benchmark", "benchmark", "score", "score", "train_prefix", "train_prefix"]
    trains = [r for r in kids.values() if r.data.tags["sciqa.step"] == "train_prefix"]
    assert sorted(r.data.tags["sciqa.teacher"] for r in trains) == ["false", "true"]
    assert all(r.data.tags["sciqa.variant"] == "pkv" for r in trains)
    teacher = next(r for r in kids.values() if r.data.tags.get("sciqa.split") == "train")
    assert teacher.data.tags["sciqa.model"] == "tiny-llava"
    kd = next(r for r in trains if r.data.tags["sciqa.teacher"] == "true")
    assert kd.data.tags["sciqa.teacher_run"] == teacher.info.run_id

    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="compare/comparison.csv",
                                                            dst_path=str(tmp_path / "a")))
    assert list(zip(table["variant"], table["target"])) == [("base", "-"), ("pkv", "golden"), ("pkv", "kd")]
    for row in table.itertuples():
        score = mlflow.get_run(row.score_run).data.metrics
        assert row.acc == pytest.approx(score["acc"]) and row.cosine == pytest.approx(score["cosine"])
        if row.train_run == row.train_run and row.train_run:  # not NaN: an adapter row
            assert row.final_val_loss == pytest.approx(mlflow.get_run(row.train_run).data.metrics["val_loss"])
    artifacts = {a.path for d in ("plots", "compare")
                 for a in mlflow.artifacts.list_artifacts(run_id=parent_id, artifact_path=d)}
    assert {"plots/loss_curves.png", "plots/metrics.png", "compare/comparison.md"} <= artifacts

    again = run_cli(*SMALL, "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    second = again.stdout.split("main run: ")[1].split()[0]
    assert again.stdout.count("reusing finished run") == 6
    assert "row/s" not in again.stderr and "batch/s" not in again.stderr  # no generation, no training
    assert _children(experiment, second) == {}
    assert len(mlflow.search_runs([experiment], output_format="list")) == 8  # two parents + six children

    changed = run_cli(*[a if a != "1" else "2" for a in SMALL], "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    third = changed.stdout.split("main run: ")[1].split()[0]
    redone = sorted(r.data.tags["sciqa.step"] for r in _children(experiment, third).values())
    assert redone == ["score", "score", "train_prefix", "train_prefix"]  # both benchmarks reused


def test_bad_teacher_csv_fails_before_any_run(experiment, tmp_path):
    bad = tmp_path / "teacher.csv"
    pd.DataFrame({"index": ["1"], "answer": ["A"]}).to_csv(bad, index=False)
    proc = run_cli(*SMALL, "--teacher-csv", str(bad), "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("sciqa: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert mlflow.search_runs([experiment], output_format="list") == []
