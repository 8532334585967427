"""Fetch a run's artifacts (and optionally its children's) for analysis: a thin wrapper of
``mlflow artifacts download`` that also knows sciqa's parent/child layout.

    sciqa download RUN_ID --dest analysis/ --children
"""
from __future__ import annotations

from pathlib import Path

FOLDERS = ("outputs", "metrics", "plots", "compare")


def download(run_id: str, dest: str, children: bool = False, folders: tuple[str, ...] = FOLDERS) -> list[Path]:
    """Download the analysis folders of a run (into ``dest/<run_id>/``) and of its child runs."""
    import mlflow

    from sciqa.tracking import runs as tracking

    run = tracking.get_run(run_id)
    runs = [run]
    if children:
        runs += mlflow.search_runs([run.info.experiment_id], output_format="list",
                                   filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    got = []
    for r in runs:
        target = Path(dest) / r.info.run_id
        have = {a.path for a in mlflow.artifacts.list_artifacts(run_id=r.info.run_id)}
        for folder in folders:
            if folder in have:
                target.mkdir(parents=True, exist_ok=True)
                got.append(Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=folder,
                                                                    dst_path=str(target))))
    return got
