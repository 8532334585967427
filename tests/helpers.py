"""Helpers shared by test modules (kept out of conftest.py: two conftest modules cannot both be imported by name)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, cwd: Path, timeout: int = 600, check: bool = True, env: dict | None = None):
    """Run the installed CLI as a user would: a real subprocess; returns CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "sciqa", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"sciqa {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


@contextmanager
def fresh_process(cwd: Path, env: dict | None = None) -> Iterator[None]:
    """What a new ``python -m sciqa`` process would see, in this one: the working folder, the
    environment plus ``env`` (None removes a variable), sciqa's process-wide state (experiment, stop flag, embeddings in memory, stores prepared and warned about) and MLflow's (tracking URI, experiment, active run, cached stores) as at
    start; afterwards everything is put back as it was, signal handlers included."""
    import mlflow
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from sciqa.eval import embeddings
    from sciqa.slurm import job
    from sciqa.tracking import runs, store

    def reset() -> None:
        while mlflow.active_run():
            mlflow.end_run()  # what MLflow's atexit hook does when a process ends
        runs._EXPERIMENT.clear()
        job.reset()
        embeddings._VECTORS.clear()  # a new process has encoded nothing yet
        store._PREPARED.clear()
        # stores are cached by URI: a relative sqlite:///mlflow.db must not reach another test's folder
        tracking_utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_experiment = dict(runs._EXPERIMENT)
    saved_uri, saved_exp = tracking_utils._tracking_uri, fluent._active_experiment_id
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    reset()
    tracking_utils._tracking_uri, fluent._active_experiment_id = None, None
    for key, value in (env or {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.chdir(cwd)
    try:
        yield
    finally:
        reset()
        runs._EXPERIMENT.update(saved_experiment)
        os.chdir(saved_cwd)
        tracking_utils._tracking_uri, fluent._active_experiment_id = saved_uri, saved_exp
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def invoke_cli(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``sciqa ARGS`` through click's CliRunner in this process, in :func:`fresh_process`: the
    result of :func:`run_cli` without the interpreter start (~4 s of imports). An exception
    that would end a real process is its traceback on stderr and exit 1."""
    from click.testing import CliRunner

    from sciqa.cli import main

    with fresh_process(cwd, env):
        result = CliRunner().invoke(main, list(args), prog_name="sciqa")
    stderr, code = result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    proc = subprocess.CompletedProcess(["sciqa", *args], code, result.stdout, stderr)
    if check and code != 0:
        raise AssertionError(f"sciqa {' '.join(args)} exited {code}:\n{stderr[-4000:]}")
    return proc


def assert_one_error(proc, needle: str) -> str:
    """Exit 2 and exactly one stderr line, the error naming ``needle`` (no traceback, no noise)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("sciqa: error: ") and needle in lines[0], proc.stderr[-3000:]
    return lines[0]


def runs_of(experiment: str) -> list:
    import mlflow

    return mlflow.search_runs([experiment], output_format="list")


def last_run_id(proc) -> str:
    """The run id the CLI printed last (``<step> run: ID``)."""
    return proc.stdout.strip().split()[-1]


def encode_prompts(lm, problems: list, prompts: list[str]):
    """Chat-templated, left-padded model inputs of user-turn prompts (what HFBackend.generate feeds the model)."""
    from sciqa.backends.hf import encode_texts

    return encode_texts(lm, problems, [lm.family.render_prompt(lm.processor, p) for p in prompts])


def collate(lm, examples: list, max_length: int = 0) -> dict:
    """Model inputs plus ``labels`` of training examples, as the training loop makes them."""
    from sciqa.train.collate import collate_encoded, encode_examples

    return collate_encoded(lm, encode_examples(lm, examples, max_length))
