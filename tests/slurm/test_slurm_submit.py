"""`sciqa <step> --slurm-gpu ...` on the real test cluster with the real `mlflow server` fixture.

    python -m pytest tests/slurm -q          # root; starts slurm/testcluster and an mlflow server

Errors cost one line, exit 2 and leave no MLflow run; a submitted benchmark runs as a job in
the run the CLI created and ends FINISHED with its CSV, job file, job log and job id; a job
requeued mid-run (`scontrol requeue`) resumes its CSV by id in the same run.
"""
from __future__ import annotations

import csv
import io
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import run_cli
from sciqa import slurm

pytestmark = pytest.mark.slurm


TINY = ["--model", "tiny-qwen2-vl", "--max-new-tokens", "8"]


@pytest.fixture
def slurm_env(slurm_cluster, experiment, monkeypatch, tmp_path):
    """Cluster + server + a fresh experiment; jobs write their files under tmp_path."""
    monkeypatch.setenv("SCIQA_SLURM_POLL_SECONDS", "0.5")
    monkeypatch.delenv("SCIQA_SLURM_PROFILE", raising=False)
    return experiment


def all_runs(exp_id: str):
    import mlflow
    from mlflow.entities import ViewType

    return mlflow.search_runs([exp_id], run_view_type=ViewType.ALL, output_format="list")


