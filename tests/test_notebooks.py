"""The notebooks run top to bottom (nbclient, a kernel of this very interpreter) against the test MLflow
server, with tiny sizes through ``SCIQA_NB_*`` variables. They share one experiment and working folder,
in file order, so the small ``main`` run the first one makes is reused by the others (identical
parameters reuse finished runs); each still runs on its own (``-k lora``)."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import mlflow
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "sciqa-notebook-test"
TINY = {"SCIQA_NB_VARIANTS": "pkv", "SCIQA_NB_LIMIT": "4", "SCIQA_NB_EVAL_LIMIT": "2", "SCIQA_NB_EPOCHS": "1",
        "SCIQA_NB_MAX_NEW_TOKENS": "4", "SCIQA_NB_PREFIX_LEN": "2", "SCIQA_NB_TRAIN_BATCH_SIZE": "2",
        "SCIQA_NB_BATCH_SIZE": "4", "SCIQA_NB_TEACHER_MAX_NEW_TOKENS": "64"}


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory) -> Path:
    """A kernel spec for sys.executable in a private folder (nothing is installed for the user)."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernel")
    install(kernel_name=KERNEL, prefix=str(prefix), display_name=f"sciqa tests ({sys.executable})")
    return prefix / "share" / "jupyter"


@pytest.fixture(scope="module")
def shared(mlflow_server, tmp_path_factory) -> tuple[str, str, Path]:
    """One experiment and one working folder for all three notebooks."""
    mlflow.set_tracking_uri(mlflow_server)
    name = f"notebooks-{time.time_ns()}"
    return name, mlflow.create_experiment(name), tmp_path_factory.mktemp("notebooks-cwd")


@pytest.fixture
def run_notebook(shared, kernel_path, monkeypatch):
    name, _, cwd = shared
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    for key, value in TINY.items():
        monkeypatch.setenv(key, value)

    def run(notebook: str):
        nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
        # the kernel inherits os.environ: tracking URI, experiment, SCIQA_CACHE, the tiny sizes
        nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600,
                                resources={"metadata": {"path": str(cwd)}}).execute()
        return nb, cwd

    return run


def _cell(nb, tag: str):
    return next(c for c in nb.cells if tag in c.metadata.get("tags", []))


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def _runs(shared, filter_string: str):
    return mlflow.search_runs([shared[1]], filter_string=filter_string, output_format="list")


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), f"{path.name}: strip its outputs"


@pytest.mark.slow  # a notebook kernel
@pytest.mark.timeout(900)
def test_kd_vs_golden(run_notebook):
    nb, cwd = run_notebook("kd_vs_golden.ipynb")
    parent_id = re.search(r"main run: (\w+)", _text(_cell(nb, "main-run"))).group(1)
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sciqa.step"] == "main"
    assert parent.data.params["variants"] == "pkv" and parent.data.params["limit"] == "4"
    assert (cwd / "analysis" / parent_id / "compare" / "comparison.csv").is_file()
    assert _images(_cell(nb, "download")) == 1  # the parent's own plots/loss_curves.png
    assert _images(_cell(nb, "loss-curves")) == 1  # redrawn from the metric histories
    table = _text(_cell(nb, "metric-table"))
    assert "golden" in table and "kd" in table and "acc" in table and "d_acc_pkv_kd_vs_pkv_golden" in table
    stats = _cell(nb, "statistics")
    assert _images(stats) == 1 and "ci_low" in _text(stats)  # plots/deltas.png and a recomputed comparison


@pytest.mark.slow  # a notebook kernel
@pytest.mark.timeout(900)
def test_benchmark_models(run_notebook, shared):
    nb, _ = run_notebook("benchmark_models.ipynb")
    assert "benchmark runs: 4" in _text(_cell(nb, "benchmarks"))
    runs = _runs(shared, "tags.`sciqa.step` = 'benchmark' and tags.`sciqa.split` = 'validation'")
    assert sorted((r.data.params["model"], r.data.params["setting"]) for r in runs) == [
        ("tiny-llava", "QTCH"), ("tiny-llava", "QTCHS"), ("tiny-qwen2-vl", "QTCH"), ("tiny-qwen2-vl", "QTCHS")]
    assert all("acc" in r.data.metrics and "overall" in r.data.metrics for r in runs)  # evaluated
    assert _images(_cell(nb, "accuracy")) == 1 and _images(_cell(nb, "explanations")) == 1


@pytest.mark.slow  # a notebook kernel
@pytest.mark.timeout(900)
def test_lora_walkthrough(run_notebook, shared):
    nb, _ = run_notebook("lora_walkthrough.ipynb")
    train_id = re.search(r"train run: (\w+)", _text(_cell(nb, "train"))).group(1)
    train = mlflow.get_run(train_id)
    assert train.info.status == "FINISHED" and train.data.tags["sciqa.step"] == "train_lora"
    assert train.data.tags["sciqa.variant"] == "lora" and "val_loss_golden" in train.data.metrics
    score_id = re.search(r"score run: (\w+)", _text(_cell(nb, "score"))).group(1)
    score = mlflow.get_run(score_id)
    assert score.data.tags["sciqa.adapter_run"] == train_id and "acc" in score.data.metrics
    assert _images(_cell(nb, "loss-curve")) == 1 and _images(_cell(nb, "compare")) == 1
    assert "lora - base" in _text(_cell(nb, "compare"))
    # one base benchmark per (model, split, setting, sizes): reused, not redone
    base = _runs(shared, "tags.`sciqa.step` = 'benchmark' and tags.`sciqa.model` = 'tiny-qwen2-vl' "
                 "and tags.`sciqa.split` = 'validation' and tags.`sciqa.setting` = 'QTCH'")
    assert len(base) == 1
