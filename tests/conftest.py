"""Shared fixtures: a real ``mlflow server`` (sqlite backend) on 127.0.0.1, a private cache for
tiny models, and a helper to run the real ``sciqa`` CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from helpers import free_port

# Offline from the first import on: huggingface_hub reads these once, when it is imported.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """Start ``mlflow server`` for the whole session and point every test (and subprocess) at it."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(uri + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start: " + (d / "server.log").read_text()[-2000:])
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Tiny models built once per session in a private cache; no run id leaks between tests."""
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path_factory.getbasetemp() / "sciqa-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def experiment(mlflow_server, monkeypatch, request) -> str:
    """A fresh MLflow experiment per test, so reuse/resume lookups see only this test's runs."""
    import mlflow

    name = f"{request.node.name}-{time.time_ns()}"
    mlflow.set_tracking_uri(mlflow_server)
    exp_id = mlflow.create_experiment(name)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    mlflow.set_experiment(experiment_id=exp_id)  # in-process runs too, whatever an earlier test made active
    # ... but set_experiment also exports MLFLOW_EXPERIMENT_ID, which `mlflow run --experiment-name` refuses
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    return exp_id
