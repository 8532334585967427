"""Jobs from build_job on the real test cluster: resources, MLflow exports, signal forwarding, requeue.

    PYTHONPATH=src python -m pytest tests/slurm -m slurm     # root; starts slurm/testcluster (about 25 s)
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from sciqa import slurm

pytestmark = pytest.mark.slurm

SRC = Path(slurm.__file__).resolve().parents[1]
EXPORTS = {"MLFLOW_RUN_ID": "run0123", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999", "MLFLOW_EXPERIMENT_ID": "42"}
GPU_IDS = {"h100": {"0", "1", "2", "3"}, "a100": {"4", "5", "6", "7"}}  # start.sh's global indices

# The job's workload: logs each start, waits for a forwarded signal; on SIGUSR1 it
# checkpoints and requeues itself, on SIGTERM it just exits; a restarted run finishes.
JOB = r"""
import os, sys, time
from pathlib import Path
from sciqa import slurm
events = Path(sys.argv[1]) / (os.environ["SLURM_JOB_ID"] + ".events")
def log(line):
    with events.open("a") as f:
        f.write(line + "\n")
e = os.environ
log(f"start restart={slurm.restart_count()} partition={e['SLURM_JOB_PARTITION']} "
    f"gpus={e.get('CUDA_VISIBLE_DEVICES')} run={e.get('MLFLOW_RUN_ID')} "
    f"uri={e.get('MLFLOW_TRACKING_URI')} exp={e.get('MLFLOW_EXPERIMENT_ID')}")
if slurm.restart_count() > 0:
    log("resumed, done")
    sys.exit(0)
from sciqa.slurm import job
with job.watch():
    deadline = time.monotonic() + 40
    while not job.requested() and time.monotonic() < deadline:
        time.sleep(0.2)
name = job.signal_name()
log(f"got {name}")
if name == "SIGUSR1":
    log("checkpoint")
    slurm.requeue_self()
    log("requeued")
"""


def submit(tmp_path: Path, gpu: str) -> int:
    profile = slurm.load_profile("local")
    script = slurm.build_job(profile, gpu, [sys.executable, "-c", JOB, str(tmp_path)], f"test-{gpu}",
                             "00:10:00", tmp_path / "logs", {**EXPORTS, "PYTHONPATH": str(SRC)}, tmp_path)
    return slurm.submit(script, tmp_path / "job.sbatch")


def wait_for_line(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} not in {path} after {timeout} s: "
                f"{path.read_text() if path.exists() else '(missing)'}")


def check_first_start(events: str, gpu: str) -> None:
    first = events.splitlines()[0]
    fields = dict(tok.split("=", 1) for tok in first.split()[1:])
    assert fields["restart"] == "0"
    assert fields["partition"] == f"gpu_4_{gpu}"
    assert fields["gpus"] in GPU_IDS[gpu]
    assert (fields["run"], fields["uri"], fields["exp"]) == tuple(EXPORTS.values())


def test_usr1_checkpoints_and_requeues_itself(slurm_cluster, tmp_path):
    job = submit(tmp_path, "a100")
    events = tmp_path / f"{job}.events"
    wait_for_line(events, "start restart=0")
    # what --signal=B:USR1@120 does before the time limit, now: signal the batch shell only
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], check=True)
    assert slurm.wait_for_job(job, timeout=45, poll=0.5) == "COMPLETED"

    text = events.read_text()
    check_first_start(text, "a100")
    assert text.splitlines()[1:4] == ["got SIGUSR1", "checkpoint", "requeued"]
    assert "start restart=1 partition=gpu_4_a100" in text and text.endswith("resumed, done\n")
    info = slurm.job_info(job)
    assert info["Restarts"] == "1" and info["Partition"] == "gpu_4_a100" and info["Requeue"] == "1"
    log = (tmp_path / "logs" / f"{job}.out").read_text()  # --open-mode=append keeps both runs
    assert "got SIGUSR1, forwarding" in log
    assert "start (restart 0)" in log and "start (restart 1)" in log
    assert (tmp_path / "job.sbatch").read_text().startswith("#!/bin/bash")


def test_scontrol_requeue_restarts_with_restart_count(slurm_cluster, tmp_path):
    job = submit(tmp_path, "h100")
    events = tmp_path / f"{job}.events"
    wait_for_line(events, "start restart=0")
    assert slurm.job_state(job) == "RUNNING"
    subprocess.run(["scontrol", "requeue", str(job)], check=True)
    wait_for_line(events, "start restart=1", timeout=40)
    assert slurm.wait_for_job(job, timeout=30, poll=0.5) == "COMPLETED"

    text = events.read_text()
    check_first_start(text, "h100")
    assert "got SIGTERM" in text and "checkpoint" not in text
    assert slurm.job_info(job)["Restarts"] == "1"
    assert slurm.job_state(job) == "COMPLETED"  # from squeue or scontrol once it has left the queue


def test_job_state_of_unknown_job(slurm_cluster):
    assert slurm.job_state(999999) == "UNKNOWN"
