"""Score outputs the way the study did: accuracy breakdowns and explanation metrics, offline."""
import sys
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from sciqa import files
from sciqa.config import check_ranges
from sciqa.data import Problem, load_problems
from sciqa.errors import SciqaError
from sciqa.eval.metrics import (
    METRIC_SETTINGS,
    accuracy_breakdown,
    check_prerequisites,
    explanation_scores,
    summarize_explanations,
    topic_accuracy,
)
from sciqa.eval.outputs import parse_answer_index, read_frame
from sciqa.eval.parsing import FUZZY_RULES, UNMAPPED, parse_output, rule_counts
from sciqa.eval.wordnet import ensure_wordnet
from sciqa.steps import EvaluateConfig
from sciqa.tracking import runs
from sciqa.tracking.runs import phase, step_run


def _finished_run(run_id: str):
    run = runs.get_run(run_id)
    if run.info.status != "FINISHED":
        raise SciqaError(f"run '{run_id}' is {run.info.status}, not finished: run its step again to resume and "
                         "finish it (it evaluates itself where it can), then evaluate")
    return run


def score_frame(df, problems: dict[str, Problem], number_base: int):
    """Join outputs with problems (one row per id); returns the frame, counts of what was repaired, parse rules."""
    unknown = [i for i in df["id"] if i not in problems]
    if unknown:
        raise SciqaError(f"{len(unknown)} id(s) not in the dataset, e.g. {', '.join(unknown[:3])}; "
                         "pass the --dataset the outputs were made from")
    dupes = int(df["id"].duplicated().sum())  # a rerun appended to the file: its last row counts
    if dupes:
        print(f"sciqa: warning: outputs: {dupes} duplicated id(s); the last row of each is evaluated", file=sys.stderr)
    dupes += df.attrs.get("duplicate_ids", 0)  # already merged by the reader, which warned
    df = df.drop_duplicates("id", keep="last")
    has_index, has_solution = "answer_index" in df.columns, "solution" in df.columns
    rows, invalid, rules = [], 0, []
    for rec in df.to_dict("records"):
        p = problems[rec["id"]]
        parsed = parse_output(rec["raw_output"], p.choices, number_base)
        rules.append(getattr(parsed, "rule", ""))
        index = parsed.answer_index
        if has_index:
            index = parse_answer_index(rec["answer_index"], len(p.choices), number_base)
            invalid += int(index is None and str(rec["answer_index"]).strip() != "")
        rows.append({"id": p.id, "answer_index": index, "answer": p.answer, "subject": p.subject,
                     "grade": p.grade, "topic": p.topic, "hint": p.hint, "has_image": p.has_image,
                     "prediction": str(rec["solution"]) if has_solution else parsed.solution,
                     "reference": f"{p.lecture} {p.solution}".strip(),
                     "rule": rules[-1] if index is not None else UNMAPPED})  # compare: fuzzy-mapped share
    frame = pd.DataFrame(rows)
    frame["answer_index"] = frame["answer_index"].astype("Int64")
    return frame, {"duplicate_ids": dupes, "answer_index_invalid": invalid}, rules


def evaluate_paths(paths: list[Path], dataset: str, number_base: int) -> dict:
    """stem -> (summary, topics, per-row scores, counts, rules) for each outputs CSV."""
    frames = {path: read_frame(path) for path in paths}  # a bad CSV: one line before anything else
    ensure_wordnet()
    problems = {p.id: p for split in ("train", "validation", "test")
                for p in load_problems(dataset, split, keep_all=True)}
    results = {}
    for path, df in frames.items():
        frame, counts, rules = score_frame(df, problems, number_base)
        scores = explanation_scores(list(frame["prediction"]), list(frame["reference"]))
        per_row = frame.assign(correct=(frame["answer_index"] == frame["answer"]).fillna(False), **scores)
        summary = {**accuracy_breakdown(frame), **summarize_explanations(scores), "n": float(len(frame))}
        counts["empty_explanations"] = int(per_row["rougeL"].isna().sum())  # the rows ROUGE-L/METEOR skip
        if "overall" not in summary and len(per_row):
            print(f"sciqa: warning: {path.stem}: every explanation is empty ({len(per_row)} rows), so ROUGE-L, "
                  "METEOR and the overall score are undefined and not logged", file=sys.stderr)
        results[path.stem] = (summary, topic_accuracy(frame), per_row, counts, rules)
    return results


