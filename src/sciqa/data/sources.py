"""Where problems come from: the bundled sample, a hub dataset, a save_to_disk/parquet or original-layout folder."""
import json
from functools import partial
from pathlib import Path

from PIL import Image

from sciqa.data.problems import SPLITS, Problem, from_record
from sciqa.errors import SciqaError

SAMPLE_DIR = Path(__file__).parent / "sample"
ORIGINAL_SPLIT = {"train": "train", "validation": "val", "test": "test"}


def load_problems(dataset: str = "sample", split: str = "validation", keep_all: bool = False,
                  limit: int | None = None) -> list[Problem]:
    """One split, by default only problems with both lecture and solution (as the study), then the first ``limit``."""
    if split not in SPLITS:
        raise SciqaError(f"unknown split '{split}'; accepted: train, validation (val), test")
    problems = read_split(dataset, SPLITS[split])
    kept = problems if keep_all else [p for p in problems if p.lecture.strip() and p.solution.strip()]
    return kept[:limit] if limit is not None else kept


def _open_image(path: Path):
    return Image.open(path) if path.exists() else None


def read_original(folder: Path, split: str, images: bool = True) -> list[Problem]:
    """problems.json, pid_splits.json, images/<split>/<pid>/image.png; ``images=False``: placeholders (the sample)."""
    problems = json.loads((folder / "problems.json").read_text())
    out = []
    for pid in json.loads((folder / "pid_splits.json").read_text())[ORIGINAL_SPLIT[split]]:
        rec = problems[pid]
        img = folder / "images" / ORIGINAL_SPLIT[split] / pid / (rec.get("image") or "image.png")
        has = bool(rec.get("image")) and images
        out.append(from_record(pid, split, rec, partial(_open_image, img) if has else None, str(img) if has else ""))
    return out


def _row_image(ds, i: int):
    return ds[i]["image"]


def read_hf(ds, split: str) -> list[Problem]:
    """Rows of a ``datasets.Dataset``; ids are a ``pid`` column when present, else ``split-row``."""
    text = ds.remove_columns([c for c in ("image",) if c in ds.column_names])
    flags = ds.map(lambda r: {"_has": r["image"] is not None}, remove_columns=ds.column_names)["_has"] \
        if "image" in ds.column_names else [False] * len(ds)
    return [from_record(rec.get("pid") or f"{split}-{i}", split, dict(rec, image=flags[i]),
                        partial(_row_image, ds, i) if flags[i] else None) for i, rec in enumerate(text)]


def read_folder(folder: Path, split: str) -> list[Problem]:
    import datasets

    if (folder / "problems.json").exists():
        return read_original(folder, split)
    if (folder / "dataset_dict.json").exists():
        dd = datasets.load_from_disk(str(folder))
        if split not in dd:
            raise SciqaError(f"dataset folder '{folder}' has no split '{split}'; it has: {', '.join(dd)}")
        return read_hf(dd[split], split)
    files = sorted(str(p) for p in folder.rglob("*.parquet") if p.name.startswith(split) or p.parent.name == split)
    if files:
        return read_hf(datasets.load_dataset("parquet", data_files={split: files}, split=split), split)
    raise SciqaError(f"dataset folder '{folder}' is neither the original ScienceQA layout, a save_to_disk "
                     f"folder nor parquet files named after split '{split}'")


def read_split(dataset: str, split: str) -> list[Problem]:
    if dataset == "sample":
        return read_original(SAMPLE_DIR, split, images=False)
    path = Path(dataset).expanduser()
    if path.is_dir():
        return read_folder(path, split)
    if dataset.startswith((".", "/", "~")) or path.suffix:
        raise SciqaError(f"dataset folder '{dataset}' does not exist; accepted: sample, a folder, or a hub id")
    import datasets  # 2 s: only for hub and folder datasets

    try:
        ds = datasets.load_dataset(dataset, split=split)
    except ValueError as exc:  # split missing
        raise SciqaError(f"dataset '{dataset}' has no split '{split}' ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not found/offline"
        raise SciqaError(f"cannot load dataset '{dataset}': {str(exc).splitlines()[0]}") from None
    return read_hf(ds, split)
