"""The tracking store: which one, whether it can be used, and a sqlite file that concurrent jobs share safely."""
import contextlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psutil
import requests
from filelock import FileLock, Timeout

from sciqa.config import redact
from sciqa.errors import SciqaError

DEFAULT_URI = "sqlite:///mlflow.db"  # what `mlflow ui` and `mlflow run` default to (MLflow >= 3.6)
BUSY_TIMEOUT_MS = 60_000  # MLflow's start-up checks and migration keep sqlite3's 5 s default
LOCK_TIMEOUT_S = 600.0  # a migration never takes this long: a hung holder is named, not waited on forever
_SQL_SCHEMES = ("postgresql", "mysql", "mssql")
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs",
                        "glusterfs", "panfs", "pvfs2", "orangefs", "afs", "sshfs", "gcsfuse", "s3fs", "juicefs",
                        "wekafs", "9p"})  # where sqlite's file locks fail (fuse.X counts as X)
_PREPARED: set[str] = set()  # mlflow and sqlalchemy are imported inside functions: `sciqa --help` stays fast


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The file of a local sqlite store (``sqlite:///rel.db``, ``sqlite:////abs.db``), else None."""
    name = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(name) if name and name != ":memory:" else None


def store_identity() -> str:
    """The store as one string for every process using it (a relative sqlite path made absolute)."""
    path = sqlite_path(uri := tracking_uri())
    return f"sqlite:///{os.path.abspath(path)}" if path else uri


def store_exists() -> bool:
    """False for a sqlite file not created yet: reading it would create it."""
    path = sqlite_path(tracking_uri())
    return path is None or path.exists()


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be made in ``folder``: tried, since ``os.access`` says yes to root on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".sciqa-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_uri(uri: str) -> None:
    """A store sciqa can use (a server that answers), or one line saying what to use instead."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        try:  # fail in seconds, not after MLflow's minutes of retries
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise SciqaError(f"MLflow server at {redact(uri)} cannot be reached ({type(exc).__name__}); start it, "
                             "or unset MLFLOW_TRACKING_URI to log to ./mlflow.db") from None
    elif scheme == "sqlite" and (path := sqlite_path(uri)) is not None:
        if not path.parent.is_dir():  # MLflow would create every missing folder on the way
            raise SciqaError(f"tracking store {uri}: folder '{path.parent}' does not exist; create it, or set "
                             "MLFLOW_TRACKING_URI to a store in an existing folder")
        if why := unwritable_reason(path.parent):
            raise SciqaError(f"tracking store {uri}: folder '{path.parent}' is not writable ({why}); run where you "
                             "can write or set MLFLOW_TRACKING_URI")
    elif scheme in _SQL_SCHEMES:
        import sqlalchemy

        try:
            sqlalchemy.create_engine(uri)
        except ModuleNotFoundError as exc:
            raise SciqaError(f"tracking store {redact(uri)} needs the database driver '{exc.name}': "
                             "pip install it, or use sqlite:///mlflow.db") from None
        except Exception as exc:  # noqa: BLE001 - malformed URLs come as several types
            raise SciqaError(f"tracking store {redact(uri)} is not a valid database URL ({exc})") from None
    elif scheme in ("", "file"):
        raise SciqaError(f"tracking URI '{redact(uri)}' is a file store, which MLflow has deprecated; use "
                         "sqlite:///mlflow.db (`mlflow migrate-filestore` converts old runs) or an http server")
    elif scheme not in ("sqlite", "databricks"):
        raise SciqaError(f"tracking URI '{redact(uri)}': unknown scheme '{scheme}'; accepted: sqlite:///FILE, "
                         "http(s)://HOST:PORT, postgresql://…, mysql://…")


def _busy_timeout(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def wait_for_locks(uri: str) -> None:
    """Every sqlite connection of this process waits for another writer's lock (MLflow takes no connect args)."""
    if sqlite_path(uri) is None:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if not event.contains(Pool, "connect", _busy_timeout):
        event.listen(Pool, "connect", _busy_timeout)


def prepare(uri: str) -> None:
    """Before any run: warn when the store cannot take many jobs, then create or migrate it under its lock."""
    path = sqlite_path(uri)
    if path is None or uri in _PREPARED:
        return
    if message := load_warning(path):
        print(message, file=sys.stderr, flush=True)
    migrate(uri)


def migrate(uri: str) -> None:
    """Open the store once under ``mlflow.db.lock``: MLflow creates a missing schema in every process, unlocked."""
    from mlflow import MlflowClient

    lock = f"{sqlite_path(uri)}.lock"
    wait_for_locks(uri)
    try:
        try:
            held = FileLock(lock, timeout=LOCK_TIMEOUT_S).acquire()
        except NotImplementedError:  # no flock (filelock 3 on Lustre): MLflow's unlocked way, already warned
            held = contextlib.nullcontext()
        with held:
            MlflowClient(uri).search_experiments(max_results=1)
    except Timeout:
        raise SciqaError(f"tracking store {uri}: another process has held {lock} for "
                         f"{LOCK_TIMEOUT_S:.0f} s (a hung migration?); end it, or use another store") from None
    except Exception as exc:  # noqa: BLE001 - an old schema or a damaged file come as several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SciqaError(f"tracking store {uri} cannot be opened: {first}") from None
    _PREPARED.add(uri)


def filesystem_type(path: Path) -> str:
    """Type of the filesystem holding ``path`` (the innermost mount; the last one over a point wins)."""
    target = Path(path).absolute().resolve()
    try:
        mounts = [p for p in psutil.disk_partitions(all=True) if target.is_relative_to(p.mountpoint)]
    except OSError:  # no /proc: not Linux
        return ""
    return max(reversed(mounts), key=lambda p: len(Path(p.mountpoint).parts)).fstype if mounts else ""


def load_warning(path: Path, env: Mapping[str, str] = os.environ) -> str | None:
    """Why the sqlite file ``path`` will not serve many jobs at once (one line), or None."""
    kind = filesystem_type(path)
    if kind.removeprefix("fuse.") in NETWORK_FS:
        why = f"is on a network filesystem ({kind}), where sqlite's file locks are unreliable"
    elif env.get("SLURM_ARRAY_TASK_ID"):
        why = "is written by every task of a Slurm job array, and its one write lock makes them queue or fail"
    else:
        return None
    return (f"sciqa: warning: the tracking store {path} {why}; run one tracking server instead "
            f"(`sciqa server --host 0.0.0.0 --store {path.absolute().parent}`, README \"A shared MLflow server\") "
            "and set MLFLOW_TRACKING_URI=http://HOST:PORT in the jobs")
