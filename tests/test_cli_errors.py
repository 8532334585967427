"""Bad input: one line on stderr naming the bad value and the accepted ones, exit 2, nothing written."""
import time

import mlflow
import pytest

from helpers import free_port


@pytest.mark.parametrize("args,needle", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--dataset", "./missing-folder"], "dataset folder './missing-folder' does not exist"),
    (["--split", "dev"], "unknown split 'dev'; accepted: train, validation (val), test"),
    (["--setting", "QTX"], "unknown setting 'QTX'; accepted: QTCH, QTCHL, QTCHLS, QTCHS"),
    (["--backend", "tgi"], "unknown backend 'tgi'; accepted: hf"),
    (["--dtype", "int3"], "unknown dtype 'int3'; accepted: auto"),
])
def test_bad_benchmark_input(args, needle, cli, experiment, tmp_path):
    proc = cli("benchmark", *args, "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert mlflow.search_runs([experiment], output_format="list") == []
    assert not any((tmp_path / "w").rglob("*.csv"))


def test_unwritable_workdir(cli, experiment, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = cli("benchmark", "--workdir", str(tmp_path / "file" / "w"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert mlflow.search_runs([experiment], output_format="list") == []


def test_server_down_fails_fast(cli, tmp_path):
    t0 = time.time()
    proc = cli("benchmark", "--limit", "1", cwd=tmp_path, check=False,
               env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode == 2 and time.time() - t0 < 30  # seconds, not MLflow's minutes of retries
    assert "cannot be reached" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
