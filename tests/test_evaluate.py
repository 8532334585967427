"""``evaluate`` on a CSV and on a run id, against the real MLflow server, with known answers."""
import json

import mlflow
import pandas as pd
import pytest

from sciqa.data import load_problems
from sciqa.eval.metrics import explanation_scores, summarize_explanations
from sciqa.eval.outputs import COLUMNS

PROBLEMS = load_problems("sample", "validation", limit=4)


def _outputs(tmp_path, with_parsed: bool):
    """Four outputs: two right (JSON, letter), one wrong, one unmappable."""
    p = PROBLEMS
    raw = [json.dumps({"answer": p[0].answer_text, "solution": p[0].solution}),
           f"The answer is {'AB'[p[1].answer]}. BECAUSE: {p[1].lecture}",
           json.dumps({"answer": p[2].choices[1 - p[2].answer], "solution": "No idea."}),
           "I cannot tell."]
    df = pd.DataFrame({"id": [x.id for x in p], "raw_output": raw})
    if with_parsed:
        df = df.reindex(columns=COLUMNS, fill_value="")
        df["raw_output"] = raw
        df["answer_index"] = [p[0].answer, p[1].answer, 1 - p[2].answer, ""]
        df["solution"] = [p[0].solution, p[1].lecture, "No idea.", ""]
    path = tmp_path / "validation_QTCH.csv"
    df.to_csv(path, index=False)
    return path


def test_evaluate_csv_logs_new_run(cli, experiment, tmp_path):
    assert all(len(p.choices) == 2 for p in PROBLEMS[:3])  # the letter/number cases below rely on it
    out = cli("evaluate", "--csv", str(_outputs(tmp_path, with_parsed=False)), cwd=tmp_path)
    run = mlflow.get_run(out.stdout.strip().split()[-1])
    assert run.data.tags["sciqa.step"] == "evaluate"
    m = run.data.metrics
    assert m["acc"] == pytest.approx(50.0) and m["unmapped_rate"] == pytest.approx(25.0)
    preds = [PROBLEMS[0].solution, PROBLEMS[1].lecture, "No idea.", ""]
    refs = [f"{p.lecture} {p.solution}".strip() for p in PROBLEMS]
    expected = summarize_explanations(explanation_scores(preds, refs))
    for k in ("bleu1", "bleu4", "rougeL", "meteor", "cosine", "overall"):
        assert m[k] == pytest.approx(expected[k], rel=1e-6), k
    names = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="metrics")}
    assert names == {"metrics/validation_QTCH.json", "metrics/validation_QTCH_rows.csv",
                     "metrics/validation_QTCH_topics.csv", "metrics/validation_QTCH_parse_rules.csv"}
    rows = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="metrics/validation_QTCH_rows.csv", dst_path=str(tmp_path / "d")))
    assert list(rows["correct"]) == [True, True, False, False]


def test_evaluate_run_into_itself(cli, experiment, tmp_path):
    with mlflow.start_run(experiment_id=experiment) as run:  # not whichever experiment an earlier test made active
        mlflow.set_tag("sciqa.step", "benchmark")
        mlflow.log_param("dataset", "sample")
        mlflow.log_artifact(str(_outputs(tmp_path, with_parsed=True)), "outputs")
    cli("evaluate", "--run", run.info.run_id, cwd=tmp_path)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["acc"] == pytest.approx(50.0) and got.info.status == "FINISHED"
    assert got.data.params["eval_rouge_stemmer"] == "False"
    assert len(mlflow.search_runs([experiment], output_format="list")) == 1
    again = cli("evaluate", "--run", run.info.run_id, cwd=tmp_path)
    assert "already has metrics" in again.stdout


@pytest.mark.parametrize("case,needle", [
    ("no_columns", "lacks column(s) raw_output"),
    ("unknown_ids", "id(s) not in the dataset"),
    ("no_outputs", "has no outputs/*.csv"),
])
def test_bad_input(cli, case, needle, experiment, tmp_path):
    path = tmp_path / "bad.csv"
    if case == "no_columns":
        pd.DataFrame({"id": ["1"], "answer": ["x"]}).to_csv(path, index=False)
        args = ["--csv", str(path)]
    elif case == "unknown_ids":
        pd.DataFrame({"id": ["nope-1"], "raw_output": ["A"]}).to_csv(path, index=False)
        args = ["--csv", str(path)]
    else:
        with mlflow.start_run() as run:
            mlflow.log_param("x", 1)
        args = ["--run", run.info.run_id]
    before = len(mlflow.search_runs([experiment], output_format="list"))
    proc = cli("evaluate", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert len(mlflow.search_runs([experiment], output_format="list")) == before
