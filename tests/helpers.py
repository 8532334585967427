"""Helpers shared by test modules (kept out of conftest.py: two conftest modules cannot both be imported by name)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
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
