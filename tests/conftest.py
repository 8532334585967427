"""Shared fixtures: a real ``mlflow server`` (sqlite backend) on 127.0.0.1, a private cache for
tiny models, and a helper to run the real ``sciqa`` CLI in a subprocess."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    return exp_id


def run_cli(*args: str, cwd: Path, timeout: int = 600, check: bool = True, env: dict | None = None):
    """Run the installed CLI as a user would: a real subprocess; returns CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "sciqa", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"sciqa {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc
