"""``sciqa grid``: the cross product of a step's option lists as child runs of one parent, and its table.

In-process (click's CliRunner) with tiny models: 2 models x 2 settings, 8 problems each.
"""
from __future__ import annotations

from dataclasses import replace

import mlflow
import pandas as pd
import pytest

from helpers import assert_one_error, invoke_cli, runs_of

GRID = ["grid", "benchmark", "--model", "tiny-qwen2-vl,tiny-llava", "--setting", "QTCH,QTCHS", "--limit", "8",
        "--batch-size", "4", "--max-new-tokens", "8", "--answer-mode", "choice"]


def _table(run_id: str, tmp_path) -> pd.DataFrame:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="grid/table.csv", dst_path=str(tmp_path))
    return pd.read_csv(path)


def _grid_run(proc) -> str:
    return proc.stdout.split("grid run: ")[1].split()[0]


def _stop_at_call(monkeypatch, n: int):
    """A stop signal (kill, Slurm requeue) right after the n-th generate() call of this process;
    returns the original generate()."""
    from sciqa.backends.hf import HFBackend
    from sciqa.slurm import job

    calls = {"n": 0}
    original = HFBackend.generate

    def generate(self, problems, prompts):
        out = original(self, problems, prompts)
        calls["n"] += 1
        if calls["n"] == n:
            job.request_stop("SIGTERM")
        return out

    monkeypatch.setattr(HFBackend, "generate", generate)
    return original


@pytest.mark.timeout(900)
def test_grid_runs_cells_as_children_resumes_and_reuses(experiment, tmp_path, monkeypatch):
    work = ["--workdir", str(tmp_path / "w")]
    # killed in the third cell, after its first batch of 4 (two cells of two batches each are done)
    original = _stop_at_call(monkeypatch, 5)
    killed = invoke_cli(*GRID, *work, cwd=tmp_path, check=False)
    assert killed.returncode == 75, killed.stderr[-2000:]
    [parent] = [r for r in runs_of(experiment) if r.data.tags.get("sciqa.step") == "grid"]
    assert parent.info.status == "KILLED"
    cells = {r.info.run_id: r for r in runs_of(experiment) if r.data.tags.get("sciqa.step") == "benchmark"}
    assert sorted(r.info.status for r in cells.values()) == ["FINISHED", "FINISHED", "KILLED"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in cells.values())
    [cut] = [r for r in cells.values() if r.info.status == "KILLED"]
    assert (cut.data.tags["sciqa.model"], cut.data.tags["sciqa.setting"]) == ("tiny-llava", "QTCH")
    from sciqa.backends.hf import HFBackend

    monkeypatch.setattr(HFBackend, "generate", original)

    resumed = invoke_cli(*GRID, *work, cwd=tmp_path)
    assert _grid_run(resumed) == parent.info.run_id  # the unfinished parent is continued
    assert resumed.stdout.count("reusing finished run") == 2
    benchmarks = [r for r in runs_of(experiment) if r.data.tags.get("sciqa.step") == "benchmark"]
    assert len(benchmarks) == 4 and all(r.info.status == "FINISHED" for r in benchmarks)
    assert mlflow.get_run(cut.info.run_id).data.metrics["rows_generated"] == 4  # only the missing half
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in benchmarks)
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"

    table = _table(parent.info.run_id, tmp_path / "t1")
    assert list(zip(table["model"], table["setting"])) == [
        ("tiny-qwen2-vl", "QTCH"), ("tiny-qwen2-vl", "QTCHS"), ("tiny-llava", "QTCH"), ("tiny-llava", "QTCHS")]
    assert set(table["run_id"]) == {r.info.run_id for r in benchmarks}
    assert (table["n"] == 8).all() and (table["status"] == "FINISHED").all()
    for row in table.itertuples():
        assert row.ci_low <= row.acc <= row.ci_high
        assert row.acc == pytest.approx(mlflow.get_run(row.run_id).data.metrics["acc"])
    assert {"acc_natural", "acc_img", "acc_g1_6"} <= set(table.columns) and (table["best"] == "*").any()
    artifacts = {a.path for d in ("grid", "plots") for a in mlflow.artifacts.list_artifacts(
        run_id=parent.info.run_id, artifact_path=d)}
    assert {"grid/table.md", "grid/cells.json", "grid/comparisons.csv", "plots/grid.png"} <= artifacts
    compared = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="grid/comparisons.csv", dst_path=str(tmp_path / "c")))
    acc = compared[compared["metric"] == "acc"]
    assert sorted(acc["model"]) == ["tiny-llava", "tiny-qwen2-vl"]
    assert set(zip(acc["run"], acc["baseline"])) == {("QTCHS", "QTCH")} and (acc["n"] == 8).all()
    params = mlflow.get_run(parent.info.run_id).data.params
    assert params["grid_axes"] == "model=tiny-qwen2-vl,tiny-llava;setting=QTCH,QTCHS" and params["limit"] == "8"

    again = invoke_cli(*GRID, *work, cwd=tmp_path)  # everything is reused: no cell runs again
    assert again.stdout.count("reusing finished run") == 4
    assert len([r for r in runs_of(experiment) if r.data.tags.get("sciqa.step") == "benchmark"]) == 4
    assert set(_table(_grid_run(again), tmp_path / "t2")["run_id"]) == set(table["run_id"])


