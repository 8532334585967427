"""``sciqa compare``: paired statistics between any evaluated runs, checked against known answers."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_rel

from helpers import assert_one_error, invoke_cli, last_run_id
from sciqa.data import load_problems

N = 60


def _csv(tmp_path, name: str, right: set[int], split: str = "validation"):
    """Outputs over the first N problems: the correct choice on ``right``, another choice elsewhere."""
    problems = load_problems("sample", split, limit=N)
    raw = [json.dumps({"answer": p.choices[p.answer if i in right else (p.answer + 1) % len(p.choices)],
                       "solution": p.solution if i in right else "no idea"}) for i, p in enumerate(problems)]
    path = tmp_path / f"{name}.csv"
    pd.DataFrame({"id": [p.id for p in problems], "raw_output": raw}).to_csv(path, index=False)
    return last_run_id(invoke_cli("evaluate", "--csv", str(path), cwd=tmp_path))


def test_compare_two_runs_against_hand_computed_statistics(cli, experiment, tmp_path):
    a = _csv(tmp_path, "a", set(range(0, 30)))    # 30/60 right
    b = _csv(tmp_path, "b", set(range(10, 50)))   # 40/60 right: b01 = 20 (30..49), b10 = 10 (0..9)
    out = cli("compare", a, b, cwd=tmp_path)
    assert "acc" in out.stdout and "n = 60" in out.stdout
    run = mlflow.get_run(last_run_id(out))
    assert run.data.tags["sciqa.step"] == "compare" and run.data.tags["sciqa.compared_runs"] == f"{a},{b}"
    assert run.data.params["baseline"] == a
    table = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="compare/comparison.csv", dst_path=str(tmp_path)))
    acc = table[(table.metric == "acc") & (table.group == "all")].iloc[0]
    assert acc["n"] == N and acc["diff"] == pytest.approx(100 * 10 / N)
    a_right, b_right = np.isin(np.arange(N), range(0, 30)), np.isin(np.arange(N), range(10, 50))
    ref = ttest_rel(100.0 * b_right, 100.0 * a_right)  # one seed per arm: a paired t over problems
    assert acc["p_value"] == pytest.approx(ref.pvalue) and acc["family"] == "primary"
    assert acc["p_holm"] == pytest.approx(ref.pvalue)  # one primary test
    ci = ref.confidence_interval(0.95)
    assert (acc["ci_low"], acc["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert {"subject=natural science", "context=none"} & set(table.group)  # per-group accuracy by default
    assert run.data.metrics[f"d_acc_{b[:8]}_vs_{a[:8]}"] == pytest.approx(acc["diff"])
    assert "plots/deltas.png" in {x.path for x in mlflow.artifacts.list_artifacts(run_id=run.info.run_id,
                                                                                 artifact_path="plots")}


def test_compare_refuses_runs_without_rows_or_common_ids(cli, experiment, tmp_path):
    a = _csv(tmp_path, "a", {0, 1})
    with mlflow.start_run() as bare:
        pass
    assert_one_error(cli("compare", a, bare.info.run_id, cwd=tmp_path, check=False),
                     f"sciqa evaluate --run {bare.info.run_id}")
    train = _csv(tmp_path, "t", {0}, split="train")
    assert_one_error(cli("compare", a, train, cwd=tmp_path, check=False), "no problem ids in common")
    assert_one_error(cli("compare", a, cwd=tmp_path, check=False), "at least two run ids")


def _fake_run(tmp_path, name: str, correct, *, params: dict | None = None, answer=None, reference=None,
              prediction=None, rule=None) -> str:
    """A run holding per-row scores (what `compare` reads), with the params a benchmark run has."""
    n = len(correct)
    rows = pd.DataFrame({"id": [f"p{i}" for i in range(n)], "correct": correct,
                         "answer": answer if answer is not None else [0] * n,
                         "reference": reference if reference is not None else [f"ref {i}" for i in range(n)],
                         "prediction": prediction if prediction is not None else ["because"] * n,
                         "rule": rule if rule is not None else ["json"] * n,
                         "subject": "natural science", "grade": "grade3", "hint": "", "has_image": False})
    folder = tmp_path / name
    folder.mkdir()
    rows.to_csv(folder / "validation_QTCH_rows.csv", index=False)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({"split": "validation", "setting": "QTCH", "model": "tiny-qwen2-vl", "answer_mode": "choice",
                           **(params or {})})
        mlflow.log_artifacts(str(folder), "metrics")
    return run.info.run_id


def _table(run_id, tmp_path):
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="compare/comparison.csv",
                                                           dst_path=str(tmp_path / run_id)))


def test_compare_arms_of_seed_runs_are_replicates_and_labels_tell_runs_apart(experiment, tmp_path):
    from helpers import invoke_cli

    rng = np.random.default_rng(0)
    golden = [_fake_run(tmp_path, f"g{s}", rng.random(80) < 0.5, params={"answer_mode": "free"}) for s in range(3)]
    kd = [_fake_run(tmp_path, f"k{s}", rng.random(80) < 0.6, prediction=[""] * 40 + ["x"] * 40,
                    rule=["mention"] * 20 + ["json"] * 60) for s in range(3)]
    out = invoke_cli("compare", ",".join(golden), ",".join(kd), cwd=tmp_path)
    table = _table(last_run_id(out), tmp_path)
    acc = table[(table.metric == "acc") & (table.group == "all")].iloc[0]
    per_run = {r: 100 * pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=r, artifact_path="metrics/validation_QTCH_rows.csv", dst_path=str(tmp_path / f"r{r}")))["correct"].mean()
               for r in golden + kd}
    assert acc["a"] == pytest.approx(np.mean([per_run[r] for r in golden]))  # the mean over seeds, no vote
    assert acc["b"] == pytest.approx(np.mean([per_run[r] for r in kd]))
    assert (acc["seeds_a"], acc["seeds_b"], acc["family"]) == (3, 3, "primary")
    assert len(acc["per_seed"].split()) == 3
    assert "answer_mode=free" in out.stdout and "answer_mode=choice" in out.stdout  # labels differ
    assert "sciqa: warning: the compared runs differ in answer_mode" in out.stderr
    assert "50.0" in out.stdout and "25.0" in out.stdout  # kd's empty-explanation and fuzzy-mapped %


def test_compare_refuses_common_ids_with_different_gold_and_reuses_only_equal_inputs(experiment, tmp_path):
    from helpers import invoke_cli

    right = np.arange(30) % 2 == 0
    a = _fake_run(tmp_path, "a", right)
    b = _fake_run(tmp_path, "b", ~right)
    other = _fake_run(tmp_path, "c", right, answer=[0] * 7 + [1] + [0] * 22)
    assert_one_error(invoke_cli("compare", a, other, cwd=tmp_path, check=False),
                     f"problem 'p7' has a different gold answer in runs '{a}' and '{other}'")
    text = _fake_run(tmp_path, "d", right, reference=["ref"] * 30)
    assert_one_error(invoke_cli("compare", a, text, cwd=tmp_path, check=False), "different gold reference")
    first = last_run_id(invoke_cli("compare", a, b, cwd=tmp_path))
    again = invoke_cli("compare", a, b, cwd=tmp_path)
    assert last_run_id(again) == first and "reusing finished run" in again.stdout
    changed = tmp_path / "changed"  # b re-evaluated (e.g. a new parser): other per-row scores
    changed.mkdir()
    pd.read_csv(mlflow.artifacts.download_artifacts(run_id=b, artifact_path="metrics/validation_QTCH_rows.csv",
                                                    dst_path=str(tmp_path / "dl"))).assign(correct=right).to_csv(
        changed / "validation_QTCH_rows.csv", index=False)
    mlflow.MlflowClient().log_artifacts(b, str(changed), "metrics")
    assert last_run_id(invoke_cli("compare", a, b, cwd=tmp_path)) != first
