"""`sciqa grid ... --slurm-gpu` on the real test cluster: one job array, a task per cell in its child
run, one task requeued mid-run, the table collected by the dependent job; `--slurm-gpu auto`.

    python -m pytest tests/slurm/test_grid_slurm.py -q      # root; starts slurm/testcluster
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from helpers import run_cli
from sciqa import slurm

pytestmark = pytest.mark.slurm

GRID = ["grid", "benchmark", "--model", "tiny-qwen2-vl,tiny-llava", "--setting", "QTCH,QTCHS", "--batch-size", "1",
        "--answer-mode", "choice"]


@pytest.fixture
def slurm_env(slurm_cluster, experiment, monkeypatch):
    monkeypatch.delenv("SCIQA_SLURM_PROFILE", raising=False)
    return experiment


def _cells(parent_id: str) -> list[dict]:
    import mlflow

    return json.loads(mlflow.artifacts.load_text(f"runs:/{parent_id}/grid/cells.json"))


def _requeue_mid_run(workdir: Path, cells: list[dict], limit: int, timeout: float = 300) -> str:
    """`scontrol requeue` the first task whose CSV has some rows but not all; its run id."""
    by_run = {c["run_id"]: c["job"] for c in cells}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for csv in workdir.glob("*/validation_*.csv"):
            owner = (csv.parent / "run_id").read_text().strip() if (csv.parent / "run_id").exists() else ""
            rows = csv.read_text(encoding="utf-8").count("\n") - 1
            if owner in by_run and 1 <= rows < limit // 2:
                subprocess.run(["scontrol", "requeue", by_run[owner]], check=True)
                return owner
        time.sleep(0.2)
    raise AssertionError(f"no task showed a first row within {timeout} s")


@pytest.mark.timeout(900)
def test_grid_is_one_array_with_a_requeued_task_and_a_collected_table(slurm_env, tmp_path):
    import mlflow

    limit = 16
    proc = run_cli(*GRID, "--limit", str(limit), "--max-new-tokens", "32", "--workdir", str(tmp_path / "w"),
                   "--slurm-gpu", "a100", "--slurm-max-running", "2", cwd=tmp_path)
    parent_id = re.search(r"grid run: (\w+)", proc.stdout).group(1)
    array_id = re.search(r"slurm array (\d+): 4 x a100", proc.stdout).group(1)
    collect_id = re.search(r"slurm job (\d+): collects", proc.stdout).group(1)
    cells = _cells(parent_id)
    assert [c["job"] for c in cells] == [f"{array_id}_{k}" for k in range(4)]
    requeued = _requeue_mid_run(tmp_path / "w", cells, limit)
    assert slurm.wait_for_job(collect_id, timeout=800, poll=1.0) == "COMPLETED"

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sciqa.step"] == "grid"
    assert parent.data.params["grid_axes"] == "model=tiny-qwen2-vl,tiny-llava;setting=QTCH,QTCHS"
    for k, cell in enumerate(cells):  # each task ran in its own child run, nested under the parent
        run = client.get_run(cell["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["sciqa.slurm_job_id"] == f"{array_id}_{k}"
        assert (run.data.tags["sciqa.model"], run.data.tags["sciqa.setting"]) == (
            cell["values"]["model"], cell["values"]["setting"])
        assert run.data.metrics["rows"] == limit and "acc" in run.data.metrics  # evaluated by the collect job
    again = client.get_run(requeued)
    assert again.data.metrics["slurm_restart_count"] == 1
    assert 0 < again.data.metrics["rows_generated"] < limit  # the restarted task generated only what was missing
    sbatch = mlflow.artifacts.load_text(f"runs:/{parent_id}/slurm/array-a100.sbatch")
    assert "--array               0-3%2" in sbatch and sbatch.count("export MLFLOW_RUN_ID=") == 4
    table = mlflow.artifacts.load_text(f"runs:/{parent_id}/grid/table.csv")
    assert table.count("FINISHED") == 4 and all(c["run_id"] in table for c in cells)

    status = run_cli("slurm", "status", parent_id, cwd=tmp_path).stdout
    assert f"grid run {parent_id}: FINISHED" in status
    assert status.count("FINISHED, slurm") == 4 and "restarts 1" in status


def _profile(tmp_path: Path, h100_gb: float, a100_gb: float) -> Path:
    text = (Path(slurm.load_profile("local").path).read_text()
            .replace("memory_gb = 80", f"memory_gb = {h100_gb:.4f}").replace("memory_gb = 40", f"memory_gb = {a100_gb:.4f}"))
    path = tmp_path / f"sized-{h100_gb:.3f}-{a100_gb:.3f}.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(600)
def test_auto_gpu_takes_the_type_that_fits_then_the_idler_one(slurm_env, tmp_path):
    import mlflow

    from sciqa.slurm import memory
    from sciqa.steps.benchmark import BenchmarkConfig

    parts = memory.estimate("benchmark", BenchmarkConfig(model="tiny-llava", batch_size=1, max_new_tokens=8))
    est_gb = sum(parts.values()) / memory.GB
    args = ["grid", "benchmark", "--model", "tiny-llava", "--setting", "QTCH,QTCHS", "--limit", "2",
            "--max-new-tokens", "8", "--batch-size", "1", "--slurm-gpu", "auto"]

    def submitted(profile: Path) -> tuple[str, str]:
        proc = run_cli(*args, "--slurm-profile", str(profile), cwd=tmp_path)
        parent_id = re.search(r"grid run: (\w+)", proc.stdout).group(1)
        arrays = re.findall(r"slurm array (\d+): 2 x (\w+)", proc.stdout)
        assert len(arrays) == 1, proc.stdout
        subprocess.run(["scancel", arrays[0][0], re.search(r"slurm job (\d+): collects", proc.stdout).group(1)])
        cell = mlflow.MlflowClient().get_run(_cells(parent_id)[0]["run_id"])
        assert float(cell.data.tags["sciqa.gpu_estimate_gb"]) == pytest.approx(est_gb, abs=1e-3)
        assert "estimated peak" in proc.stdout
        return arrays[0][1], cell.data.tags["sciqa.gpu_candidates"]

    # only the larger type holds the estimate
    gpu, candidates = submitted(_profile(tmp_path, 2 * est_gb, 0.5 * est_gb))
    assert gpu == "h100" and candidates == "h100:4"
    # both hold it and both are idle: the smaller; the smaller busy: the idler one
    both = _profile(tmp_path, 3 * est_gb, 1.5 * est_gb)
    assert submitted(both) == ("a100", "a100:4,h100:4")
    single = run_cli("benchmark", "--model", "tiny-llava", "--limit", "2", "--max-new-tokens", "8", "--batch-size", "1",
                     "--slurm-gpu", "auto", "--slurm-profile", str(both), cwd=tmp_path)  # one step: the same choice
    subprocess.run(["scancel", re.search(r"slurm job: (\d+)", single.stdout).group(1)])
    tags = mlflow.get_run(re.search(r"benchmark run: (\w+)", single.stdout).group(1)).data.tags
    assert (tags["sciqa.slurm_gpu"], tags["sciqa.slurm_partition"], tags["sciqa.gpu_candidates"]) == (
        "a100", "gpu_4_a100", "a100:4,h100:4")
    hog = subprocess.run(["sbatch", "--parsable", "-p", "gpu_4_a100", "--gres", "gpu:a100:4", "-c", "1",
                          "-o", "/dev/null", "--wrap", "sleep 300"], capture_output=True, text=True, check=True)
    hog_id = hog.stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while slurm.job_state(hog_id) != "RUNNING":
            assert time.monotonic() < deadline, "the job holding the a100s did not start"
            time.sleep(0.3)
        assert submitted(both) == ("h100", "a100:0,h100:4")
    finally:
        subprocess.run(["scancel", hog_id])

    # nothing fits: one line naming the estimate and the largest GPU, no run
    proc = run_cli(*args, "--slurm-profile", str(_profile(tmp_path, 0.5 * est_gb, 0.25 * est_gb)),
                   cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "no GPU type fits" in lines[0] and f"{est_gb:.1f} GB" in lines[0] and "largest GPU is h100" in lines[0]


@pytest.mark.timeout(300)
def test_cells_needing_other_gpu_counts_go_into_their_own_array(slurm_env, tmp_path):
    """The profile's [models] GPU counts hold in a grid: a model listed with 2 GPUs gets its own array."""
    text = Path(slurm.load_profile("local").path).read_text().replace(
        '[models]\n', '[models]\n"tiny-llava" = 2\n')
    profile = tmp_path / "two.toml"
    profile.write_text(text)
    proc = run_cli("grid", "benchmark", "--model", "tiny-qwen2-vl,tiny-llava", "--limit", "2", "--slurm-gpu", "h100",
                   "--slurm-profile", str(profile), cwd=tmp_path)
    arrays = dict((count, job) for job, count in re.findall(r"slurm array (\d+): 1 x h100 \((\d) GPU each\)", proc.stdout))
    collect = re.search(r"slurm job (\d+): collects", proc.stdout).group(1)
    try:
        assert set(arrays) == {"1", "2"}, proc.stdout
        info = slurm.job_info(collect)
        assert all(job in info["Dependency"] for job in arrays.values()), info["Dependency"]
        gres = {count: slurm.job_info(f"{job}_0").get("TresPerNode", "") for count, job in arrays.items()}
        assert gres["1"].endswith("h100:1") and gres["2"].endswith("h100:2"), gres
    finally:
        subprocess.run(["scancel", *arrays.values(), collect])