def test_grid_spec_and_options_give_the_same_cells():
    from sciqa.cli import main
    from sciqa.steps.grid import parse

    by_options = parse(main.commands, "train-lora", "", ["--lr", "0.001,0.01", "--epochs", "2", "--seed", "0,1"])
    by_spec = parse(main.commands, "train_lora", "lr=0.001,0.01;seed=0,1", ["--epochs", "2", "--workdir", "elsewhere"])
    assert by_options.spec == by_spec.spec == "lr=0.001,0.01;seed=0,1"
    assert [replace(c.config, workdir="elsewhere") for c in by_options.cells] == [c.config for c in by_spec.cells]
    assert [c.values for c in by_spec.cells] == [{"lr": "0.001", "seed": "0"}, {"lr": "0.001", "seed": "1"},
                                                  {"lr": "0.01", "seed": "0"}, {"lr": "0.01", "seed": "1"}]
    cfg = by_spec.cells[3].config
    assert (cfg.variant, cfg.lr, cfg.seed, cfg.epochs) == ("lora", 0.01, 1, 2)
    assert by_spec.cells[0].args[:1] == ("train-lora",) and "--lr" in by_spec.cells[0].args
    assert by_spec.params()["epochs"] == "2" and "workdir" not in by_spec.params()  # where, not what
    assert by_spec.settings == {"workdir": "elsewhere"} and cfg.workdir == "elsewhere"
    escaped = parse(main.commands, "train-lora", "", ["--lora-targets", r"q_proj\,v_proj,q_proj\,k_proj\,v_proj"])
    assert escaped.axes == {"lora_targets": ["q_proj,v_proj", "q_proj,k_proj,v_proj"]}
    assert escaped.cells[1].config.lora_targets == "q_proj,k_proj,v_proj"
    assert parse(main.commands, "train-lora", escaped.spec).axes == escaped.axes  # the logged spec reads back the same


@pytest.mark.parametrize("args,needle", [
    (["benchmark", "--limit", "8"], "at least one option with several comma-separated values"),
    (["benchmark", "--model", "tiny-llava,tiny-llava"], "each given once"),
    (["benchmark", "--modle", "a,b"], "unknown option 'modle'"),
    (["benchmark", "--setting", "QTCH,XYZ"], "XYZ"),
    (["evaluate", "--setting", "QTCH,QTCHS"], "unknown grid step 'evaluate'"),
    (["benchmark", "--setting", "QTCH,QTCHS", "--slurm-time", "1:00:00"], "only for a Slurm grid"),
    (["benchmark", "--model", "tiny-llava,nosuch-model"], "grid cell model=nosuch-model"),
])
def test_bad_grid_is_one_line_and_leaves_no_run(experiment, tmp_path, args, needle):
    assert_one_error(invoke_cli("grid", *args, cwd=tmp_path, check=False), needle)
    assert runs_of(experiment) == []


def test_training_table_marks_the_lowest_loss_and_keeps_axis_values_as_given():
    from sciqa.steps.compare import grid_markdown, mark_best

    frame = mark_best("train_prefix", pd.DataFrame({
        "lr": ["0.001", "0.01", "0.001", "0.01"], "prefix_len": ["10", "10", "50", "50"],
        "run_id": ["a", "b", "c", ""], "status": ["FINISHED", "FINISHED", "FINISHED", "FAILED"],
        "val_loss_golden": [2.5, 1.25, 3.0, float("nan")]}))
    assert list(frame["best"]) == ["", "*", "", ""]
    text = grid_markdown("train_prefix", frame, ["lr", "prefix_len"], pd.DataFrame())
    # the last axis across, the others down; a failed cell shows its status
    assert "| lr    | 10      | 50     |" in text and "| 0.01  | 1.2500* | FAILED |" in text
    assert "| 0.001 | 10           | a        | FINISHED | 2.5000 " in text  # axis values as given
