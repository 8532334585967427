"""Many jobs, one store: a local sqlite tracking store that survives concurrent first use, writers
that wait for each other, a warning when the store cannot take the load, and ``sciqa server``.

Why: MLflow 3.17 creates and migrates a sqlite store in ``SqlAlchemyStore.__init__`` whenever its
tables are missing, with no lock (``_all_tables_exist`` then ``_initialize_tables``: ``create_all``
and alembic ``upgrade heads``; only the jobs and workspace stores use ``_safe_initialize_tables``).
Two processes that open a fresh ``mlflow.db`` at once both migrate it, and one crashes with
``alembic … Online migration expected to match one row … 0 found`` or ``sqlite3.OperationalError:
table _alembic_tmp_… already exists`` (the race of daizutabi/hydraflow#245).

The mechanism, chosen from how MLflow builds its engine (``mlflow/store/db/utils.py``):

- **first use under a file lock.** :func:`prepare` (called by ``tracking.setup()`` before any run
  starts) takes an exclusive ``filelock`` beside the database (``mlflow.db.lock``, so every process
  that shares the file shares the lock, whatever its ``/tmp``) and opens MLflow's store inside it.
  MLflow caches the store per URI for the life of the process, so the creation and migration happen
  there, once, under the lock; a process that waited finds the schema at head and migrates nothing.
  ``tracking.connect()`` still creates nothing: a store that does not exist is made by ``setup()``.
- **a busy timeout on every sqlite connection.** MLflow's sessions set ``PRAGMA busy_timeout =
  20000``, but its other connections (schema check and inspection at start-up, alembic's migration)
  keep sqlite3's 5 s default and fail with "database is locked" on a busy store. MLflow honours no
  environment variable for sqlite connect arguments (``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE``,
  ``…_POOLCLASS`` and friends tune only the pool; ``connect_args`` are filled only for MySQL TLS),
  and a ``?timeout=`` in the URI would change the URI that names the store (run-lock scope, what
  ``mlflow ui`` is given). So :func:`wait_for_locks` adds a SQLAlchemy ``connect`` listener on the
  ``Pool`` class: each new sqlite3 connection of this process waits up to ``BUSY_TIMEOUT_MS``.
- **saying when sqlite is the wrong tool.** A sqlite file on a network filesystem (its locks are
  unreliable there) or written by a Slurm job array gets one warning line recommending one tracking
  server; :func:`serve` is that server (``sciqa server``), with its database prepared under the same
  lock before ``mlflow server`` starts: one worker process by default (one owner of the sqlite file),
  MLflow's GenAI job runners off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true`` turns them back on),
  and the whole process group stopped on Ctrl-C.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from sciqa.errors import SciqaError
from sciqa.tracking import server_auth

BUSY_TIMEOUT_MS = 60_000  # where MLflow sets none (its sessions set 20 s): start-up checks, migration
LOCK_TIMEOUT_S = 600.0  # a migration never takes this long; a hung holder is then named, not waited on forever
SERVER_START_S = 180.0
WILDCARDS = ("0.0.0.0", "::", "")  # listen on every interface
LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # where a wildcard bind answers locally
# Filesystem types (``/proc/mounts``; ``fuse.X`` counts as X) where sqlite's file locks cannot be trusted.
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs",
                        "glusterfs", "panfs", "pvfs2", "orangefs", "afs", "sshfs", "gcsfuse", "s3fs", "juicefs",
                        "wekafs", "9p"})
_PREPARED: set[str] = set()
_WARNED: set[str] = set()


# ---------------------------------------------------------------- the sqlite file

def sqlite_path(uri: str) -> Path | None:
    """The file of a local sqlite store (``sqlite:///rel.db``, ``sqlite:////abs.db``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(name) if name and name != ":memory:" else None


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (an existing folder), or None. Tried, not guessed:
    ``os.access`` says yes to root on a read-only or immutable folder, and a deleted working folder
    still answers ``stat``; then the lock file could not be made and its lock was waited on for
    LOCK_TIMEOUT_S as if another process held it. The probe file is removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".sciqa-probe-"):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def lock_path(db: Path) -> Path:
    """The lock beside the database: every process that shares the file sees the same lock."""
    return db.with_name(db.name + ".lock")


