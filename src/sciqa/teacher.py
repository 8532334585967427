"""Training targets: golden (correct choice + the dataset's solution) or a teacher's (KD).

A teacher source is a benchmark run on the train split (its ``outputs/train_*.csv``), a CSV
(ours, or the study's: tab- or comma-separated ``index,input,answer,explanation``), or, when
neither is given, the newest finished train-split benchmark of the teacher model. Teacher rows
whose answer cannot be mapped to a choice are skipped and counted, never guessed.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from sciqa.data.problems import Problem
from sciqa.errors import SciqaError
from sciqa.prompts import target_json

STUDY_COLUMNS = ("index", "answer", "explanation")


@dataclass
class Targets:
    """id -> target JSON text, plus counts of what was dropped (logged as metrics)."""

    by_id: dict[str, str]
    source: str
    skipped_unparsed: int = 0
    skipped_missing: int = 0
    teacher_run: str = ""
    notes: list[str] = field(default_factory=list)


def golden(problems: list[Problem]) -> Targets:
    return Targets({p.id: target_json(p.answer_text, p.solution) for p in problems}, source="golden")


def _rows_from_csv_text(text: str, where: str) -> tuple[list[dict], str]:
    """Rows and their format (``ours`` or ``study``) from a CSV text, tab or comma separated."""
    first = text.splitlines()[0] if text.strip() else ""
    delim = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delim)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    reader.fieldnames = cols
    if "id" in cols and ("raw_output" in cols or "answer_text" in cols):
        return list(reader), "ours"
    missing = [c for c in STUDY_COLUMNS if c not in cols]
    if missing:
        raise SciqaError(f"teacher CSV '{where}' lacks columns {', '.join(missing)}; expected our outputs CSV "
                         "(id, raw_output, ...) or the study's format (index, input, answer, explanation)")
    return list(reader), "study"


def _targets_from_rows(rows: list[dict], fmt: str, choices: dict[str, tuple[str, ...]], where: str,
                       strict_ids: bool) -> tuple[dict[str, str], int]:
    """Map rows to target JSON; unknown ids raise when ``strict_ids`` (a user's CSV)."""
    from sciqa.parsing import parse_output

    key = "id" if fmt == "ours" else "index"
    unknown = [r[key] for r in rows if str(r[key]).strip() not in choices]
    if unknown and strict_ids:
        raise SciqaError(f"teacher CSV '{where}' has {len(unknown)} ids not in the train split of the dataset "
                         f"(e.g. '{unknown[0]}'); it must come from the same dataset")
    out, skipped = {}, 0
    for r in rows:
        pid = str(r[key]).strip()
        if pid not in choices:
            continue
        if fmt == "ours" and (r.get("answer_index") or "").strip():
            idx, solution = int(float(r["answer_index"])), r.get("solution") or ""
        else:
            raw = r.get("raw_output") if fmt == "ours" else json.dumps(
                {"answer": r.get("answer") or "", "solution": r.get("explanation") or ""})
            parsed = parse_output(raw or "", choices[pid])
            idx, solution = parsed.answer_index, parsed.solution
        if idx is None or not 0 <= idx < len(choices[pid]):
            skipped += 1
            continue
        out[pid] = target_json(choices[pid][idx], solution.strip())
    return out, skipped


def from_csv(path: str, all_train: list[Problem], strict_ids: bool = True) -> tuple[dict[str, str], int]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise SciqaError(f"teacher CSV '{path}' does not exist")
    rows, fmt = _rows_from_csv_text(p.read_text(encoding="utf-8"), path)
    return _targets_from_rows(rows, fmt, {q.id: q.choices for q in all_train}, path, strict_ids)


def run_train_csv(run_id: str, setting: str) -> str:
    """Artifact path of a run's train-split outputs CSV (the setting's if there are several)."""
    import mlflow

    try:
        arts = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="outputs")]
    except Exception as exc:  # noqa: BLE001 - unknown run ids come as several exception types
        raise SciqaError(f"teacher run '{run_id}' cannot be read ({type(exc).__name__}); pass a benchmark "
                         "run id on the train split") from None
    train = sorted(a for a in arts if Path(a).name.startswith("train_") and a.endswith(".csv"))
    if not train:
        raise SciqaError(f"teacher run '{run_id}' has no train-split outputs (outputs/train_*.csv); "
                         "benchmark the teacher with --split train")
    preferred = [a for a in train if Path(a).name == f"train_{setting}.csv"]
    return (preferred or train)[0]


def latest_teacher_run(teacher_model: str) -> str | None:
    """The newest FINISHED benchmark of ``teacher_model`` on the train split in this experiment."""
    import mlflow

    exp = mlflow.tracking.fluent._get_experiment_id()
    runs = mlflow.search_runs([exp], output_format="list", order_by=["attributes.start_time DESC"],
                              filter_string="tags.`sciqa.step` = 'benchmark' and tags.`sciqa.split` = 'train' "
                                            f"and tags.`sciqa.model` = '{teacher_model}' "
                                            "and attributes.status = 'FINISHED'")
    return runs[0].info.run_id if runs else None


def from_run(run_id: str, setting: str, all_train: list[Problem], workdir: Path) -> tuple[dict[str, str], int]:
    import mlflow

    art = run_train_csv(run_id, setting)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=art,
                                                dst_path=str(workdir / "teacher" / run_id))
    rows, fmt = _rows_from_csv_text(Path(local).read_text(encoding="utf-8"), f"run {run_id}")
    return _targets_from_rows(rows, fmt, {q.id: q.choices for q in all_train}, f"run {run_id}", strict_ids=False)


def finish(by_id: dict[str, str], skipped: int, problems: list[Problem], source: str, run_id: str = "") -> Targets:
    kept = {p.id: by_id[p.id] for p in problems if p.id in by_id}
    missing = sum(1 for p in problems if p.id not in by_id)
    if not kept:
        raise SciqaError(f"the teacher ({source}) has no usable answer for any training problem "
                         f"({skipped} unparseable, {missing} missing)")
    return Targets(kept, source=source, skipped_unparsed=skipped, skipped_missing=missing, teacher_run=run_id)
