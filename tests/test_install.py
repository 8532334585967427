"""Installs and environments as users meet them (issues "On a real cluster" and "PEP 668"): a Python
where sciqa is not installed (what MLflow's env managers build, a fresh environment loading a model),
Debian's externally managed python3, an unprivileged user without /usr/share/wordnet. Real processes
and real installs: the slow tier (`pytest -m slow tests/test_install.py`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from sciqa.data import load_problems

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")
BASIC_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _externally_managed(python: Path) -> bool:
    code = "import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    return python.exists() and subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A venv with this environment's dependencies but without sciqa, as MLflow's env managers build one
    from conda.yaml: a .pth adds our site-packages as a plain folder, so sciqa's editable .pth is never read."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    probe = subprocess.run([python, "-c", "import mlflow, torch; import sciqa"], cwd=venv, capture_output=True, text=True)
    assert "No module named 'sciqa'" in probe.stderr, probe.stderr[-2000:]
    return python


def _env_of(python: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PATH": f"{python.parent}:{env['PATH']}"}  # `python` in MLproject's commands is this one


def _answers_csv(tmp_path: Path, n: int = 3) -> tuple[Path, list]:
    problems = load_problems("sample", "validation", limit=n)
    raw = [json.dumps({"answer": p.answer_text, "solution": p.solution}) for p in problems]
    path = tmp_path / "validation_QTCH.csv"
    pd.DataFrame({"id": [p.id for p in problems], "raw_output": raw}).to_csv(path, index=False)
    return path, problems


def test_mlflow_run_works_where_sciqa_is_not_installed(bare_python, experiment, tmp_path):
    """`mlflow run .` without --env-manager local runs the commands in an environment with the
    dependencies only; the entry points put the checkout's src/ on the path."""
    csv, _ = _answers_csv(tmp_path)
    proc = subprocess.run([bare_python, "-m", "mlflow", "run", str(ROOT), "-e", "evaluate", "--env-manager", "local", "-P", f"csv={csv}"],
                          cwd=tmp_path, env=_env_of(bare_python), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow.search_runs([experiment], output_format="list")
    assert run.info.status == "FINISHED" and run.data.metrics["acc"] == 100
    assert {"bleu1", "bleu4", "rougeL", "meteor", "cosine"} <= set(run.data.metrics)


@pytest.mark.timeout(1200)
def test_registered_adapter_loads_where_sciqa_is_not_installed(bare_python, experiment, tmp_path):
    """The registered pyfunc carries sciqa's code and names only resolvable requirements: loaded in
    a process that cannot import sciqa, it answers as `sciqa score` did."""
    from sciqa.steps.score import ScoreConfig, score
    from sciqa.steps.train import TrainConfig, train
    from sciqa.tracking import runs as tracking

    tracking.setup()
    trained = train(TrainConfig(variant="pkv", teacher=False, register=True, workdir=str(tmp_path / "w"),
                                limit=4, val_limit=2, epochs=1, prefix_len=4, batch_size=2, max_length=0))
    name = "sciqa-tiny-qwen2-vl-pkv-golden"
    (version,) = [v for v in mlflow.MlflowClient().search_model_versions(f"name = '{name}'") if v.run_id == trained.run_id]
    uri = f"models:/{name}/{version.version}"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert "sciqa" not in requirements and any(r.startswith("torch") for r in requirements)

    scored = score(ScoreConfig(adapter=uri, limit=3, batch_size=3, max_new_tokens=4, workdir=str(tmp_path / "s")))
    csv = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=scored.run_id, artifact_path="outputs/validation_QTCH.csv",
                                                          dst_path=str(tmp_path / "d")), dtype=str, keep_default_na=False)
    problems = load_problems("sample", "validation", limit=3)
    frame = pd.DataFrame([{"id": p.id, "question": p.question, "choices": json.dumps(list(p.choices)), "hint": p.hint,
                           "task": p.task, "lecture": p.lecture, "solution": p.solution, "setting": "QTCH"}
                          for p in problems])
    frame.to_json(tmp_path / "input.json", orient="records")
    code = f"""
import importlib.util, json, mlflow, pandas as pd
assert importlib.util.find_spec("sciqa") is None, "sciqa importable before loading"
model = mlflow.pyfunc.load_model({uri!r})
import sciqa
answers = model.predict(pd.read_json({str(tmp_path / 'input.json')!r}, orient="records", dtype=str),
                        params={{"max_new_tokens": 4}})
print(json.dumps({{"sciqa": sciqa.__file__, "answers": list(answers)}}))
"""
    proc = subprocess.run([bare_python, "-c", code], cwd=tmp_path, env=_env_of(bare_python), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/sciqa/" in result["sciqa"]  # the model's own copy of the code
    assert result["answers"] == [csv.set_index("id").loc[p.id, "raw_output"] for p in problems]


def _copy_checkout(dest: Path) -> Path:
    """The checkout's files as a clone would have them (tracked and new, not ignored: no .venv, no mlflow.db)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _distributions(python: Path) -> list[str]:
    code = "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not _externally_managed(DEBIAN_PYTHON), reason="needs Debian's externally managed /usr/bin/python3")
def test_setup_installs_into_a_venv_where_python3_is_externally_managed(tmp_path):
    checkout = _copy_checkout(tmp_path / "sciqa")
    before = _distributions(DEBIAN_PYTHON)
    env = {"PATH": BASIC_PATH, "HOME": os.environ["HOME"], "LANG": "C.UTF-8"}
    setup = subprocess.run(["bash", ".ci/setup.sh"], cwd=checkout, env=env, capture_output=True, text=True, timeout=1700)
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert "externally managed (PEP 668): installing into" in setup.stdout
    assert _distributions(DEBIAN_PYTHON) == before and "sciqa" not in before  # the system Python untouched
    after = subprocess.run(["bash", "-c", ". .ci/activate && command -v python3 && sciqa --help"], cwd=checkout,
                           env=env, capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-3000:]
    assert after.stdout.splitlines()[0] == str(checkout / ".venv" / "bin" / "python3")
    assert "Usage: sciqa" in after.stdout


@pytest.mark.timeout(600)
def test_server_beyond_loopback_logs_in_jobs_and_shuts_out_the_rest(tmp_path):
    """`sciqa server --host 0.0.0.0` runs MLflow's basic-auth app: a job with the credentials in its
    environment logs a run, a request without them gets 401, and the password is in no output,
    command line or file the server writes (only basic_auth.db's hash)."""
    import requests

    from helpers import free_port

    password = "correct-horse-battery"
    port = free_port()
    creds = {"MLFLOW_TRACKING_USERNAME": "ada", "MLFLOW_TRACKING_PASSWORD": password}
    env = {**os.environ, **creds, "HOME": str(tmp_path)}
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 -- the server writes to it until the test ends
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", "server", "--host", "0.0.0.0", "--port", str(port),
                             "--store", str(tmp_path / "store")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while "export MLFLOW_TRACKING_URI" not in (tmp_path / "server.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(1)
        search = f"{url}/api/2.0/mlflow/experiments/search"
        assert requests.get(search, params={"max_results": 1}, timeout=30).status_code == 401
        assert requests.get(search, params={"max_results": 1}, auth=("ada", "wrong-password-123"), timeout=30).status_code == 401
        csv, _ = _answers_csv(tmp_path)
        job = subprocess.run([sys.executable, "-m", "sciqa", "evaluate", "--csv", str(csv)], cwd=tmp_path, timeout=600,
                             env={**env, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True)
        assert job.returncode == 0, job.stderr[-3000:]
        stranger = subprocess.run([sys.executable, "-m", "sciqa", "evaluate", "--csv", str(csv), "--force"], cwd=tmp_path,
                                  env={**{k: v for k, v in env.items() if k not in creds}, "MLFLOW_TRACKING_URI": url},
                                  capture_output=True, text=True, timeout=600)
        assert stranger.returncode != 0
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in _descendants(proc.pid)]
        assert len(commands) >= 2 and not any(password.encode() in c for c in commands)  # sciqa, mlflow, uvicorn
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    written = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.name != "basic_auth.db"]
    assert not any(password.encode() in p.read_bytes() for p in written)
    assert password not in (tmp_path / "server.log").read_text()
    assert (tmp_path / "store" / "basic_auth.ini").stat().st_mode & 0o777 == 0o600


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc: the parent is field 4 of /proc/PID/stat)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found = [root]
    for pid in found:
        found += [child for child, parent in parents.items() if parent == pid]
    return found


NONROOT = "sciqa-nonroot"
NONROOT_SCRIPT = r"""
set -euo pipefail
cd "$HOME/sciqa"
test ! -e /usr/share/wordnet/index.noun  # Debian's WordNet is hidden in this mount namespace
# The README's "On a cluster (no root)" steps (the WordNet download stands in as ~/nltk_data, made beforehand)
python3 -m venv "$HOME/venv" && . "$HOME/venv/bin/activate"
pip install -q torch==2.13.0
pip install -q -e .
bash .ci/wordnet.sh
sciqa doctor
sciqa evaluate --csv "$HOME/validation_QTCH.csv"
# Without nltk's data either, and no root or sudo: one line naming both ways, exit 1
mkdir -p "$HOME/empty"
if HOME="$HOME/empty" bash .ci/wordnet.sh 2>"$HOME/wordnet.err"; then exit 3; fi
"""


def _can_switch_user() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("useradd", "runuser", "unshare", "mount"))


