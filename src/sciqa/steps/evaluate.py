"""Score outputs the way the study did: accuracy breakdowns and explanation metrics, offline.

    sciqa evaluate --run RUN_ID                 # a benchmark or score run: its outputs/*.csv
    sciqa evaluate --csv outputs.csv            # any CSV with id and raw_output columns
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sciqa.data.problems import Problem
from sciqa.errors import SciqaError
from sciqa.tracking import step_run


@dataclass
class EvaluateConfig:
    run: str = field(default="", metadata={"help": "a benchmark or score run id (reads its outputs/*.csv)"})
    csv: str = field(default="", metadata={"help": "or any CSV with id and raw_output columns"})
    dataset: str = field(default="", metadata={"help": "problems to join by id (default: the run's, else sample)"})
    number_base: int = field(default=0, metadata={"help": "how bare numbers in answers count choices: 0 or 1"})
    force: bool = field(default=False, metadata={"help": "re-evaluate a run that already has metrics"})


def _read(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, sep=None, engine="python")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SciqaError(f"cannot read CSV '{path}': {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("id", "raw_output") if c not in df.columns]
    if missing:
        raise SciqaError(f"CSV '{path.name}' lacks column(s) {', '.join(missing)}; it has: {', '.join(df.columns)}")
    return df


def _problems_by_id(dataset: str) -> dict[str, Problem]:
    from sciqa.data import load_problems

    return {p.id: p for split in ("train", "validation", "test") for p in load_problems(dataset, split, keep_all=True)}


def _run_csvs(run_id: str, dest: Path) -> tuple[list[Path], dict]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise SciqaError(f"no MLflow run '{run_id}' at {mlflow.get_tracking_uri()}") from None
    names = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="outputs")
             if a.path.endswith(".csv")]
    if not names:
        raise SciqaError(f"run '{run_id}' has no outputs/*.csv to evaluate (is it a benchmark or score run?)")
    paths = [Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=n, dst_path=str(dest)))
             for n in names]
    return paths, run.data


def _index(value) -> int | None:
    text = str(value).strip()
    return None if text == "" else int(float(text))


def score_frame(df, problems: dict[str, Problem], number_base: int):
    """Join outputs with problems; parse answers only where the CSV does not give them."""
    import pandas as pd

    from sciqa.parsing import parse_output

    unknown = [i for i in df["id"] if i not in problems]
    if unknown:
        raise SciqaError(f"{len(unknown)} id(s) not in the dataset, e.g. {', '.join(unknown[:3])}; "
                         "pass the --dataset the outputs were made from")
    has_index, has_solution = "answer_index" in df.columns, "solution" in df.columns
    rows = []
    for rec in df.to_dict("records"):
        p = problems[rec["id"]]
        parsed = None if has_index and has_solution else parse_output(rec["raw_output"], p.choices, number_base)
        index = _index(rec["answer_index"]) if has_index else parsed.answer_index
        rows.append({"id": p.id, "answer_index": index, "answer": p.answer, "subject": p.subject,
                     "grade": p.grade, "topic": p.topic, "hint": p.hint, "has_image": p.has_image,
                     "prediction": str(rec["solution"]) if has_solution else parsed.solution,
                     "reference": f"{p.lecture} {p.solution}".strip()})
    frame = pd.DataFrame(rows)
    frame["answer_index"] = frame["answer_index"].astype("Int64")
    return frame


def evaluate_frame(frame) -> tuple[dict[str, float], object, object]:
    """(summary metrics, per-topic table, per-row scores)."""
    from sciqa.metrics import accuracy_breakdown, explanation_scores, summarize_explanations, topic_accuracy

    scores = explanation_scores(list(frame["prediction"]), list(frame["reference"]))
    per_row = frame.assign(correct=(frame["answer_index"] == frame["answer"]).fillna(False), **scores)
    summary = {**accuracy_breakdown(frame), **summarize_explanations(scores), "n": float(len(frame))}
    return summary, topic_accuracy(frame), per_row


def _log(stem: str, summary: dict, topics, per_row, prefix: str) -> None:
    import mlflow

    from sciqa.metrics import METRIC_SETTINGS

    mlflow.log_metrics({prefix + k: v for k, v in summary.items()})
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / f"{stem}.json").write_text(json.dumps({"metrics": summary, "settings": METRIC_SETTINGS}, indent=2))
        topics.to_csv(d / f"{stem}_topics.csv", index=False)
        per_row.to_csv(d / f"{stem}_rows.csv", index=False)
        mlflow.log_artifacts(tmp, "metrics")


def evaluate(cfg: EvaluateConfig, parent_run_id: str | None = None) -> str:
    """Evaluate a run's outputs (logged into that run) or a CSV (logged into a new evaluate run)."""
    import mlflow

    from sciqa.metrics import METRIC_SETTINGS, ensure_wordnet

    if bool(cfg.run) == bool(cfg.csv):
        raise SciqaError("give exactly one of --run RUN_ID or --csv PATH")
    if cfg.number_base not in (0, 1):
        raise SciqaError(f"unknown number base {cfg.number_base}; accepted: 0, 1")
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.run:
            paths, data = _run_csvs(cfg.run, Path(tmp))
            if "acc" in data.metrics and not cfg.force:
                print(f"evaluate: run {cfg.run} already has metrics (acc {data.metrics['acc']:.1f})")
                return cfg.run
            dataset = cfg.dataset or data.params.get("dataset", "sample")
        else:
            paths = [Path(cfg.csv)]
            if not paths[0].is_file():
                raise SciqaError(f"CSV '{cfg.csv}' does not exist")
            dataset = cfg.dataset or "sample"
        problems = _problems_by_id(dataset)
        frames = {p.stem: score_frame(_read(p), problems, cfg.number_base) for p in paths}
        ensure_wordnet()
        results = {stem: evaluate_frame(frame) for stem, frame in frames.items()}
        settings = {f"eval_{k}": v for k, v in METRIC_SETTINGS.items()}
        if cfg.run:
            run = mlflow.start_run(run_id=cfg.run, nested=mlflow.active_run() is not None)
            mlflow.log_params({k: v for k, v in settings.items() if k not in mlflow.get_run(cfg.run).data.params})
            try:
                _log_all(results)
            finally:
                mlflow.end_run()
            run_id = run.info.run_id
        else:
            params = {"csv": str(Path(cfg.csv).resolve()), "dataset": dataset, "number_base": cfg.number_base,
                      **settings}
            with step_run("evaluate", params, {"sciqa.step": "evaluate"}, f"evaluate-{paths[0].stem}",
                          force=True, parent_run_id=parent_run_id) as run:
                _log_all(results)
            run_id = run.run_id
    for stem, (summary, _, _) in results.items():
        print(f"{stem}: " + "  ".join(f"{k} {summary[k]:.2f}" for k in ("acc", "unmapped_rate", "overall")
                                       if k in summary))
    return run_id


def _log_all(results: dict) -> None:
    for stem, (summary, topics, per_row) in results.items():
        _log(stem, summary, topics, per_row, "" if len(results) == 1 else f"{stem}/")


def evaluate_run(run_id: str, force: bool = False) -> str:
    """Evaluate a benchmark or score run into itself (used by ``score`` and ``main``)."""
    return evaluate(EvaluateConfig(run=run_id, force=force))
