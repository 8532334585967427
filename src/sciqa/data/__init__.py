"""ScienceQA problems (the record, its content digest, the image checks) from the sample, a hub dataset or a folder."""
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sciqa.errors import SciqaError
from sciqa.files import digest, file_digest

SPLITS = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
SAMPLE_DIR = Path(__file__).parent / "sample"
ORIGINAL_SPLIT = {"train": "train", "validation": "val", "test": "test"}
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
        return Image.new("RGB", (224, 224), "white") if img is None else img.convert("RGB")

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]


def from_record(pid: str, split: str, rec: dict, load_image: Callable[[], Any] | None, image_path: str = "") -> Problem:
    return Problem(id=str(pid), split=split, question=rec["question"] or "", choices=tuple(rec["choices"]),
                   answer=int(rec["answer"]), has_image=bool(rec.get("image")), image_path=image_path,
                   load_image=load_image, **{f: rec.get(f) or "" for f in TEXT_FIELDS})


def image_digest(problem: Problem) -> str:
    """The image file's content digest, ``missing`` when the file is not there, ``""`` without one."""
    path = Path(problem.image_path)
    return "" if not problem.image_path else file_digest(path) if path.is_file() else "missing"


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


def load_problems(dataset: str = "sample", split: str = "validation", keep_all: bool = False,
                  limit: int | None = None) -> list[Problem]:
    """One split, by default only problems with both lecture and solution (as the study), then the first ``limit``."""
    if split not in SPLITS:
        raise SciqaError(f"unknown split '{split}'; accepted: train, validation (val), test")
    problems = read_split(dataset, SPLITS[split])
    return (problems if keep_all else [p for p in problems if p.lecture.strip() and p.solution.strip()])[:limit]


def read_original(folder: Path, split: str, images: bool = True) -> list[Problem]:
    """problems.json, pid_splits.json, images/<split>/<pid>/image.png; ``images=False``: placeholders (the sample)."""
    problems = json.loads((folder / "problems.json").read_text())
    out = []
    for pid in json.loads((folder / "pid_splits.json").read_text())[ORIGINAL_SPLIT[split]]:
        rec = problems[pid]
        img = folder / "images" / ORIGINAL_SPLIT[split] / pid / (rec.get("image") or "image.png")
        has = bool(rec.get("image")) and images
        load = (lambda img=img: Image.open(img) if img.exists() else None) if has else None  # a missing file: blank
        out.append(from_record(pid, split, rec, load, str(img) if has else ""))
    return out


def read_hf(ds, split: str) -> list[Problem]:
    """Rows of a ``datasets.Dataset``; ids are a ``pid`` column when present, else ``split-row``."""
    text = ds.remove_columns([c for c in ("image",) if c in ds.column_names])
    flags = ds.map(lambda r: {"_has": r["image"] is not None}, remove_columns=ds.column_names)["_has"] \
        if "image" in ds.column_names else [False] * len(ds)
    return [from_record(rec.get("pid") or f"{split}-{i}", split, dict(rec, image=flags[i]),
                        (lambda i=i: ds[i]["image"]) if flags[i] else None) for i, rec in enumerate(text)]


def read_split(dataset: str, split: str) -> list[Problem]:
    """The bundled sample, a folder (original layout, save_to_disk, parquet files) or a hub dataset id."""
    folder = SAMPLE_DIR if dataset == "sample" else Path(dataset).expanduser()
    if (folder / "problems.json").exists():
        return read_original(folder, split, images=dataset != "sample")
    if not folder.is_dir() and (dataset.startswith((".", "/", "~")) or folder.suffix):
        raise SciqaError(f"dataset folder '{dataset}' does not exist; accepted: sample, a folder, or a hub id")
    import datasets  # 2 s: only for hub and folder datasets

    if (folder / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(folder))
        if split not in dd:
            raise SciqaError(f"dataset folder '{folder}' has no split '{split}'; it has: {', '.join(dd)}")
        return read_hf(dd[split], split)
    if folder.is_dir():
        files = sorted(str(p) for p in folder.rglob("*.parquet") if p.name.startswith(split) or p.parent.name == split)
        if not files:
            raise SciqaError(f"dataset folder '{folder}' is neither the original ScienceQA layout, a save_to_disk "
                             f"folder nor parquet files named after split '{split}'")
        return read_hf(datasets.load_dataset("parquet", data_files={split: files}, split=split), split)
    try:
        ds = datasets.load_dataset(dataset, split=split)
    except ValueError as exc:  # split missing
        raise SciqaError(f"dataset '{dataset}' has no split '{split}' ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not found/offline"
        raise SciqaError(f"cannot load dataset '{dataset}': {str(exc).splitlines()[0]}") from None
    return read_hf(ds, split)