@pytest.mark.timeout(2400)
@pytest.mark.skipif(not _can_switch_user() or not _externally_managed(DEBIAN_PYTHON),
                    reason="needs root (to make an unprivileged user and a mount namespace) and Debian's python3")
def test_no_root_install_without_debian_wordnet_evaluates_all_metrics(tmp_path):
    """The README's cluster install as an unprivileged user, /usr/share/wordnet hidden by an empty
    tmpfs in a mount namespace, WordNet from ~/nltk_data: every metric of a CSV is computed."""
    from sciqa.eval.wordnet import _copy_wordnet

    if subprocess.run(["id", NONROOT], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", NONROOT], check=True)
    home = Path(f"/tmp/{NONROOT}-{tmp_path.name}")  # pytest's tmp_path is root's own (mode 700)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o755)
    try:
        _copy_checkout(home / "sciqa")
        wordnet = home / "nltk_data" / "corpora" / "wordnet"
        wordnet.mkdir(parents=True)
        _copy_wordnet(wordnet)  # what `python -m nltk.downloader -d ~/nltk_data wordnet` leaves (unzipped)
        csv, problems = _answers_csv(home)
        pip_conf = Path.home() / ".config" / "pip" / "pip.conf"  # this machine's package index, as the user's own
        if pip_conf.is_file():
            (home / ".config" / "pip").mkdir(parents=True)
            shutil.copy(pip_conf, home / ".config" / "pip" / "pip.conf")
        subprocess.run(["chown", "-R", f"{NONROOT}:{NONROOT}", str(home)], check=True)
        (home / "script.sh").write_text(NONROOT_SCRIPT)
        env = ["env", "-i", f"HOME={home}", f"USER={NONROOT}", f"PATH={BASIC_PATH}", "LANG=C.UTF-8", "HF_HUB_OFFLINE=1",
               f"MLFLOW_TRACKING_URI=sqlite:///{home}/mlflow.db",
               *(f"{k}={v}" for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_CERT_", "REQUESTS_CA")))]
        inner = " ".join(["mount -t tmpfs -o size=1m none /usr/share/wordnet &&", "exec runuser -u", NONROOT, "--",
                          *env, "bash", str(home / "script.sh")])
        started = time.monotonic()
        proc = subprocess.run(["unshare", "--mount", "bash", "-c", inner], capture_output=True, text=True, timeout=2300)
        seconds = time.monotonic() - started
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        assert f"wordnet: nltk data ({wordnet}); skipping apt" in proc.stdout
        assert f"nltk data: {wordnet}" in next(line for line in proc.stdout.splitlines() if line.startswith("WordNet"))
        error = (home / "wordnet.err").read_text()
        assert error.count("\n") == 1 and "nltk.downloader -d ~/nltk_data wordnet" in error and "wordnet-base" in error
        mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
        assert run.data.metrics["acc"] == 100
        assert {"bleu1", "bleu4", "rougeL", "meteor", "cosine", "overall"} <= set(run.data.metrics)
        assert run.data.metrics["meteor"] > 0  # WordNet was read: METEOR ran
        print(f"no-root install and evaluate: {seconds:.0f} s")
    finally:
        shutil.rmtree(home, ignore_errors=True)
        mlflow.set_tracking_uri(None)
