"""The problem record, its content digest and the image checks."""
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sciqa.errors import SciqaError
from sciqa.files import digest, file_digest

SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
PLACEHOLDER_SIZE = (224, 224)
TEXT_FIELDS = ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")


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
        img = self.load_image() if self.load_image else None
        return Image.new("RGB", PLACEHOLDER_SIZE, "white") if img is None else img.convert("RGB")

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]


def from_record(pid: str, split: str, rec: dict, load_image: Callable[[], Any] | None,
                image_path: str = "") -> Problem:
    return Problem(id=str(pid), split=split, question=rec["question"] or "", choices=tuple(rec["choices"]),
                   answer=int(rec["answer"]), has_image=bool(rec.get("image")), image_path=image_path,
                   load_image=load_image, **{f: rec.get(f) or "" for f in TEXT_FIELDS})


def image_digest(problem: Problem) -> str:
    """The image file's content digest, ``missing`` when the file is not there, ``""`` without one."""
    if not problem.image_path:
        return ""
    return file_digest(Path(problem.image_path)) if Path(problem.image_path).is_file() else "missing"


def problems_digest(problems: list[Problem]) -> str:
    """Content digest of the problems used (every field, image files): part of every step's cache key."""
    fields = ("id", "split", "question", "choices", "answer", *TEXT_FIELDS, "has_image")
    return digest(*([getattr(p, f) for f in fields] + [image_digest(p)] for p in problems))


def check_images(problems: list[Problem], strict: bool) -> int:
    """Missing image files: a count (warned) or, with ``strict``, one line; an unreadable file is always one line."""
    missing = [p for p in problems if p.image_path and not Path(p.image_path).is_file()]
    if missing and strict:
        raise SciqaError(f"{len(missing)} image file(s) missing, e.g. '{missing[0].image_path}' of problem "
                         f"{missing[0].id}; restore them or drop --strict-images (blank placeholders)")
    for p in problems:
        if p.image_path and Path(p.image_path).is_file():
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
