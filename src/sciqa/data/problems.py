"""The problem record and the split/filter rules shared by every source."""
from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

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
    image_path: str = ""  # a local image file (original layout); its bytes enter the data digest
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


def from_record(pid: str, split: str, rec: dict, load_image: Callable[[], Any] | None,
                image_path: str = "") -> Problem:
    """Build a Problem from a ScienceQA-shaped dict (original JSON or a hub row)."""
    return Problem(
        id=str(pid), split=split, question=rec["question"] or "", choices=tuple(rec["choices"]),
        answer=int(rec["answer"]), hint=rec.get("hint") or "", task=rec.get("task") or "",
        grade=rec.get("grade") or "", subject=rec.get("subject") or "", topic=rec.get("topic") or "",
        category=rec.get("category") or "", skill=rec.get("skill") or "", lecture=rec.get("lecture") or "",
        solution=rec.get("solution") or "", has_image=bool(rec.get("image")), image_path=image_path,
        load_image=load_image,
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


_FIELDS = ("id", "split", "question", "choices", "answer", "hint", "task", "grade", "subject", "topic", "category",
           "skill", "lecture", "solution", "has_image")


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_digest(problem: Problem) -> str:
    """The image file's content digest, ``missing`` when the file is not there, ``""`` without one."""
    if not problem.image_path:
        return ""
    path = Path(problem.image_path)
    if not path.is_file():
        return "missing"
    st = path.stat()
    return _file_digest(str(path), st.st_size, st.st_mtime_ns)


def problems_digest(problems: list[Problem]) -> str:
    """Content digest of the problems actually used: ids, every text field, answers, image files.
    It is part of every step's cache key, so an edited dataset folder is never answered by a
    stale cached run."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([getattr(p, f) for f in _FIELDS] + [image_digest(p)], default=list).encode() + b"\n")
    return h.hexdigest()[:16]


def check_images(problems: list[Problem], strict: bool) -> int:
    """Missing image files: a count (the step warns and logs ``images_missing``) or, with
    ``strict``, one line; an image file that cannot be read is always one line, before any run."""
    from PIL import Image, UnidentifiedImageError

    missing = [p for p in problems if image_digest(p) == "missing"]
    if missing and strict:
        raise SciqaError(f"{len(missing)} image file(s) missing, e.g. '{missing[0].image_path}' of problem "
                         f"{missing[0].id}; restore them or drop --strict-images (blank placeholders)")
    for p in problems:
        if image_digest(p) not in ("", "missing"):
            try:
                with Image.open(p.image_path) as img:
                    img.verify()
            except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                raise SciqaError(f"image file '{p.image_path}' of problem {p.id} cannot be read "
                                 f"({type(exc).__name__}); replace or remove it") from None
    if missing:
        print(f"sciqa: warning: {len(missing)} image file(s) missing (e.g. '{missing[0].image_path}'); "
              "those problems get the blank placeholder (--strict-images refuses instead)", file=sys.stderr)
    return len(missing)
