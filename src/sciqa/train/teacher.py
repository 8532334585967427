"""Training targets: golden, or a teacher's rows (KD); a cut or choice-less teacher row is dropped, never repaired."""
import json
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import mlflow

from sciqa.data import Problem
from sciqa.data.prompts import target_json
from sciqa.errors import SciqaError
from sciqa.eval.outputs import parse_answer_index, read_user_csv
from sciqa.eval.parsing import parse_output
from sciqa.files import digest
from sciqa.tracking.artifacts import fetch_artifact
from sciqa.tracking.runs import get_run

WARN_DROPPED = 0.05  # warn when more of the teacher's rows than this are dropped
# One teacher answer: the choice it names (None: none), its explanation, whether it was cut.
TeacherRow = namedtuple("TeacherRow", "id index solution truncated")


@dataclass
class Targets:
    """id -> target JSON text, counts of what was dropped (metrics), and a warning to print."""
    by_id: dict[str, str]
    source: str
    teacher_run: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    warning: str = ""

    @property
    def digest(self) -> str:
        return digest(sorted(self.by_id.items()))

    @property
    def ids_digest(self) -> str:
        return digest(sorted(self.by_id))


def golden(problems: list[Problem]) -> Targets:
    return Targets({p.id: target_json(p.answer_text, p.solution) for p in problems}, source="golden")


class TeacherRows(list):
    """Teacher rows as read (a repeated id: its last row); ``duplicate_ids``: how many rows repeated an id."""

    duplicate_ids = 0


def _answer(r: dict, fmt: str, choices: tuple[str, ...]) -> tuple[int | None, str]:
    """(choice, explanation): our CSV's parsed columns, the raw text (the study's two columns) parsed where missing."""
    if fmt == "study":
        r = {"raw_output": json.dumps({"answer": r.get("answer") or "", "solution": r.get("explanation") or ""})}
    index, solution = parse_answer_index(r.get("answer_index"), len(choices)), r.get("solution")
    if index is None or solution is None:
        parsed = parse_output(r.get("raw_output") or "", choices)
        index = parsed.answer_index if index is None else index
        solution = parsed.solution if solution is None else solution
    return index, (solution or "").strip()


def from_csv(path: str, all_train: list[Problem], strict_ids: bool = True, where: str = "") -> TeacherRows:
    """Teacher rows of our outputs CSV or the study's (last row per id); unknown ids raise when ``strict_ids``."""
    table, where = read_user_csv(Path(path).expanduser(), "teacher CSV", keys=("id", "index")), where or path
    fmt = "ours" if "id" in table.columns and {"raw_output", "answer_text"} & set(table.columns) else "study"
    if missing := [c for c in ("index", "answer", "explanation") if c not in table.columns] if fmt == "study" else []:
        raise SciqaError(f"teacher CSV '{where}' lacks columns {', '.join(missing)}; expected our outputs CSV "
                         "(id, raw_output, ...) or the study's format (index, input, answer, explanation)")
    table.warn(f"teacher CSV '{where}'")
    choices = {q.id: q.choices for q in all_train}
    ids = [str(r.get("id" if fmt == "ours" else "index") or "").strip() for r in table.rows]
    unknown = [i for i in ids if i not in choices]
    if unknown and strict_ids:
        raise SciqaError(f"teacher CSV '{where}' has {len(unknown)} ids not in the train split of the dataset "
                         f"(e.g. '{unknown[0]}'); it must come from the same dataset")
    rows = TeacherRows(TeacherRow(pid, *_answer(r, fmt, choices[pid]), r.get("finish_reason", "").strip() == "length")
                       for pid, r in zip(ids, table.rows) if pid in choices)
    rows.duplicate_ids = table.duplicate_ids
    return rows


def run_train_csv(run_id: str, setting: str) -> str:
    """Artifact path of a finished run's train-split outputs CSV (the setting's if there are several)."""
    run = get_run(run_id, "teacher run")
    if run.info.status != "FINISHED":
        raise SciqaError(f"teacher run '{run_id}' is {run.info.status}, not finished: its outputs are partial; "
                         "run its benchmark again to finish it, or pass another --teacher-run")
    arts = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path="outputs")]
    train = sorted(a for a in arts if Path(a).name.startswith("train_") and a.endswith(".csv"))
    if not train:
        raise SciqaError(f"teacher run '{run_id}' has no train-split outputs (outputs/train_*.csv); "
                         "benchmark the teacher with --split train")
    return next((a for a in train if Path(a).name == f"train_{setting}.csv"), train[0])


def from_run(run_id: str, setting: str, all_train: list[Problem], workdir: Path) -> TeacherRows:
    art = run_train_csv(run_id, setting)
    local = Path(workdir) / "teacher" / run_id / Path(art).name
    if not local.exists() and not fetch_artifact([run_id], art, local):
        raise SciqaError(f"teacher run '{run_id}': {art} cannot be downloaded")
    return from_csv(str(local), all_train, strict_ids=False, where=f"run {run_id}")


def kd_targets(rows: list[TeacherRow], problems: list[Problem], kd_filter: str, source: str,
               run_id: str = "") -> Targets:
    """The usable teacher rows of ``problems`` as targets, dropped ones counted (an empty explanation still teaches)."""
    by_id = {row.id: row for row in reversed(rows)}  # the first row of an id
    counts = dict.fromkeys(("teacher_rows", "teacher_rows_truncated", "teacher_rows_unmapped",
                            "teacher_rows_wrong", "teacher_missing", "teacher_rows_empty_explanation"), 0)
    kept: dict[str, str] = {}
    for p in problems:
        if (row := by_id.get(p.id)) is None:
            counts["teacher_missing"] += 1
            continue
        counts["teacher_rows"] += 1
        why = ("truncated" if row.truncated else "unmapped" if row.index is None
               else "wrong" if kd_filter == "correct" and row.index != p.answer else "")
        if why:
            counts[f"teacher_rows_{why}"] += 1
        else:
            kept[p.id] = target_json(p.choices[row.index], row.solution)
            counts["teacher_rows_empty_explanation"] += int(not row.solution)
    dropped = counts["teacher_rows"] - len(kept)
    why = (f"{counts['teacher_rows_truncated']} cut at the generation budget: raise teacher_max_new_tokens; "
           f"{counts['teacher_rows_unmapped']} naming no choice; {counts['teacher_rows_wrong']} wrong")
    if not kept:
        raise SciqaError(f"the teacher ({source}) has no usable answer for any training problem ({dropped} dropped: "
                         f"{why}; {counts['teacher_missing']} missing)")
    warning = "" if dropped <= WARN_DROPPED * max(counts["teacher_rows"], 1) else (
        f"sciqa: warning: {dropped} of {counts['teacher_rows']} teacher rows dropped ({why})")
    return Targets(kept, source=source, teacher_run=run_id, counts=counts, warning=warning)
