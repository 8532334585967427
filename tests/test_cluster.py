"""On a cluster without root: WordNet from nltk's own data, honest dependency lists, `sciqa doctor`,
an authenticated server (issue "On a real cluster"). In-process; the install itself is tests/test_install.py."""
from __future__ import annotations

import ast
import re
import shutil
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import nltk
import pytest

from helpers import free_port, invoke_cli
from sciqa.errors import SciqaError
from sciqa.eval import metrics, wordnet
from sciqa.tracking import store

PREDICTIONS = ["the dog ran quickly to the big house", "a hound sprinted home", "plants need light to grow", ""]
REFERENCES = ["the hound ran fast to the large home", "the dog ran quickly to the house",
              "a plant needs sunlight to grow", "anything"]


def _nltk_data(tmp_path, zipped: bool):
    """An nltk data folder holding WordNet as nltk's downloader leaves it (``corpora/wordnet.zip``) or
    unzipped (``corpora/wordnet/``), made from Debian's files: the same WordNet 3.0."""
    root = tmp_path / ("zipped" if zipped else "folder")
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    wordnet._copy_wordnet(folder)
    if zipped:
        with zipfile.ZipFile(root / "corpora" / "wordnet.zip", "w") as archive:
            archive.writestr("wordnet/", "")
            for path in sorted(folder.iterdir()):
                archive.write(path, f"wordnet/{path.name}")
        shutil.rmtree(folder)
    return root


def _meteor_with(monkeypatch, nltk_path: list[str]):
    monkeypatch.setattr(nltk.data, "path", nltk_path)
    metrics._meteor_helpers.cache_clear()
    try:
        return wordnet.wordnet_source(), metrics._meteor(PREDICTIONS, REFERENCES)
    finally:
        metrics._meteor_helpers.cache_clear()


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_meteor_is_identical_with_nltk_data_and_debian_files(tmp_path, monkeypatch, zipped):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    debian_source, debian = _meteor_with(monkeypatch, [])
    assert debian_source == ("debian", wordnet._DEBIAN_WORDNET)

    data = _nltk_data(tmp_path, zipped)
    monkeypatch.setattr(wordnet, "_DEBIAN_WORDNET", tmp_path / "no-debian")  # nltk's data alone suffice
    shutil.rmtree(tmp_path / "cache")
    nltk_source, from_nltk = _meteor_with(monkeypatch, [str(data)])
    expected = data / "corpora" / ("wordnet.zip" if zipped else "wordnet")
    assert nltk_source == ("nltk data", expected)
    assert not (tmp_path / "cache").exists()  # nothing copied: nltk reads its own data
    assert from_nltk[:3] == debian[:3]
    assert from_nltk[3] != from_nltk[3]  # empty prediction: NaN either way

    from nltk.translate.meteor_score import meteor_score

    class NoWordNet:
        synsets = staticmethod(lambda word: [])

    plain = meteor_score([REFERENCES[0].split()], PREDICTIONS[0].split(), wordnet=NoWordNet())
    assert from_nltk[0] > plain  # the synonyms (hound/dog, fast/quickly, large/big) came from WordNet


def test_nltk_data_come_before_debian_files(tmp_path, monkeypatch):
    data = _nltk_data(tmp_path, zipped=False)
    monkeypatch.setattr(nltk.data, "path", [str(data)])
    assert wordnet.wordnet_source() == ("nltk data", data / "corpora" / "wordnet")
    assert wordnet.ensure_wordnet() == data / "corpora" / "wordnet"


def test_no_wordnet_anywhere_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(wordnet, "_DEBIAN_WORDNET", tmp_path / "no-debian")
    assert wordnet.wordnet_source() is None
    for check in (wordnet.ensure_wordnet, metrics.check_prerequisites):
        with pytest.raises(SciqaError) as error:
            check()
        message = str(error.value)
        assert "\n" not in message
        assert "nltk.downloader -d ~/nltk_data wordnet" in message and "apt-get install wordnet-base" in message


# --------------------------------------------------------------------------- dependencies

