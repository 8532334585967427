"""What runs read and hold: problems as dataset inputs, artifacts fetched for resume or analysis."""
import contextlib
import time
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

from sciqa.data import SAMPLE_DIR
from sciqa.files import build_folder
from sciqa.tracking.runs import connect, get_run


def log_problems(problems: list, dataset: str, digest_: str, context: str, setting: str = "", source: str = "") -> None:
    """The problems a step used as a dataset input of the active run, with the digest that keys the step."""
    split = problems[0].split
    frame = pd.DataFrame([{"id": p.id, "question": p.question, "choices": " | ".join(p.choices),
                           "answer": str(p.answer), "has_image": str(p.has_image).lower()} for p in problems])
    folder = Path(dataset).expanduser()
    source = source or (str(SAMPLE_DIR) if dataset == "sample" else str(folder.resolve()) if folder.is_dir() else
                        HuggingFaceDatasetSource(path=dataset, split=split))
    with warnings.catch_warnings(action="ignore"):  # MLflow warns when it infers a source's kind from a path
        ds = mlflow.data.from_pandas(frame, source=source, name=f"{Path(dataset).name or dataset}/{split}",
                                     digest=digest_)
    for attempt in range(3):  # MLflow looks the dataset up, then inserts it: jobs logging it at once collide
        try:
            mlflow.log_input(ds, context=context, tags={"setting": setting} if setting else None)
            return
        except mlflow.exceptions.MlflowException as exc:
            if attempt == 2 or not any(s in str(exc) for s in ("UNIQUE constraint", "duplicate key")):
                raise
            time.sleep(0.5 * (attempt + 1))  # the other job's row exists now: the retry only links it


def fetch_artifact(run_ids: list[str], artifact_path: str, dest: Path) -> bool:
    """Download an artifact (file or folder) of the first run that has it to a new ``dest``, whole or not at all."""
    for run_id in run_ids:
        with contextlib.suppress(Exception):  # "not found" comes as several exception types
            build_folder(dest, lambda tmp, run_id=run_id: Path(mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=str(tmp))))
            return True
    return False


def download(run_id: str, dest: str, children: bool = False) -> list[Path]:
    """``sciqa download``: a run's analysis folders (and its child runs') into ``dest/<run_id>/``."""
    connect()
    runs = [run := get_run(run_id)]
    if children:
        runs += mlflow.search_runs([run.info.experiment_id], output_format="list",
                                   filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    got = []
    for r in runs:
        (Path(dest) / r.info.run_id).mkdir(parents=True, exist_ok=True)
        have = {a.path for a in mlflow.artifacts.list_artifacts(run_id=r.info.run_id)}
        got += [Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=folder,
                                                         dst_path=str(Path(dest) / r.info.run_id)))
                for folder in ("outputs", "metrics", "plots", "compare") if folder in have]
    return got