def one_error_line(proc) -> str:
    """The one error line (the tiny model's first build may print progress bars before it)."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("Writing model shards")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("sciqa: error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["--slurm-gpu", "v100"], r"unknown GPU type 'v100' .*accepted: a100, h100"),
    (["--slurm-gpu", "h100", "--slurm-profile", "nosuch"], r"unknown Slurm profile 'nosuch'.*accepted: .*local"),
    (["--slurm-gpu", "h100", "--slurm-gpus", "5"], r"5 h100 GPUs do not fit one node.*accepted: 1-4"),
    (["--slurm-gpu", "h100", "--slurm-time", "2-00:00:00"], r"exceeds the 1-00:00:00 limit"),
    (["--slurm-gpu", "h100", "--setting", "XYZ"], r"setting"),  # the step's own check, before anything
    (["--slurm-time", "00:10:00"], r"--slurm-time: only for a Slurm job"),
])
def test_bad_input_is_one_line_and_leaves_no_run(cli, slurm_env, tmp_path, args, expected):
    proc = cli("benchmark", *TINY, "--limit", "2", *args, cwd=tmp_path, check=False)
    assert re.search(expected, one_error_line(proc)), proc.stderr
    assert all_runs(slurm_env) == []
    assert not (tmp_path / "sciqa-slurm").exists()


def test_missing_sbatch_is_one_line_and_leaves_no_run(cli, slurm_env, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = cli("benchmark", *TINY, "--limit", "2", "--slurm-gpu", "h100", cwd=tmp_path, check=False,
               env={"PATH": str(empty)})
    assert "sbatch not found on PATH" in one_error_line(proc)
    assert all_runs(slurm_env) == []


def test_cluster_refusal_is_one_line_and_leaves_no_run(cli, slurm_env, tmp_path):
    """A profile that promises a GPU type the cluster lacks: sbatch --test-only says no before any run."""
    text = (Path(slurm.load_profile("local").path).read_text()
            .replace("[gpus.a100]", "[gpus.v100]\npartitions = [\"gpu_4_a100\"]\n\n[gpus.a100]"))
    profile = tmp_path / "wrong.toml"
    profile.write_text(text)
    proc = cli("benchmark", *TINY, "--limit", "2", "--slurm-gpu", "v100", "--slurm-profile", str(profile),
               cwd=tmp_path, check=False)
    assert "the cluster refuses this job" in one_error_line(proc)
    assert all_runs(slurm_env) == []


def test_profiles_and_status_commands(cli, slurm_env, tmp_path):
    out = cli("slurm", "profiles", "--slurm-profile", "bwunicluster", cwd=tmp_path).stdout
    assert "gpu_4_h100" in out and "v100-dev" in out and "bwunicluster (shown)" in out
    proc = cli("slurm", "status", "0123456789abcdef0123456789abcdef", cwd=tmp_path, check=False)
    assert "no MLflow run 0123456789abcdef0123456789abcdef" in one_error_line(proc)


def artifacts(run_id: str) -> set[str]:
    import mlflow

    client = mlflow.MlflowClient()
    found = set()
    for top in client.list_artifacts(run_id):
        found |= {f.path for f in client.list_artifacts(run_id, top.path)} if top.is_dir else {top.path}
    return found


def artifact_rows(run_id: str, path: str) -> list[dict]:
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return list(csv.DictReader(io.StringIO(Path(local).read_text(encoding="utf-8"))))


def ids_of(stdout: str) -> tuple[str, int]:
    run_id = re.search(r"\w+ run: (\w+)", stdout).group(1)
    job_id = int(re.search(r"slurm job: (\d+)", stdout).group(1))
    return run_id, job_id


def test_benchmark_job_end_to_end(slurm_env, tmp_path):
    t0 = time.monotonic()
    secret = "hf_do_not_write_me_anywhere"
    proc = run_cli("benchmark", *TINY, "--limit", "4", "--slurm-gpu", "h100", "--slurm-profile", "local",
                   "--wait", cwd=tmp_path, timeout=240, env={"HF_TOKEN": secret})
    run_id, job_id = ids_of(proc.stdout)
    assert f"slurm job {job_id}: COMPLETED" in proc.stdout and f"mlflow run {run_id}: FINISHED" in proc.stdout

    [run] = all_runs(slurm_env)  # one run: the submit side's, re-opened by the job
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["sciqa.slurm_job_id"] == str(job_id)
    assert (tags["sciqa.slurm_gpu"], tags["sciqa.slurm_partition"]) == ("h100", "gpu_4_h100")
    assert tags["sciqa.slurm_status"] == "COMPLETED" and tags["sciqa.step"] == "benchmark"
    assert run.data.metrics["slurm_restart_count"] == 0 and run.data.metrics["rows"] == 4
    assert {"outputs/validation_QTCH.csv", "slurm/job.sbatch", "slurm/job.log"} <= artifacts(run_id)
    assert len(artifact_rows(run_id, "outputs/validation_QTCH.csv")) == 4

    import mlflow

    sbatch = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="slurm/job.sbatch")).read_text()
    assert f"export MLFLOW_RUN_ID={run_id}" in sbatch and "--requeue" in sbatch
    assert "--slurm" not in sbatch and "TOKEN" not in sbatch and secret not in sbatch
    assert "benchmark --model tiny-qwen2-vl" in sbatch and "--limit 4" in sbatch
    log = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="slurm/job.log")).read_text()
    assert f"job {job_id} start (restart 0)" in log

    status = run_cli("slurm", "status", run_id, cwd=tmp_path).stdout
    assert f"run {run_id}: FINISHED" in status and f"slurm job {job_id}: COMPLETED, restarts 0" in status
    print(f"end to end: {time.monotonic() - t0:.1f} s")


def test_job_that_dies_before_attaching_fails_the_run_with_its_log(slurm_env, tmp_path):
    """--wait on a job whose interpreter is missing: exit 1, the run FAILED with slurm/job.log."""
    text = Path(slurm.load_profile("local").path).read_text().replace('python = "{python}"',
                                                                      'python = "/nonexistent/python"')
    profile = tmp_path / "broken.toml"
    profile.write_text(text)
    proc = run_cli("benchmark", *TINY, "--limit", "2", "--slurm-gpu", "h100", "--slurm-profile", str(profile),
                   "--wait", cwd=tmp_path, check=False)
    run_id, job_id = ids_of(proc.stdout)
    assert proc.returncode == 1, proc.stderr
    assert f"slurm job {job_id}: FAILED" in proc.stdout and f"mlflow run {run_id}: FAILED" in proc.stdout
    [run] = all_runs(slurm_env)
    assert run.info.status == "FAILED" and run.data.tags["sciqa.slurm_status"] == "FAILED"
    assert {"slurm/job.sbatch", "slurm/job.log"} <= artifacts(run_id)


def csv_rows(workdir: Path) -> int:
    files = list(workdir.glob("*/validation_QTCH.csv"))
    if not files:
        return 0
    return len(list(csv.DictReader(io.StringIO(files[0].read_text(encoding="utf-8")))))


def requeue_when(job_id: int, ready, what: str, timeout: float = 180) -> None:
    """Wait until the running job shows ``what`` (``ready()``), `scontrol requeue` it, wait for its end."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert slurm.job_state(job_id) in ("PENDING", "CONFIGURING", "RUNNING"), slurm.job_state(job_id)
        assert time.monotonic() < deadline, f"the job showed no {what} within {timeout} s"
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", str(job_id)], check=True)
    assert slurm.wait_for_job(job_id, timeout=300, poll=0.5) == "COMPLETED"


