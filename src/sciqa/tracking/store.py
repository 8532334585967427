"""The tracking store: which one, whether usable, sqlite shared safely by concurrent jobs, and ``sciqa server``."""
import contextlib
import errno
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
import requests
from filelock import FileLock, Timeout

from sciqa.config import redact
from sciqa.errors import SciqaError

LOCK_TIMEOUT_S = 600.0  # a migration never takes this long: a hung holder is named, not waited on forever
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "cephfs",
                        "glusterfs", "panfs", "pvfs2", "orangefs", "afs", "sshfs", "gcsfuse", "s3fs", "juicefs",
                        "wekafs", "9p"})  # where sqlite's file locks fail (fuse.X counts as X)
SERVER_START_S = 180.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # listen everywhere -> answers locally here
HOWTO = ("export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (12+ characters), or put them in "
         "~/.mlflow/credentials ([mlflow] mlflow_tracking_username/mlflow_tracking_password) with chmod 600")
_PREPARED: set[str] = set()  # mlflow and sqlalchemy are imported inside functions: `sciqa --help` stays fast


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"  # `mlflow ui`/`mlflow run`'s default


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
    elif scheme in ("postgresql", "mysql", "mssql"):
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
        dbapi_connection.execute("PRAGMA busy_timeout = 60000")  # sqlite3's 5 s: MLflow's start-up checks time out


def wait_for_locks(uri: str) -> None:
    """Every sqlite connection of this process waits for another writer's lock (MLflow takes no connect args)."""
    if sqlite_path(uri) is None:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if not event.contains(Pool, "connect", _busy_timeout):
        event.listen(Pool, "connect", _busy_timeout)


def prepare(uri: str, warn: bool = True) -> None:
    """Warn when the store cannot take many jobs, then open it once under its lock (MLflow migrates unlocked)."""
    from mlflow import MlflowClient

    path = sqlite_path(uri)
    if path is None or uri in _PREPARED:
        return
    if warn and (message := load_warning(path)):
        print(message, file=sys.stderr, flush=True)
    lock = f"{path}.lock"
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
    target = path.resolve()
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


def credentials() -> tuple[str, str]:
    """The user name and password MLflow's clients will send, checked; one line when unusable."""
    from mlflow.utils.credentials import _get_credentials_path, read_mlflow_creds

    user, password = read_mlflow_creds()
    if not user or not password:
        raise SciqaError(f"a server other nodes can reach needs credentials: {HOWTO}")
    path = Path(_get_credentials_path())
    if not os.environ.get("MLFLOW_TRACKING_PASSWORD") and path.stat().st_mode & 0o077:  # from a file others can read
        raise SciqaError(f"{path} can be read by others: chmod 600 {path}")
    if len(password) < 12:
        raise SciqaError(f"the tracking password is shorter than 12 characters (MLflow refuses it): {HOWTO}")
    return user, password


def server_env(root: Path, user: str, password: str) -> dict[str, str]:
    """Basic-auth beyond loopback, by environment (argv shows in ``ps``): its private config, admin, CSRF key."""
    config = root / "basic_auth.ini"
    config.touch(mode=0o600)
    config.chmod(0o600)  # an older file keeps its mode
    config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{root}/basic_auth.db\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}


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
    if host not in LOOPBACK:  # other nodes ask by name (MLflow accepts localhost/private IPs): users and passwords
        names = {host, machine_name(), socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1", "[::1]"}
        with contextlib.suppress(OSError):
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        cmd += ["--allowed-hosts", ",".join(f"{name}:{port}" for name in sorted(names)), "--app-name", "basic-auth"]
    return cmd


def _wait_until_up(proc: subprocess.Popen, url: str, creds: tuple[str, str] | None) -> None:
    """Block until the server answers a search as the jobs' (an older basic_auth.db may refuse these credentials)."""
    deadline = time.monotonic() + SERVER_START_S
    while proc.poll() is None:
        with contextlib.suppress(requests.RequestException):
            code = requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=creds,
                                timeout=30).status_code
            if code in (401, 403):
                raise SciqaError(f"the server refuses these credentials (HTTP {code}): its users in basic_auth.db "
                                 "were made with another password; use that one, or stop the server and move "
                                 "basic_auth.db away to start over")
            return
        if time.monotonic() > deadline:
            raise SciqaError(f"mlflow server did not answer at {url} within {SERVER_START_S:.0f} s")
        time.sleep(0.5)
    raise SciqaError(f"mlflow server exited with code {proc.returncode} before answering (its log is above)")


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the server's process group (SIGINT makes job runners print tracebacks), then SIGKILL."""
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(proc.pid)
        members = [parent, *parent.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        psutil.wait_procs(members, timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def serve(folder: str, host: str, port: int, workers: int = 1) -> int:
    """Run ``mlflow server`` on a prepared ``folder/mlflow.db`` in the foreground until Ctrl-C or SIGTERM (exit 0)."""
    try:  # fail now, in one line, when `mlflow server` could not listen
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SciqaError(f"port {port} on {host} is in use (another server?); choose one with --port") from None
        raise SciqaError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    creds = credentials() if host not in LOOPBACK else None  # refused before anything is made
    root = store_folder(folder)
    prepare(f"sqlite:///{root / 'mlflow.db'}", warn=False)  # the server is the remedy the warning names
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too (finally below)
    # MLflow's GenAI job runners (eight huey processes) serve nothing sciqa logs: off unless asked for
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **(server_env(root, *creds) if creds else {})}
    proc = subprocess.Popen(server_command(root, host, port, workers), env=env, start_new_session=True)  # see _stop
    try:
        _wait_until_up(proc, public_url(WILDCARDS.get(host, host), port), creds)  # the name may not resolve here
        login = (" The jobs log in as you: MLFLOW_TRACKING_USERNAME/PASSWORD in their environment or "
                 "~/.mlflow/credentials." if creds else "")
        print(f"sciqa: tracking server on {root / 'mlflow.db'} (artifacts: {root / 'artifacts'}); "
              f"Ctrl-C stops it.{login} In the jobs' shells:\nexport MLFLOW_TRACKING_URI={public_url(host, port)}",
              flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
