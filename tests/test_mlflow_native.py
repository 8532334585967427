"""MLflow's own features on sciqa's runs: datasets as inputs, adapters as registered models,
system metrics and what a step cost, against the real local ``mlflow server``."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
from test_trust import _original_layout

from helpers import last_run_id
from sciqa.steps.score import ScoreConfig, score
from sciqa.steps.train import TrainConfig, train
from sciqa.tracking import runs as tracking

FAST = dict(limit=4, val_limit=2, epochs=1, prefix_len=4, batch_size=2, max_length=0)


def _inputs(run_id: str) -> dict[str, tuple[str, str]]:
    """context -> (dataset name, digest) of a run's dataset inputs."""
    run = mlflow.get_run(run_id)
    return {next(t.value for t in d.tags if t.key == "mlflow.data.context"): (d.dataset.name, d.dataset.digest)
            for d in run.inputs.dataset_inputs}


def test_datasets_are_run_inputs_and_their_digest_keys_the_cache(cli, experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # in-process, a step can take < 1 s
    data, keep = _original_layout(tmp_path / "data")
    args = ["benchmark", "--dataset", str(data), "--limit", "3", "--max-new-tokens", "2", "--workdir", str(tmp_path / "w")]
    first = last_run_id(cli(*args, cwd=tmp_path))
    run = mlflow.get_run(first)
    (name, digest), = _inputs(first).values()
    assert "eval" in _inputs(first) and name == "data/validation" and digest == run.data.params["data_digest"]
    assert run.data.metrics["wall_seconds"] > 0
    assert any(k.startswith("system/") for k in run.data.metrics)  # CPU and memory while it ran
    problems = json.loads((data / "problems.json").read_text())
    problems[keep["val"][1]]["hint"] = "a changed hint"
    (data / "problems.json").write_text(json.dumps(problems))
    again = cli(*args, cwd=tmp_path)  # an edited dataset folder is never answered by the stale run
    second = last_run_id(again)
    assert "reusing" not in again.stdout and second != first and _inputs(second)["eval"][1] != digest


@pytest.mark.timeout(900)
def test_adapter_is_a_registered_model_that_scores_by_uri(experiment, tmp_path):
    tracking.setup()
    run = train(TrainConfig(variant="pkv", teacher=False, register=True, workdir=str(tmp_path / "w"), **FAST))
    contexts = _inputs(run.run_id)
    assert set(contexts) == {"train", "validation"}
    versions = mlflow.MlflowClient().search_model_versions("name = 'sciqa-tiny-qwen2-vl-pkv-golden'")
    (version,) = [v for v in versions if v.run_id == run.run_id]
    uri = f"models:/sciqa-tiny-qwen2-vl-pkv-golden/{version.version}"
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.metadata["base_model"] == "tiny-qwen2-vl"
    answers = model.predict(pd.DataFrame([{"id": "1", "question": "Which is a mammal?", "choices": '["cat", "trout"]',
                                           "hint": "", "task": "", "lecture": "", "solution": "", "setting": "QTCH"}]),
                            params={"max_new_tokens": 4})
    assert len(answers) == 1 and isinstance(answers[0], str)
    common = dict(limit=2, batch_size=2, max_new_tokens=4, workdir=str(tmp_path / "s"))
    by_uri = score(ScoreConfig(adapter=uri, **common))
    r = mlflow.get_run(by_uri.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["sciqa.adapter_run"] == run.run_id and "acc" in r.data.metrics
    assert score(ScoreConfig(adapter_run=run.run_id, **common)).reused  # the same adapter content: reused