def test_requeued_benchmark_resumes_in_the_same_run(slurm_env, tmp_path):
    """Submitted the way `mlflow run . -e benchmark -P slurm_gpu=a100` does it (a RUNNING run in
    MLFLOW_RUN_ID), requeued after its first row: one run, every id once, restart count 1."""
    import mlflow

    t0 = time.monotonic()
    limit = 40  # with 32 new tokens a row, long enough (seconds) that the requeue lands mid-run
    client = mlflow.MlflowClient()
    made = client.create_run(slurm_env).info.run_id  # what `mlflow run` does before the command
    proc = run_cli("benchmark", *TINY, "--max-new-tokens", "32", "--limit", str(limit), "--batch-size", "1",
                   "--slurm-gpu", "a100", "--workdir", str(tmp_path / "sciqa-work"),
                   cwd=tmp_path, env={"MLFLOW_RUN_ID": made, "MLFLOW_EXPERIMENT_ID": slurm_env})
    run_id, job_id = ids_of(proc.stdout)
    assert run_id == made
    requeue_when(job_id, lambda: csv_rows(tmp_path / "sciqa-work") >= 1, "a first row")  # mid-run

    [run] = all_runs(slurm_env)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    ids = [r["id"] for r in artifact_rows(run_id, "outputs/validation_QTCH.csv")]
    assert len(ids) == limit and len(set(ids)) == limit  # every id once
    assert run.data.metrics["slurm_restart_count"] == 1 and slurm.job_info(job_id)["Restarts"] == "1"
    generated = [m.value for m in client.get_metric_history(run_id, "rows_generated")]
    assert 0 < generated[-1] < limit, generated  # the restarted job generated only what was missing
    assert run.data.tags["sciqa.slurm_job_id"] == str(job_id) and run.data.tags["sciqa.slurm_status"] == "COMPLETED"
    log = (tmp_path / "sciqa-slurm" / "logs" / f"{job_id}.out").read_text()
    assert "stopped by SIGTERM" in log and "start (restart 1)" in log
    assert "status 75" in log  # the first run exited with the distinctive code
    assert f"job {job_id} start (restart 1)" in Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="slurm/job.log")).read_text()
    print(f"requeue: {time.monotonic() - t0:.1f} s")


def test_requeued_training_resumes_and_matches_uninterrupted(slurm_env, tmp_path, monkeypatch):
    """A training job requeued mid-run (`scontrol requeue`: SIGTERM, checkpoint, restart) finishes
    in the same run, restart count 1, with the per-epoch losses of an uninterrupted run."""
    import mlflow

    args = ["train-prefix", "--variant", "pkv", "--model", "tiny-qwen2-vl", "--limit", "48", "--val-limit", "4",
            "--epochs", "3", "--batch-size", "2", "--prefix-len", "4", "--max-length", "512", "--seed", "3"]
    proc = run_cli(*args, "--slurm-gpu", "h100", "--workdir", str(tmp_path / "sciqa-work"), cwd=tmp_path)
    run_id, job_id = ids_of(proc.stdout)
    requeue_when(job_id, lambda: any((tmp_path / "sciqa-work").glob("*/checkpoints/epoch_1")), "epoch 1")
    [run] = all_runs(slurm_env)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.metrics["slurm_restart_count"] == 1
    log = (tmp_path / "sciqa-slurm" / "logs" / f"{job_id}.out").read_text()
    assert "start (restart 1)" in log and "status 75" in log  # stopped with a checkpoint, then resumed

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"uninterrupted-{time.time_ns()}")  # no cache hit on the job
    clean_id = run_cli(*args, "--workdir", str(tmp_path / "clean"), cwd=tmp_path).stdout.strip().split()[-1]
    client = mlflow.MlflowClient()
    for metric in ("train_loss", "val_loss_golden"):
        resumed = [m.value for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]
        clean = [m.value for m in sorted(client.get_metric_history(clean_id, metric), key=lambda m: m.step)]
        assert len(resumed) == 3 and resumed == pytest.approx(clean, rel=1e-5), metric


def test_requeued_main_resumes_its_training_child_and_finishes(slurm_env, tmp_path):
    """`sciqa main --slurm-gpu`: `scontrol requeue` while a child trains (SIGTERM: a checkpoint, exit
    75) restarts the job, which resumes the parent and that child from its newest checkpoint."""
    import mlflow

    args = ["main", "--variants", "pkv", "--limit", "24", "--eval-limit", "2", "--epochs", "3", "--prefix-len", "2",
            "--train-batch-size", "2", "--batch-size", "4", "--max-new-tokens", "4", "--teacher-max-new-tokens", "64"]
    proc = run_cli(*args, "--slurm-gpu", "h100", "--workdir", str(tmp_path / "sciqa-work"), cwd=tmp_path)
    run_id, job_id = ids_of(proc.stdout)
    requeue_when(job_id, lambda: any((tmp_path / "sciqa-work").glob("*/checkpoints/epoch_1")), "epoch 1", timeout=400)
    runs = all_runs(slurm_env)
    parent = next(r for r in runs if r.info.run_id == run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sciqa.step"] == "main"
    assert parent.data.metrics["slurm_restart_count"] == 1 and "sciqa.failed_step" not in parent.data.tags
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    log = (tmp_path / "sciqa-slurm" / "logs" / f"{job_id}.out").read_text()
    assert "stopped by SIGTERM after checkpoint" in log and "resumed from epoch_" in log
    assert "compare/comparison.csv" in {a.path for a in mlflow.artifacts.list_artifacts(
        run_id=run_id, artifact_path="compare")}
