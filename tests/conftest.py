"""Shared fixtures: a real ``mlflow server`` (sqlite backend) on 127.0.0.1, a persistent test cache
for tiny models and WordNet, and the ``sciqa`` CLI run in this process (``cli``)."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import requests

from helpers import free_port, fresh_process, invoke_cli

# Offline from the first import on: huggingface_hub reads these once, when it is imported.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """Start ``mlflow server`` for the whole session and point every test (and subprocess) at it."""
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "w")  # noqa: SIM115 -- the server writes to it for the whole session
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # MLflow's GenAI job runners (eight huey processes) serve nothing sciqa logs and eat the CPU
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
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
    os.killpg(proc.pid, signal.SIGKILL)  # a throw-away store: a graceful stop took seconds to tens of seconds
    proc.wait()


# What the cached files are made with: the libraries that build and read them, and the parts of
# sciqa that lay out the files no recipe keys (tiny models are keyed by their recipe, tiny.py included).
CACHE_LIBRARIES = ("torch", "transformers", "tokenizers", "nltk")
CACHE_BUILDERS = ("_WORDNET_FILES", "_LEXNAMES", "_CATEGORY", "_copy_wordnet", "ensure_wordnet")
UNUSED_DAYS = 7


def _cache_digest() -> str:
    """Of the libraries' versions, sciqa/files.py and eval/wordnet.py's builders (the whole module if one
    was renamed: a rebuild, never a stale folder)."""
    import inspect

    from sciqa import files
    from sciqa.eval import wordnet

    h = hashlib.sha256(sys.version.encode() + inspect.getsource(files).encode())
    for name in CACHE_LIBRARIES:
        try:
            h.update(f"{name}=={version(name)}".encode())
        except PackageNotFoundError:
            h.update(f"{name} missing".encode())
    try:
        objects = [getattr(wordnet, name) for name in CACHE_BUILDERS]
        h.update("".join(inspect.getsource(o) if callable(o) else repr(o) for o in objects).encode())
    except AttributeError:
        h.update(inspect.getsource(wordnet).encode())
    return h.hexdigest()[:16]


def _test_cache_folder() -> Path:
    if os.environ.get("SCIQA_TEST_CACHE"):
        return Path(os.environ["SCIQA_TEST_CACHE"])
    root = Path.home() / ".cache" / "sciqa-test"
    folder = root / _cache_digest()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "last-used").touch()
    week_ago = time.time() - UNUSED_DAYS * 86400
    for old in root.iterdir():
        stamp = old / "last-used"
        if old != folder and stamp.is_file() and stamp.stat().st_mtime < week_ago:
            shutil.rmtree(old, ignore_errors=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def sciqa_test_cache() -> Path:
    """The tests' SCIQA_CACHE for the whole session (module fixtures too), kept between pytest runs:
    the tiny models and WordNet take seconds to build. ``$SCIQA_TEST_CACHE``, or
    ~/.cache/sciqa-test/<digest of what makes its files>, so an edit or an upgrade starts a new
    folder instead of reading a stale one; folders no session has used for a week are removed."""
    folder = _test_cache_folder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIQA_CACHE", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, sciqa_test_cache):
    """The shared test cache; no run id, active run or stop request leaks between tests."""
    from sciqa.slurm import job
    from sciqa.tracking import runs as tracking

    monkeypatch.setenv("SCIQA_CACHE", str(sciqa_test_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run():
            mlflow.end_run()
    tracking._EXPERIMENT.clear()
    job.reset()


@pytest.fixture(scope="session")
def tiny_models(sciqa_test_cache) -> None:
    """Every tiny model built (a first build prints progress bars, which tests of stderr must not see)."""
    from sciqa.models.tiny import BUILDERS, tiny_model_path

    for name in BUILDERS:
        tiny_model_path(name)


@pytest.fixture
def cli(tiny_models):
    """``cli("benchmark", "--limit", "2", cwd=tmp_path, check=False, env={...})``: the sciqa command in
    this process (click's CliRunner, stderr apart), with the state of a fresh process, returning
    what ``helpers.run_cli`` returns for a real one. Bad-input tests use it; the real-process
    contract (exit codes, one stderr line, signals) keeps a few ``run_cli`` tests."""
    return invoke_cli


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


# One small adapter per variant for the tests that only read one (score it, refuse it, export it).
SHARED_ADAPTER = dict(limit=4, val_limit=2, epochs=1, prefix_len=4, batch_size=2, max_length=400, lr=5e-2)


@pytest.fixture(scope="session")
def trained_adapter(mlflow_server, tmp_path_factory):
    """``trained_adapter("pkv")``: the run id of a tiny-qwen2-vl adapter of that variant, trained once
    per session (``SHARED_ADAPTER``) in an experiment of its own, so tests count only their own runs."""
    from sciqa.steps.train import TrainConfig, train
    from sciqa.tracking import runs as tracking

    made: dict[str, str] = {}

    def get(variant: str) -> str:
        if variant not in made:
            folder = tmp_path_factory.mktemp(f"adapter-{variant}")
            env = {"MLFLOW_EXPERIMENT_NAME": "shared-adapters", "MLFLOW_EXPERIMENT_ID": None}
            with fresh_process(folder, env):
                tracking.setup()
                step = "train_lora" if variant == "lora" else "train_prefix"
                made[variant] = train(TrainConfig(variant=variant, workdir=str(folder), **SHARED_ADAPTER),
                                      step=step).run_id
        return made[variant]

    return get