def log_results(run_id: str, results: dict) -> None:
    """Metrics and ``metrics/`` artifacts into ``run_id`` (through the client: its status stays); prints a line each."""
    client = MlflowClient()
    metrics = []
    for stem, (summary, topics, per_row, counts, rules) in results.items():
        prefix = "" if len(results) == 1 else f"{stem}/"
        values = {**summary, **counts}
        metrics += [Metric(prefix + k, float(v), 0, 0) for k, v in values.items()]
        client.log_dict(run_id, {"metrics": values, "settings": METRIC_SETTINGS}, f"metrics/{stem}.json")
        for name, table in (("topics", topics), ("rows", per_row), ("parse_rules", _rule_table(rules))):
            client.log_text(run_id, table.to_csv(index=False), f"metrics/{stem}_{name}.csv")
    have = client.get_run(run_id).data.params
    params = [Param(f"eval_{k}", str(v)) for k, v in METRIC_SETTINGS.items() if f"eval_{k}" not in have]
    client.log_batch(run_id, metrics=metrics, params=params)
    for stem, (summary, *_rest) in results.items():
        print(f"{stem}: " + "  ".join(f"{k} {summary[k]:.2f}" for k in ("acc", "unmapped_rate", "overall")
                                       if k in summary))


def _rule_table(rules: list[str]):
    """Answers per parsing rule, zeros too: how much the accuracy relies on fuzzy matching."""
    table = pd.Series(rule_counts(rules), name="answers").rename_axis("rule").reset_index()
    return table.assign(share=table["answers"] / max(len(rules), 1), fuzzy=table["rule"].isin(FUZZY_RULES))


def evaluate_run(run_id: str, force: bool = False, dataset: str = "", number_base: int = 0) -> str:
    """Evaluate a finished run, or the step's own active run, into itself (its status unchanged)."""
    active = mlflow.active_run()
    run = active and active.info.run_id == run_id and MlflowClient().get_run(run_id) or _finished_run(run_id)
    if "acc" in run.data.metrics and not force:
        print(f"evaluate: run {run_id} already has metrics (acc {run.data.metrics['acc']:.1f})")
        return run_id
    names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="outputs")
             if a.path.endswith(".csv")]
    if not names:
        raise SciqaError(f"run '{run_id}' has no outputs/*.csv to evaluate (is it a benchmark or score run?)")
    with tempfile.TemporaryDirectory() as tmp, phase("evaluate", run_id):
        paths = [Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=n, dst_path=tmp))
                 for n in names]
        results = evaluate_paths(paths, dataset or run.data.params.get("dataset", "sample"), number_base)
        log_results(run_id, results)
    return run_id


def evaluate(cfg: EvaluateConfig, parent_run_id: str | None = None, attach: str | None = None) -> str:
    """Evaluate a run's outputs (logged into that run) or a CSV (logged into its own evaluate run)."""
    check_ranges(cfg)
    check_prerequisites()
    if bool(cfg.run) == bool(cfg.csv):
        raise SciqaError("give exactly one of --run RUN_ID or --csv PATH")
    if cfg.csv and not Path(cfg.csv).is_file():
        raise SciqaError(f"CSV '{cfg.csv}' does not exist")
    if cfg.run:
        runs.connect()
        _finished_run(cfg.run)
        if attach:  # the run `mlflow run` made holds nothing new: it points to the evaluated run (never another step's)
            runs.discard_run(runs.attached_run(attach).info.run_id, f"metrics go into run {cfg.run}", cfg.run)
        return evaluate_run(cfg.run, cfg.force, cfg.dataset, cfg.number_base)
    path = Path(cfg.csv).expanduser().resolve()
    dataset = cfg.dataset or "sample"
    results = evaluate_paths([path], dataset, cfg.number_base)
    runs.setup()
    params = {"dataset": dataset, "number_base": cfg.number_base, "csv_digest": files.digest(path.read_bytes())}
    with step_run("evaluate", params, {}, f"evaluate-{path.stem}", cfg.force, parent_run_id,
                  {"csv": str(path)}, attach=attach) as run:
        if run.reused:
            print(f"evaluate: reusing finished run {run.run_id}")
            return run.run_id
        log_results(run.run_id, results)
        mlflow.log_artifact(str(path), "outputs")
    return run.run_id
