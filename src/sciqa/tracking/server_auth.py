"""Authentication for ``sciqa server`` bound beyond loopback: MLflow's basic-auth app.

On a cluster's network anyone could read, change or delete the runs of an open server, so a server
that other nodes can reach runs ``mlflow server --app-name basic-auth`` and refuses to start without
credentials. They come the way MLflow's clients (the jobs too) read them: ``MLFLOW_TRACKING_USERNAME``
and ``MLFLOW_TRACKING_PASSWORD`` in the environment, else ``~/.mlflow/credentials`` — a file only its
owner may read. The server gets them through its environment (never its command line, which ``ps``
shows) and its private config file in the store; nothing prints them.

    chmod 600 ~/.mlflow/credentials   # [mlflow] mlflow_tracking_username = … / mlflow_tracking_password = …
    sciqa server --host 0.0.0.0 --store ~/sciqa
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from sciqa.errors import SciqaError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MIN_PASSWORD = 12  # MLflow refuses a shorter admin password
HOWTO = ("export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (12+ characters), or put them in "
         "~/.mlflow/credentials ([mlflow] mlflow_tracking_username/mlflow_tracking_password) with chmod 600")


def needs_auth(host: str) -> bool:
    return host not in LOOPBACK


def credentials() -> tuple[str, str]:
    """The user name and password MLflow's clients will send, checked; one line when unusable."""
    from mlflow.utils.credentials import _get_credentials_path, read_mlflow_creds

    user, password = read_mlflow_creds()
    if not user or not password:
        raise SciqaError(f"a server other nodes can reach needs credentials: {HOWTO}")
    path = Path(_get_credentials_path())
    from_file = not (os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if from_file and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SciqaError(f"{path} can be read by others: chmod 600 {path}")
    if len(password) < MIN_PASSWORD:
        raise SciqaError(f"the tracking password is shorter than {MIN_PASSWORD} characters (MLflow refuses it): {HOWTO}")
    return user, password


def _private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as out:
        out.write(text)


def server_env(root: Path, user: str, password: str) -> dict[str, str]:
    """What ``mlflow server --app-name basic-auth`` needs: its config (users in ``root/basic_auth.db``,
    nobody but the admin allowed anything), the admin it creates on first start, a CSRF secret."""
    config = root / "basic_auth.ini"
    _private_file(config, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                          f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}


def check_login(url: str, user: str, password: str) -> None:
    """The credentials open the running server: an admin created earlier with another password
    (MLflow sets it once, when ``basic_auth.db`` is new) would lock every job out."""
    import requests

    reply = requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                         auth=(user, password), timeout=30)
    if reply.status_code in (401, 403):
        raise SciqaError(f"the server refuses these credentials (HTTP {reply.status_code}): its users in "
                         "basic_auth.db were made with another password; use that one, or stop the server and "
                         "move basic_auth.db away to start over")