# ---------------------------------------------------------------- writers wait

def _busy_timeout(dbapi_connection, _record) -> None:
    """SQLAlchemy ``connect`` hook: a sqlite3 connection waits for another writer's lock."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def wait_for_locks(uri: str) -> None:
    """For a sqlite store: every sqlite connection this process opens from now on waits for locks
    (see the module docstring for why a listener and not an environment variable). Idempotent."""
    if sqlite_path(uri) is None:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if not event.contains(Pool, "connect", _busy_timeout):
        event.listen(Pool, "connect", _busy_timeout)


# ---------------------------------------------------------------- first use

def prepare(uri: str) -> None:
    """Before any run: warn when the store cannot take many jobs, then create or migrate it safely."""
    path = sqlite_path(uri)
    if path is None:
        return
    warn_if_unsuited(path)
    migrate(uri)


def migrate(uri: str) -> None:
    """Open the sqlite store once per process under its file lock: MLflow creates or upgrades the
    tables the first time a process opens a store and caches the store per URI, so doing it here,
    locked, leaves no migration for a concurrent process to race on."""
    if uri in _PREPARED:
        return
    from filelock import Timeout

    lock = lock_path(sqlite_path(uri))  # type: ignore[arg-type]
    wait_for_locks(uri)
    try:
        _open_locked(uri, lock)
    except Timeout:
        raise SciqaError(f"tracking store {uri}: another process has held {lock} for {LOCK_TIMEOUT_S:.0f} s "
                         "(a hung migration?); end it, or use another store") from None
    except Exception as exc:  # noqa: BLE001 - an old schema or a damaged file come as several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SciqaError(f"tracking store {uri} cannot be opened: {first}") from None
    _PREPARED.add(uri)


def _open_locked(uri: str, lock: Path) -> None:
    """MLflow opens (creates, migrates) the store while this process holds ``lock``. A filesystem
    without ``flock`` (Lustre mounted without ``-o flock``; filelock 3 raises, 4 falls back to a
    soft lock itself) gets MLflow's own unlocked behaviour: the network-filesystem warning has
    already said what to use instead."""
    from filelock import FileLock
    from mlflow import MlflowClient

    file_lock: FileLock | None = FileLock(str(lock), timeout=LOCK_TIMEOUT_S)
    try:
        file_lock.acquire()
    except NotImplementedError:
        file_lock = None
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    finally:
        if file_lock is not None:
            file_lock.release()


# ---------------------------------------------------------------- when sqlite cannot take the load

def _unescape(field: str) -> str:
    """``/proc/mounts`` writes blanks and backslashes in paths as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _nearest_existing(path: Path) -> Path:
    """The file itself, or its nearest existing folder for a store not created yet."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """Type of the filesystem holding ``path`` (the longest matching mount point in ``mounts``,
    default ``/proc/mounts``); "" when it cannot be told (no /proc, not Linux)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    target, best, kind = _nearest_existing(path), -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape(fields[1]))
        if (point == target or point in target.parents) and len(point.parts) >= best:
            best, kind = len(point.parts), fields[2]  # a later mount over the same point wins
    return kind


def is_network_fs(kind: str) -> bool:
    return kind.removeprefix("fuse.") in NETWORK_FS


def load_warning(path: Path, env: Mapping[str, str] = os.environ, mounts: str | None = None) -> str | None:
    """Why the sqlite file ``path`` will not serve many jobs at once (one line), or None."""
    kind = filesystem_type(path, mounts)
    if is_network_fs(kind):
        why = f"is on a network filesystem ({kind}), where sqlite's file locks are unreliable"
    elif env.get("SLURM_ARRAY_TASK_ID"):
        why = "is written by every task of a Slurm job array, and its one write lock makes them queue or fail"
    else:
        return None
    return (f"sciqa: warning: the tracking store {path} {why}; run one tracking server instead "
            f"(`sciqa server --host 0.0.0.0 --store {path.absolute().parent}`, README \"A shared MLflow server\") "
            "and set MLFLOW_TRACKING_URI=http://HOST:PORT in the jobs")


