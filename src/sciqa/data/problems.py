"""The problem record and the split/filter rules shared by every source."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sciqa.errors import SciqaError

SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
PLACEHOLDER_SIZE = (224, 224)


def canonical_split(split: str) -> str:
    """``val`` is an alias of ``validation``; anything else is an error naming the accepted values."""
    if split not in SPLITS:
        raise SciqaError(f"unknown split '{split}'; accepted: train, validation (val), test")
    return SPLITS[split]


@dataclass(frozen=True)
class Problem:
    """One ScienceQA problem. ``id`` is the ScienceQA pid where the source has one, else ``split-row``."""

    id: str
    split: str
    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str = ""
    task: str = ""
    grade: str = ""
    subject: str = ""
    topic: str = ""
    category: str = ""
    skill: str = ""
    lecture: str = ""
    solution: str = ""
    has_image: bool = False
    load_image: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def image(self):
        """The problem's image, or a blank white placeholder (as the research did) when it has none."""
        from PIL import Image

        img = self.load_image() if self.load_image else None
        if img is None:
            return Image.new("RGB", PLACEHOLDER_SIZE, "white")
        return img.convert("RGB")

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]


def from_record(pid: str, split: str, rec: dict, load_image: Callable[[], Any] | None) -> Problem:
    """Build a Problem from a ScienceQA-shaped dict (original JSON or a hub row)."""
    return Problem(
        id=str(pid), split=split, question=rec["question"] or "", choices=tuple(rec["choices"]),
        answer=int(rec["answer"]), hint=rec.get("hint") or "", task=rec.get("task") or "",
        grade=rec.get("grade") or "", subject=rec.get("subject") or "", topic=rec.get("topic") or "",
        category=rec.get("category") or "", skill=rec.get("skill") or "", lecture=rec.get("lecture") or "",
        solution=rec.get("solution") or "", has_image=bool(rec.get("image")), load_image=load_image,
    )


def select(problems: list[Problem], keep_all: bool, limit: int | None) -> list[Problem]:
    """By default keep problems with both lecture and solution (as the research did), then the first ``limit``."""
    kept = problems if keep_all else [p for p in problems if p.lecture.strip() and p.solution.strip()]
    return kept[:limit] if limit is not None else kept


def load_problems(dataset: str = "sample", split: str = "validation", keep_all: bool = False,
                  limit: int | None = None) -> list[Problem]:
    """Problems of one split from a source, filtered; ids are stable whatever the filter."""
    from sciqa.data.sources import read_split

    return select(read_split(dataset, canonical_split(split)), keep_all, limit)
