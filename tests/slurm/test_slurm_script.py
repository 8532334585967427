"""The sbatch script per profile and GPU type, against golden files; profile errors.

Regenerate the golden files after an intended change:
    SCIQA_REGEN_GOLDEN=1 PYTHONPATH=src python -m pytest tests/slurm/test_slurm_script.py
and review the diff.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from sciqa import slurm
from sciqa.errors import SciqaError

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("SCIQA_REGEN_GOLDEN") == "1"
EXPORTS = {"MLFLOW_RUN_ID": "0123456789abcdef", "MLFLOW_TRACKING_URI": "http://mlflow.example.org:5000",
           "MLFLOW_EXPERIMENT_ID": "7"}
COMMAND = ["python", "-m", "sciqa", "train-prefix", "--teacher", "true", "--model", "Qwen/Qwen2-VL-2B-Instruct"]

# (profile, gpu type, GPUs, expected partition, expected gres, expected time)
CASES = [
    ("local", "h100", 1, "gpu_4_h100", "gpu:h100:1", "01:00:00"),
    ("local", "a100", 1, "gpu_4_a100", "gpu:a100:1", "01:00:00"),
    ("bwunicluster", "v100", 1, "gpu_4", "gpu:1", "08:00:00"),
    ("bwunicluster", "v100", 8, "gpu_8", "gpu:8", "08:00:00"),
    ("bwunicluster", "v100-dev", 1, "dev_gpu_4", "gpu:1", "00:30:00"),
    ("bwunicluster", "a100", 1, "gpu_4_a100", "gpu:1", "08:00:00"),
    ("bwunicluster", "h100", 4, "gpu_4_h100", "gpu:4", "08:00:00"),
]


def render(profile_name: str, gpu: str, gpus: int, **kw) -> str:
    profile = slurm.load_profile(profile_name)
    return slurm.build_job(profile, gpu, COMMAND, "sciqa-train_prefix", kw.pop("time", None),
                           "/srv/sciqa/logs", dict(EXPORTS), "/srv/sciqa", gpus=gpus, **kw)


def sbatch_options(script: str) -> dict[str, str]:
    return {m[0]: m[1] for m in re.findall(r"^#SBATCH --(\S+)[ \t]*(.*)$", script, re.M)}


def test_every_gpu_type_has_a_golden_case():
    for name in ("local", "bwunicluster"):
        covered = {c[1] for c in CASES if c[0] == name}
        assert covered == set(slurm.load_profile(name).gpus)


@pytest.mark.parametrize("profile_name,gpu,gpus,partition,gres,time", CASES)
def test_script_matches_golden(profile_name, gpu, gpus, partition, gres, time):
    script = render(profile_name, gpu, gpus)
    golden = GOLDEN / f"{profile_name}-{gpu}-x{gpus}.sbatch"
    if REGEN:
        golden.write_text(script)
    assert script == golden.read_text(), f"{golden} differs; SCIQA_REGEN_GOLDEN=1 rewrites it"

    opts = sbatch_options(script)
    assert opts["partition"] == partition
    assert opts["gres"] == gres
    assert opts["time"] == time
    assert opts["requeue"] == ""
    assert opts["signal"] == "B:USR1@120"
    assert opts["open-mode"] == "append"
    assert opts["output"] == "/srv/sciqa/logs/%j.out"
    assert "error" not in opts  # stderr goes to the same log
    assert script.startswith("#!/bin/bash\n")
    for key, value in EXPORTS.items():
        assert f"\nexport {key}={value}\n" in script


def test_script_keeps_dollars_for_bash():
    script = render("local", "h100", 1)
    assert "\\$" not in script  # convert=False: no here-doc escaping in a job file
    assert 'child=$!' in script and 'wait "$child"' in script
    assert "trap 'forward USR1' USR1" in script and "trap 'forward TERM' TERM" in script
    assert re.search(r"^python -m sciqa .* &$", script, re.M)


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n"], input=render("bwunicluster", "h100", 1), text=True, check=True)


def test_profile_setup_and_options():
    script = render("bwunicluster", "h100", 1, time="2-00:00:00", signal_seconds=300)
    assert "\nmodule load devel/cuda/12.4\nsource ~/venvs/sciqa/bin/activate\n" in script
    opts = sbatch_options(script)
    assert opts["time"] == "2-00:00:00" and opts["signal"] == "B:USR1@300"
    assert opts["cpus-per-task"] == "16" and opts["mem"] == "127500M"


def test_values_are_shell_quoted():
    profile = slurm.load_profile("local")
    script = slurm.build_job(profile, "h100", ["echo", "a b", "$HOME"], "x", None, "/tmp/l",
                             {"SCIQA_NOTE": "it's $x"}, "/tmp")
    assert "echo 'a b' '$HOME' &" in script
    assert """export SCIQA_NOTE='it'"'"'s $x'""" in script


def test_unknown_gpu_type_lists_accepted():
    with pytest.raises(SciqaError, match=r"^unknown GPU type 'x' for profile 'local'; accepted: a100, h100$"):
        slurm.load_profile("local").gpu("x")
    with pytest.raises(SciqaError, match=r"accepted: a100, h100, v100, v100-dev$"):
        render("bwunicluster", "k80", 1)


def test_unknown_profile_lists_accepted():
    with pytest.raises(SciqaError, match=r"unknown Slurm profile 'nope'; accepted: bwunicluster, local"):
        slurm.load_profile("nope")
    with pytest.raises(SciqaError, match="not found"):
        slurm.load_profile("/nonexistent/x.toml")


def test_too_many_gpus_and_too_long_time():
    with pytest.raises(SciqaError, match=r"accepted: 1-4$"):
        slurm.load_profile("local").gpu("h100", 5)
    with pytest.raises(SciqaError, match=r"exceeds the 00:30:00 limit of partition dev_gpu_4"):
        render("bwunicluster", "v100-dev", 1, time="01:00:00")
    with pytest.raises(SciqaError, match="no room to checkpoint"):
        render("local", "h100", 1, time="2")


@pytest.mark.parametrize("key,value", [
    ("MLFLOW_TRACKING_TOKEN", "t"), ("MLFLOW_TRACKING_PASSWORD", "p"),
    ("MLFLOW_TRACKING_USERNAME", "u"), ("AWS_SECRET_ACCESS_KEY", "s"), ("HF_TOKEN", "h"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "c"), ("LAB_AUTH", "a"), ("SESSION_COOKIE", "k"), ("PRIVATE_KEY", "p"),
    ("MLFLOW_TRACKING_URI", "https://user:pw@mlflow.example.org"),
])
def test_secrets_are_refused(key, value):
    profile = slurm.load_profile("local")
    with pytest.raises(SciqaError, match=f"refusing to write {key}"):
        slurm.build_job(profile, "h100", ["true"], "x", None, "/tmp/l", {**EXPORTS, key: value}, "/tmp")


def test_profile_selection(monkeypatch, tmp_path):
    monkeypatch.delenv(slurm.PROFILE_ENV, raising=False)
    assert slurm.load_profile(None).name == "local"
    monkeypatch.setenv(slurm.PROFILE_ENV, "bwunicluster")
    assert slurm.load_profile(None).name == "bwunicluster"
    own = tmp_path / "mine.toml"
    own.write_text('[partitions.p]\ngpus_per_node = 2\ncpus_per_gpu = 1\nmem_per_gpu_mb = 10\n'
                   'time = "10"\nmax_time = "20"\n[gpus.l4]\npartitions = ["p"]\n')
    script = slurm.build_job(slurm.load_profile(str(own)), "l4", ["true"], "x", None, "/tmp/l", {}, "/tmp", gpus=2)
    assert sbatch_options(script)["gres"] == "gpu:l4:2"
    monkeypatch.setenv(slurm.PROFILE_DIR_ENV, str(tmp_path))
    assert "mine" in slurm.list_profiles() and slurm.load_profile("mine").path == own


def test_bad_profile_lists_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[partitions.p]\ngpus = 2\n[gpus.l4]\npartitions = ["q"]\n')
    with pytest.raises(SciqaError, match=r"\[partitions.p\]: unknown keys gpus; missing keys cpus_per_gpu"):
        slurm.load_profile(str(bad))


def test_models_and_describe():
    profile = slurm.load_profile("bwunicluster")
    assert profile.gpus_for("mistralai/Pixtral-12B-2409") == 4
    assert profile.gpus_for("some/unknown-model") == 1
    table = slurm.describe_profile(profile)
    assert "gpu_4_h100" in table and "dev_gpu_4" in table and "module load devel/cuda/12.4" in table


def test_parse_time():
    assert slurm.parse_time("30") == 1800
    assert slurm.parse_time("1:30") == 90
    assert slurm.parse_time("01:00:00") == 3600
    assert slurm.parse_time("2-00:00:00") == 2 * 86400
    assert slurm.parse_time("1-2") == 26 * 3600
    with pytest.raises(SciqaError, match="bad Slurm time"):
        slurm.parse_time("soon")


def test_submit_without_sbatch(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SciqaError, match=r"^sbatch not found on PATH: "):
        slurm.submit("#!/bin/bash\ntrue\n", tmp_path / "job.sbatch")


def test_submit_reports_sbatch_stderr(monkeypatch, tmp_path):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed:' >&2\n"
                    "echo 'Invalid partition name specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(SciqaError, match=r"failed \(exit 1\): sbatch: error: Batch job submission "
                                         r"failed: Invalid partition name specified$"):
        slurm.submit("#!/bin/bash\ntrue\n", tmp_path / "job.sbatch")


def test_requeue_self_outside_a_job(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SciqaError, match="only inside a Slurm job"):
        slurm.requeue_self()
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert slurm.current_job_id() == "12"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert slurm.current_job_id() == "10_2"
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SciqaError, match=r"scontrol not found on PATH inside job 10_2"):
        slurm.requeue_self()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert slurm.restart_count() == 3