def warn_if_unsuited(path: Path) -> None:
    """Print :func:`load_warning` on stderr, once per store and process."""
    if str(path) in _WARNED:
        return
    _WARNED.add(str(path))
    message = load_warning(path)
    if message:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- sciqa server

def store_folder(folder: str) -> Path:
    """The server's folder, created if needed; one line when it cannot be written."""
    root = Path(folder).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SciqaError(f"--store {folder}: cannot create the folder ({exc.strerror})") from None
    db = root / "mlflow.db"
    if not os.access(root, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise SciqaError(f"--store {folder}: not writable; choose a folder you can write")
    return root


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, when ``mlflow server`` could not listen on host:port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise SciqaError(f"--host {host}: unknown host or address") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SciqaError(f"port {port} on {host} is in use (another server?); choose one with --port") \
                    from None
            raise SciqaError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def machine_name() -> str:
    """This machine's name for other nodes: the FQDN, unless /etc/hosts maps it to localhost."""
    fqdn = socket.getfqdn()
    return socket.gethostname() if not fqdn or fqdn.startswith("localhost") else fqdn


def public_url(host: str, port: int) -> str:
    """The URL jobs use: the machine's name when the server listens on every interface."""
    name = machine_name() if host in WILDCARDS else host
    return f"http://{f'[{name}]' if ':' in name else name}:{port}"


def server_command(root: Path, host: str, port: int, workers: int) -> list[str]:
    """``mlflow server`` owning ``root/mlflow.db``, proxying artifacts into ``root/artifacts``."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", str(workers)]
    if host in WILDCARDS:  # MLflow accepts only localhost/private-IP Host headers by default
        cmd += ["--allowed-hosts", ",".join(f"{name}:{port}" for name in sorted(_own_names()))]
    if server_auth.needs_auth(host):  # reachable from other nodes: users and passwords (sciqa.tracking.server_auth)
        cmd += ["--app-name", "basic-auth"]
    return cmd


def _own_names() -> set[str]:
    """The names and addresses jobs may use for this machine (the Host header MLflow checks)."""
    names = {machine_name(), socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


def _wait_until_up(proc: subprocess.Popen, url: str) -> None:
    """Block until the server answers /health; one line if it exits or never answers."""
    import requests

    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SciqaError(f"mlflow server exited with code {proc.returncode} before answering (its log is above)")
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SciqaError(f"mlflow server did not answer at {url} within {SERVER_START_S:.0f} s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop the server's whole process group (``mlflow server`` runs uvicorn as a child, and a
    signal to the parent alone leaves it behind; SIGINT makes its job runners print tracebacks):
    SIGTERM, which uvicorn takes as a graceful shutdown, then SIGKILL after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()  # reap the parent: a zombie still counts as a member of the group
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(folder: str, host: str, port: int, workers: int = 1) -> int:
    """Prepare ``folder/mlflow.db`` under its lock, run ``mlflow server`` on it in the foreground,
    print the ``export MLFLOW_TRACKING_URI=…`` line once it answers; return its exit code (0 on
    Ctrl-C or SIGTERM, which stop the server with this command)."""
    check_port(host, port)
    creds = server_auth.credentials() if server_auth.needs_auth(host) else None  # refused before anything is made
    root = store_folder(folder)
    migrate(f"sqlite:///{root / 'mlflow.db'}")
    url = public_url(host, port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too (finally below)
    # MLflow's GenAI job runners (eight huey processes) serve nothing sciqa logs: off unless asked for
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                                              "false")}
    if creds:
        env.update(server_auth.server_env(root, *creds))
    proc = subprocess.Popen(server_command(root, host, port, workers), env=env, start_new_session=True)  # see _stop
    try:
        _wait_until_up(proc, public_url(LOOPBACK.get(host, host), port))  # the name may not resolve here
        if creds:
            server_auth.check_login(public_url(LOOPBACK.get(host, host), port), *creds)
        login = (" The jobs log in as you: MLFLOW_TRACKING_USERNAME/PASSWORD in their environment or "
                 "~/.mlflow/credentials." if creds else "")
        print(f"sciqa: tracking server on {root / 'mlflow.db'} (artifacts: {root / 'artifacts'}); "
              f"Ctrl-C stops it.{login} In the jobs' shells:\nexport MLFLOW_TRACKING_URI={url}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