ROOT = Path(__file__).resolve().parents[1]
# Declared though src/ never imports them: a library it calls needs them.
NEEDED_WITHOUT_IMPORT = {"tabulate": "pandas' DataFrame.to_markdown",
                         "accelerate": "transformers' device_map='auto' (models/base.py's CPU offload)"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, str]:
    """Distribution -> where pyproject declares it ("" = the dependencies, else the extra's name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", spec).group()): group
            for group, specs in groups.items() for spec in specs}


def _imported() -> dict[str, str]:
    """Third-party top-level module -> a file of src/ importing it (every import, lazy ones too)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"sciqa"}:
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_pyproject_declares_what_src_imports_and_nothing_else():
    declared, providers = _declared(), packages_distributions()
    used = set()
    for module, where in _imported().items():
        candidates = {_canonical(d) for d in providers.get(module, [module])}  # not installed (vllm): its own name
        hits = candidates & declared.keys()
        assert hits, f"{where} imports {module} ({', '.join(sorted(candidates))}): not declared in pyproject.toml"
        used |= hits
    unused = {name for name, group in declared.items() if group == ""} - used - set(NEEDED_WITHOUT_IMPORT)
    assert not unused, f"declared but never imported by src/: {sorted(unused)}"
    for name in NEEDED_WITHOUT_IMPORT:
        assert declared.get(name) == "" and name not in used, name  # a stale entry here fails too


# --------------------------------------------------------------------------- sciqa doctor

def _no_wordnet(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(wordnet, "_DEBIAN_WORDNET", tmp_path / "no-debian")


def test_doctor_shows_the_machine_and_passes_when_nothing_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = invoke_cli("doctor", cwd=tmp_path)
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert {"torch", "CUDA", "WordNet", "MiniLM", "tracking", "HF_HUB_OFFLINE", "cache"} <= set(rows)
    assert "MISSING" not in result.stdout and rows["WordNet"].split()[1] == "ok"
    assert f"sqlite:///{tmp_path}/mlflow.db (sqlite, created on first run)" in rows["tracking"]
    assert not (tmp_path / "mlflow.db").exists()  # a check creates nothing


def test_doctor_exits_2_naming_what_a_step_lacks(tmp_path, monkeypatch):
    _no_wordnet(tmp_path, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    result = invoke_cli("doctor", cwd=tmp_path, check=False)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "WordNet (main, score, evaluate)" in result.stderr and "cannot be reached" in result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith(("WordNet", "tracking"))] == \
        ["MISSING", "MISSING"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert invoke_cli("doctor", "--step", "benchmark", cwd=tmp_path).returncode == 0  # benchmark needs no WordNet


def test_slurm_submission_runs_the_doctor_checks_before_queueing(tmp_path, monkeypatch):
    _no_wordnet(tmp_path, monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = invoke_cli("score", "--adapter-dir", str(tmp_path), "--slurm-gpu", "a100", "--slurm-profile", "local",
                        cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("sciqa: error: not queueing score, the job would fail: WordNet")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "sciqa-slurm").exists()  # nothing made


# --------------------------------------------------------------------------- an authenticated server

PASSWORD = "correct-horse-battery"


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No MLflow credentials in the environment, and a home whose ~/.mlflow/credentials the test writes."""
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".mlflow").mkdir(parents=True)
    return tmp_path / "home" / ".mlflow" / "credentials"


def test_server_beyond_loopback_runs_mlflow_basic_auth(tmp_path):
    assert store.server_command(tmp_path, "0.0.0.0", 5000, 1)[-2:] == ["--app-name", "basic-auth"]
    assert "--app-name" not in store.server_command(tmp_path, "127.0.0.1", 5000, 1)


@pytest.mark.parametrize("case, needle", [
    ("none", "a server other nodes can reach needs credentials: export MLFLOW_TRACKING_USERNAME"),
    ("readable_file", "can be read by others: chmod 600"),
    ("short_password", "shorter than 12 characters"),
])
def test_server_beyond_loopback_refuses_to_start_without_usable_credentials(no_credentials, tmp_path, monkeypatch,
                                                                            case, needle):
    if case != "none":
        password = "xyzzy42" if case == "short_password" else PASSWORD
        no_credentials.write_text(f"[mlflow]\nmlflow_tracking_username = ada\nmlflow_tracking_password = {password}\n")
        no_credentials.chmod(0o644 if case == "readable_file" else 0o600)
    result = invoke_cli("server", "--host", "0.0.0.0", "--port", str(free_port()), "--store", str(tmp_path / "s"),
                        cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert "xyzzy42" not in result.stderr and PASSWORD not in result.stderr + result.stdout  # never echoed
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_server_config_file_is_private_and_holds_no_password(tmp_path):
    env = store.server_env(tmp_path, "ada", PASSWORD)
    config = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config.stat().st_mode & 0o777 == 0o600 and PASSWORD not in config.read_text()
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == PASSWORD and len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
