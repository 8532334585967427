"""Many jobs, one store: a fresh sqlite store under concurrent first use, writers that wait, the
warning when sqlite cannot take the load, and ``sciqa server``. The concurrency tests run the
load test's own cases (benchmarks/load_test.py) with fewer processes."""
from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy

from helpers import assert_one_error
from sciqa.tracking import store

ROOT = Path(__file__).resolve().parents[1]


def _load_test():
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load_test():
    """The load test's module, with the tiny model built before any clock starts."""
    module = _load_test()
    module.warm_cache()
    return module


# ---------------------------------------------------------------- the pieces

@pytest.mark.parametrize("uri,path", [
    ("sqlite:///mlflow.db", "mlflow.db"), ("sqlite:////abs/x/mlflow.db", "/abs/x/mlflow.db"),
    ("sqlite:///a.db?timeout=5", "a.db"), ("sqlite://", None), ("http://127.0.0.1:5000", None),
    ("postgresql://u@h/db", None),
])
def test_sqlite_path(uri, path):
    assert store.sqlite_path(uri) == (Path(path) if path else None)


def _mounts(monkeypatch, *extra: tuple[str, str]) -> None:
    """The mount table psutil reads, faked: ext4 on /, plus (mount point, type) pairs."""
    table = [("/", "ext4"), ("/proc", "proc"), *extra]
    monkeypatch.setattr(store.psutil, "disk_partitions",
                        lambda all=False: [SimpleNamespace(mountpoint=p, fstype=t) for p, t in table])


def test_network_filesystem_is_found_by_longest_mount(tmp_path, monkeypatch):
    _mounts(monkeypatch)
    assert store.filesystem_type(tmp_path) == "ext4"
    _mounts(monkeypatch, (str(tmp_path), "nfs4"))
    assert store.filesystem_type(tmp_path / "not-yet" / "mlflow.db") == "nfs4"
    spaced = tmp_path / "my runs"
    spaced.mkdir()
    _mounts(monkeypatch, (str(spaced), "nfs4"), (str(spaced), "fuse.sshfs"))  # the later mount over a point wins
    assert store.filesystem_type(spaced / "mlflow.db") == "fuse.sshfs"
    assert "network filesystem (fuse.sshfs)" in store.load_warning(spaced / "mlflow.db", env={})


def test_load_warning_names_the_reason_and_the_server(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    _mounts(monkeypatch, (str(tmp_path), "nfs"))
    nfs = store.load_warning(db, env={})
    _mounts(monkeypatch)
    array = store.load_warning(db, env={"SLURM_ARRAY_TASK_ID": "3"})
    for line in (nfs, array):
        assert line.startswith("sciqa: warning: ") and "\n" not in line
        assert f"sciqa server --host 0.0.0.0 --store {tmp_path}" in line and "MLFLOW_TRACKING_URI=http" in line
    assert "network filesystem (nfs)" in nfs and "Slurm job array" in array
    assert store.load_warning(db, env={}) is None
    assert store.load_warning(db, env={"SLURM_JOB_ID": "7"}) is None  # one job: no crowd


def test_sqlite_connections_wait_for_locks(tmp_path):
    store.wait_for_locks(f"sqlite:///{tmp_path / 'x.db'}")
    store.wait_for_locks(f"sqlite:///{tmp_path / 'x.db'}")  # idempotent: one listener
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000  # ms: MLflow's start-up checks outlast sqlite3's 5 s
    engine.dispose()


def test_prepare_migrates_under_the_lock_and_warns_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setattr(store, "filesystem_type", lambda path: "ext4")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare(uri)
    store.prepare(uri)
    assert (tmp_path / "mlflow.db").exists() and (tmp_path / "mlflow.db.lock").exists()
    from mlflow.store.db.utils import _get_latest_schema_revision

    engine = sqlalchemy.create_engine(uri)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == \
            _get_latest_schema_revision()
    engine.dispose()
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sciqa:")]
    assert len(warnings) == 1 and "Slurm job array" in warnings[0]


def test_reading_a_missing_store_creates_nothing(cli, tmp_path):
    proc = cli("evaluate", "--run", "0123456789abcdef", cwd=tmp_path, check=False,
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert_one_error(proc, "has no runs yet")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow.db.lock").exists()


# ---------------------------------------------------------------- sciqa server

def test_server_on_every_interface_names_this_machine(tmp_path):
    cmd = store.server_command(tmp_path, "0.0.0.0", 5000, 1)
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert f"{socket.gethostname()}:5000" in allowed and "127.0.0.1:5000" in allowed
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store.public_url("0.0.0.0", 5000) == f"http://{store.machine_name()}:5000" != "http://localhost:5000"
    assert store.public_url("127.0.0.1", 5000) == "http://127.0.0.1:5000"
    assert "--allowed-hosts" not in store.server_command(tmp_path, "127.0.0.1", 5000, 1)


def test_server_port_in_use(cli, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("server", "--port", str(port), "--store", str(tmp_path / "s"), cwd=tmp_path, check=False)
    assert_one_error(proc, f"port {port} on 127.0.0.1 is in use")
    assert not (tmp_path / "s").exists()


def test_server_unwritable_folder(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = cli("server", "--store", str(tmp_path / "file" / "s"), cwd=tmp_path, check=False)
    assert_one_error(proc, "cannot create the folder")


# ---------------------------------------------------------------- under load (real processes)


def _assert_held(result, processes: int, runs: int) -> None:
    assert result.errors == [], result.errors
    assert (result.processes, result.exited_ok, result.runs, result.finished) == (processes, processes, runs, runs)
    assert result.rows_expected == result.rows_metric == result.rows_csv


@pytest.mark.slow  # the load test's processes
def test_concurrent_benchmarks_on_a_fresh_sqlite_store(load_test, tmp_path):
    _assert_held(load_test.sqlite_case(3, 2, tmp_path), processes=3, runs=3)


@pytest.mark.slow  # the load test's processes
def test_concurrent_benchmarks_on_sciqa_server(load_test, tmp_path):
    _assert_held(load_test.server_case(3, 2, tmp_path), processes=3, runs=3)  # server: Ctrl-C exits 0


@pytest.mark.slow  # the load test's processes
def test_identical_benchmarks_on_a_fresh_store_make_one_run(load_test, tmp_path):
    _assert_held(load_test.identical_case(2, tmp_path), processes=2, runs=1)
