"""Where problems come from: the bundled sample, a hub dataset, a save_to_disk/parquet folder or
a folder in the original ScienceQA layout. One ``--dataset`` value picks the source."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from sciqa.data.problems import Problem, from_record
from sciqa.errors import SciqaError

SAMPLE_DIR = Path(__file__).parent / "sample"
ORIGINAL_SPLIT = {"train": "train", "validation": "val", "test": "test"}


def _open_image(path: Path):
    from PIL import Image

    return Image.open(path) if path.exists() else None


def read_original(folder: Path, split: str, images: bool = True) -> list[Problem]:
    """Original layout: problems.json, pid_splits.json, images/<split>/<pid>/image.png.
    ``images=False`` (the bundled sample, which ships none): every image is the placeholder."""
    problems = json.loads((folder / "problems.json").read_text())
    pids = json.loads((folder / "pid_splits.json").read_text())[ORIGINAL_SPLIT[split]]
    out = []
    for pid in pids:
        rec = problems[pid]
        img = folder / "images" / ORIGINAL_SPLIT[split] / pid / (rec.get("image") or "image.png")
        local = bool(rec.get("image")) and images
        out.append(from_record(pid, split, rec, partial(_open_image, img) if local else None,
                               str(img) if local else ""))
    return out


def _row_image(ds, i: int):
    return ds[i]["image"]


def read_hf(ds, split: str) -> list[Problem]:
    """Rows of a ``datasets.Dataset``; ids are a ``pid`` column when present, else ``split-row``."""
    text = ds.remove_columns([c for c in ("image",) if c in ds.column_names])
    has_image_col = "image" in ds.column_names
    flags = ds.map(lambda r: {"_has": r["image"] is not None}, remove_columns=ds.column_names)["_has"] \
        if has_image_col else [False] * len(ds)
    out = []
    for i, rec in enumerate(text):
        pid = rec.get("pid") or f"{split}-{i}"
        rec = dict(rec, image=flags[i])
        out.append(from_record(pid, split, rec, partial(_row_image, ds, i) if flags[i] else None))
    return out


def _hf_split(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except ValueError as exc:  # split missing
        raise SciqaError(f"dataset '{name}' has no split '{split}' ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not found/offline"
        raise SciqaError(f"cannot load dataset '{name}': {str(exc).splitlines()[0]}") from None


def read_folder(folder: Path, split: str) -> list[Problem]:
    """A local folder in any of the three layouts."""
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
    """Dispatch on the ``--dataset`` value: ``sample``, an existing folder, or a hub id."""
    if dataset == "sample":
        return read_original(SAMPLE_DIR, split, images=False)
    path = Path(dataset).expanduser()
    if path.is_dir():
        return read_folder(path, split)
    if dataset.startswith((".", "/", "~")) or path.suffix:
        raise SciqaError(f"dataset folder '{dataset}' does not exist; accepted: sample, a folder, or a hub id")
    return read_hf(_hf_split(dataset, split), split)
