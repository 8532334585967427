"""``sciqa server``: one ``mlflow server`` owning STORE/mlflow.db; beyond loopback with MLflow's basic-auth app,
whose credentials reach it through its environment, never its command line (``ps``)."""
import contextlib
import errno
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
from mlflow.utils.credentials import _get_credentials_path, read_mlflow_creds

from sciqa.errors import SciqaError
from sciqa.tracking.store import migrate

SERVER_START_S = 180.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # listen everywhere -> answers locally here
MIN_PASSWORD = 12  # MLflow refuses a shorter admin password
HOWTO = ("export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (12+ characters), or put them in "
         "~/.mlflow/credentials ([mlflow] mlflow_tracking_username/mlflow_tracking_password) with chmod 600")


def credentials() -> tuple[str, str]:
    """The user name and password MLflow's clients will send, checked; one line when unusable."""
    user, password = read_mlflow_creds()
    if not user or not password:
        raise SciqaError(f"a server other nodes can reach needs credentials: {HOWTO}")
    path = Path(_get_credentials_path())
    from_file = not (os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if from_file and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SciqaError(f"{path} can be read by others: chmod 600 {path}")
    if len(password) < MIN_PASSWORD:
        raise SciqaError(f"the tracking password is shorter than {MIN_PASSWORD} characters (MLflow refuses it): "
                         + HOWTO)
    return user, password


def server_env(root: Path, user: str, password: str) -> dict[str, str]:
    """Basic-auth's private config (users in root/basic_auth.db, nobody but the admin allowed), admin, CSRF key."""
    config = root / "basic_auth.ini"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{root / 'basic_auth.db'}\n"
                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, when ``mlflow server`` could not listen on host:port."""
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except socket.gaierror:
        raise SciqaError(f"--host {host}: unknown host or address") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SciqaError(f"port {port} on {host} is in use (another server?); choose one with --port") from None
        raise SciqaError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


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
    if host in WILDCARDS:  # MLflow accepts only localhost/private-IP Host headers by default
        names = {machine_name(), socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1"}
        with contextlib.suppress(OSError):
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        cmd += ["--allowed-hosts", ",".join(f"{name}:{port}" for name in sorted(names))]
    if host not in LOOPBACK:  # other nodes can reach it: users and passwords
        cmd += ["--app-name", "basic-auth"]
    return cmd


def _wait_until_up(proc: subprocess.Popen, url: str, creds: tuple[str, str] | None) -> None:
    """Block until the server answers /health, then check the credentials open it (an older basic_auth.db may not)."""
    deadline = time.monotonic() + SERVER_START_S
    while proc.poll() is None:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/health", timeout=2).ok:
                break
        if time.monotonic() > deadline:
            raise SciqaError(f"mlflow server did not answer at {url} within {SERVER_START_S:.0f} s")
        time.sleep(0.5)
    else:
        raise SciqaError(f"mlflow server exited with code {proc.returncode} before answering (its log is above)")
    reply = requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=creds,
                         timeout=30) if creds else None
    if reply is not None and reply.status_code in (401, 403):
        raise SciqaError(f"the server refuses these credentials (HTTP {reply.status_code}): its users in "
                         "basic_auth.db were made with another password; use that one, or stop the server and "
                         "move basic_auth.db away to start over")


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
    check_port(host, port)
    creds = credentials() if host not in LOOPBACK else None  # refused before anything is made
    root = store_folder(folder)
    migrate(f"sqlite:///{root / 'mlflow.db'}")
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
