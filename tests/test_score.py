"""Scoring with an adapter: differs from the base model, benchmark-shaped CSV, tags, resume, bad input."""
from __future__ import annotations

import mlflow
import pytest

from sciqa.errors import SciqaError
from sciqa.eval import embeddings
from sciqa.eval.outputs import read_outputs
from sciqa.steps.benchmark import BenchmarkConfig, benchmark
from sciqa.steps.score import ScoreConfig, score
from sciqa.tracking import runs as tracking


@pytest.fixture
def trained(trained_adapter, experiment):
    tracking.setup()  # the test's experiment, after the shared adapter's
    return trained_adapter("pkv")


def test_score_with_adapter_differs_from_base(trained, experiment, tmp_path):
    common = dict(split="validation", setting="QTCH", limit=3, batch_size=3, max_new_tokens=12,
                  workdir=str(tmp_path / "out"))
    s = score(ScoreConfig(adapter_run=trained, **common))
    b = benchmark(BenchmarkConfig(model="tiny-qwen2-vl", **common))
    r = mlflow.get_run(s.run_id)
    assert r.data.tags["sciqa.step"] == "score" and r.data.tags["sciqa.adapter_run"] == trained
    assert r.data.tags["sciqa.variant"] == "pkv" and r.data.metrics["rows"] == 3
    ours = read_outputs(tmp_path / "out" / s.key / "validation_QTCH.csv")
    base = read_outputs(tmp_path / "out" / b.key / "validation_QTCH.csv")
    assert list(ours["id"]) == list(base["id"]) and set(ours["adapter"]) == {trained}
    assert list(ours["raw_output"]) != list(base["raw_output"])
    # same parameters again: the finished run is reused, nothing regenerated
    assert score(ScoreConfig(adapter_run=trained, **common)).reused
    # the same adapter from its folder gives the same answers
    folder = tmp_path / "out" / "adapters" / trained / "adapter"
    again = score(ScoreConfig(adapter_dir=str(folder), **common))
    assert list(read_outputs(tmp_path / "out" / again.key / "validation_QTCH.csv")["raw_output"]) == list(ours["raw_output"])


def test_score_adapter_of_another_base_model_is_refused(cli, trained, experiment, tmp_path):
    before = len(mlflow.search_runs([experiment], output_format="list"))
    proc = cli("score", "--adapter-run", trained, "--model", "tiny-llava", "--workdir", str(tmp_path),
               cwd=tmp_path, check=False)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("sciqa: error")]
    assert len(errors) == 1 and "trained on 'tiny-qwen2-vl', not 'tiny-llava'" in errors[0]
    assert len(mlflow.search_runs([experiment], output_format="list")) == before


def _no_embedding_model():
    raise SciqaError("no embedding model")


def test_failed_evaluation_fails_the_score_run_and_the_rerun_finishes_it(cli, trained, experiment, tmp_path,
                                                                          monkeypatch):
    """Evaluation runs inside the score run: its failure is the run's (FAILED, the reason as a tag,
    one line, exit 2), and the same command resumes that run without generating again."""
    args = ["score", "--adapter-run", trained, "--limit", "3", "--max-new-tokens", "4",
            "--workdir", str(tmp_path / "w")]
    with monkeypatch.context() as patch:
        patch.setattr(embeddings, "model", _no_embedding_model)
        failed = cli(*args, cwd=tmp_path, check=False)
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("sciqa: error: ")]
    assert failed.returncode == 2 and len(errors) == 1 and "no embedding model" in errors[0]
    (run,) = [r for r in mlflow.search_runs([experiment], output_format="list") if r.data.tags["sciqa.step"] == "score"]
    assert run.info.status == "FAILED" and "no embedding model" in run.data.tags["sciqa.error"]
    assert "acc" not in run.data.metrics
    again = cli(*args, cwd=tmp_path)
    assert f"score run: {run.info.run_id}" in again.stdout and "row/s" not in again.stderr
    done = mlflow.get_run(run.info.run_id)
    assert done.info.status == "FINISHED" and "acc" in done.data.metrics
