"""``sciqa compare``: paired statistics between any evaluated runs, checked against known answers."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from helpers import assert_one_error, last_run_id, run_cli
from sciqa.data import load_problems

N = 60


def _csv(tmp_path, name: str, right: set[int], split: str = "validation"):
    """Outputs over the first N problems: the correct choice on ``right``, another choice elsewhere."""
    problems = load_problems("sample", split, limit=N)
    raw = [json.dumps({"answer": p.choices[p.answer if i in right else (p.answer + 1) % len(p.choices)],
                       "solution": p.solution if i in right else "no idea"}) for i, p in enumerate(problems)]
    path = tmp_path / f"{name}.csv"
    pd.DataFrame({"id": [p.id for p in problems], "raw_output": raw}).to_csv(path, index=False)
    return last_run_id(run_cli("evaluate", "--csv", str(path), cwd=tmp_path))


def test_compare_two_runs_against_hand_computed_statistics(experiment, tmp_path):
    a = _csv(tmp_path, "a", set(range(0, 30)))    # 30/60 right
    b = _csv(tmp_path, "b", set(range(10, 50)))   # 40/60 right: b01 = 20 (30..49), b10 = 10 (0..9)
    out = run_cli("compare", a, b, cwd=tmp_path)
    assert "acc" in out.stdout and "n = 60" in out.stdout
    run = mlflow.get_run(last_run_id(out))
    assert run.data.tags["sciqa.step"] == "compare" and run.data.tags["sciqa.compared_runs"] == f"{a},{b}"
    assert run.data.params["baseline"] == a
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                           artifact_path="compare/comparison.csv", dst_path=str(tmp_path)))
    acc = table[(table.metric == "acc") & (table.group == "all")].iloc[0]
    assert acc["n"] == N and acc["diff"] == pytest.approx(100 * 10 / N)
    assert acc["p_value"] == pytest.approx(binomtest(20, 30, 0.5).pvalue)
    diffs = np.array([1.0] * 20 + [-1.0] * 10 + [0.0] * 30) * 100  # per problem: b - a in points
    boot = np.random.default_rng(1).choice(diffs, size=(20000, N)).mean(axis=1)
    assert acc["ci_low"] == pytest.approx(np.percentile(boot, 2.5), abs=2.0)  # values step by 100/N
    assert acc["ci_high"] == pytest.approx(np.percentile(boot, 97.5), abs=2.0)
    assert {"subject=natural science", "context=none"} & set(table.group)  # per-group accuracy by default
    assert run.data.metrics[f"d_acc_{b[:8]}_vs_{a[:8]}"] == pytest.approx(acc["diff"])
    assert "plots/deltas.png" in {x.path for x in mlflow.artifacts.list_artifacts(run_id=run.info.run_id,
                                                                                 artifact_path="plots")}


def test_compare_refuses_runs_without_rows_or_common_ids(experiment, tmp_path):
    a = _csv(tmp_path, "a", {0, 1})
    with mlflow.start_run() as bare:
        pass
    assert_one_error(run_cli("compare", a, bare.info.run_id, cwd=tmp_path, check=False),
                     f"sciqa evaluate --run {bare.info.run_id}")
    train = _csv(tmp_path, "t", {0}, split="train")
    assert_one_error(run_cli("compare", a, train, cwd=tmp_path, check=False), "no problem ids in common")
    assert_one_error(run_cli("compare", a, cwd=tmp_path, check=False), "at least two run ids")
