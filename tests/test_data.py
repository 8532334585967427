"""Every data source gives the same problems with the same stable ids."""
import json
import shutil

import datasets
import pytest
from PIL import Image

from sciqa.data import SAMPLE_DIR, load_problems
from sciqa.errors import SciqaError

FIELDS = ["question", "choices", "answer", "hint", "task", "grade", "subject", "topic", "category", "skill",
          "lecture", "solution"]


def _records(split_name: str):
    problems = json.loads((SAMPLE_DIR / "problems.json").read_text())
    pids = json.loads((SAMPLE_DIR / "pid_splits.json").read_text())[split_name]
    rows = []
    for pid in pids:
        rec = problems[pid]
        rows.append({"pid": pid, "image": None, **{f: rec[f] for f in FIELDS}})
    return rows


def _dataset_dict():
    return datasets.DatasetDict({s: datasets.Dataset.from_list(_records(o))
                                 for s, o in (("train", "train"), ("validation", "val"), ("test", "test"))})


def _same(a, b):
    assert [p.id for p in a] == [p.id for p in b]
    assert [(p.question, p.choices, p.answer, p.lecture, p.solution) for p in a] == \
           [(p.question, p.choices, p.answer, p.lecture, p.solution) for p in b]


def test_sample_splits_and_ids():
    sizes = {s: len(load_problems("sample", s, keep_all=True)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 568, "validation": 371, "test": 361}
    val = load_problems("sample", "val")
    assert val == load_problems("sample", "validation")
    assert all(p.lecture.strip() and p.solution.strip() for p in val)
    assert len(val) < 371
    assert [p.id for p in load_problems("sample", "val", limit=5)] == [p.id for p in val[:5]]


@pytest.mark.parametrize("layout", ["original", "save_to_disk", "parquet"])
def test_sources_agree(tmp_path, layout):
    folder = tmp_path / layout
    if layout == "original":
        shutil.copytree(SAMPLE_DIR, folder)
    elif layout == "save_to_disk":
        _dataset_dict().save_to_disk(str(folder))
    else:
        folder.mkdir()
        for split, ds in _dataset_dict().items():
            ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    for split in ("train", "validation", "test"):
        _same(load_problems(str(folder), split), load_problems("sample", split))


def test_ids_without_pid_column_are_split_row_of_unfiltered_split(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "pid"} for r in _records("val")]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "d"))
    every = load_problems(str(tmp_path / "d"), "val", keep_all=True)
    kept = load_problems(str(tmp_path / "d"), "val")
    assert every[0].id == "validation-0" and every[-1].id == f"validation-{len(rows) - 1}"
    by_id = {p.id: p for p in every}
    assert all(by_id[p.id].question == p.question for p in kept)  # filtering never renumbers


def test_images_and_placeholder(tmp_path):
    folder = tmp_path / "orig"
    shutil.copytree(SAMPLE_DIR, folder)
    problems = load_problems(str(folder), "train", keep_all=True)
    with_image = next(p for p in problems if p.has_image)
    without = next(p for p in problems if not p.has_image)
    blank = without.image()
    assert blank.size == (224, 224) and blank.getextrema() == ((255, 255), (255, 255), (255, 255))
    assert with_image.image().getextrema() == ((255, 255), (255, 255), (255, 255))  # file missing: placeholder
    img_dir = folder / "images" / "train" / with_image.id
    img_dir.mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(img_dir / "image.png")
    again = next(p for p in load_problems(str(folder), "train", keep_all=True) if p.id == with_image.id)
    assert again.image().size == (40, 30) and again.image().getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize("dataset,split,message", [
    ("sample", "dev", "unknown split 'dev'; accepted: train, validation (val), test"),
    ("./no/such/folder", "train", "dataset folder './no/such/folder' does not exist"),
])
def test_bad_source(dataset, split, message):
    with pytest.raises(SciqaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_problems(dataset, split)
