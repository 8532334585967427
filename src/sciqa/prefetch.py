"""Fetch a model (weights, processor) and a dataset once, on a machine with internet, so compute
nodes without it can run with ``HF_HUB_OFFLINE=1``.

    # login node (internet), shared HF cache (HF_HOME on a shared filesystem):
    sciqa prefetch --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA
    # compute node: same HF_HOME, no internet
    HF_HUB_OFFLINE=1 sciqa benchmark --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA

    # or into a folder of your choice; then pass the printed folders as --model / --dataset
    sciqa prefetch --model Qwen/Qwen2-VL-2B-Instruct --dataset derek-thomas/ScienceQA --dest /work/sciqa-prefetch

A hub model goes through ``huggingface_hub.snapshot_download`` (into the hub cache, or ``--dest``); a
hub dataset through ``datasets.load_dataset`` (prepared in the datasets cache, or ``save_to_disk``
into ``--dest``); a local folder (already on disk, e.g. a login node's scratch) is copied to ``--dest``.
Afterwards everything is loaded once more in a fresh process with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sciqa.errors import SciqaError

# Everything a model needs to load (weights, configs, tokenizer, processor, chat template), not
# training leftovers or other frameworks' weights.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py", "*.md"]


@dataclass
class Fetched:
    what: str  # "model" or "dataset"
    source: str
    path: Path  # where it is now
    use_as: str  # the value to pass as --model / --dataset on the compute node


def _is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir() or name.startswith((".", "/", "~"))


def _copy_folder(src: str, dest: Path) -> Path:
    src_path = Path(src).expanduser().resolve()
    if not src_path.is_dir():
        raise SciqaError(f"folder '{src}' does not exist")
    target = dest / src_path.name
    if target.resolve() == src_path:
        return target
    shutil.copytree(src_path, target, dirs_exist_ok=True)
    return target


def _snapshot(repo_id: str, repo_type: str, dest: Path | None, revision: str | None, patterns) -> Path:
    from huggingface_hub import snapshot_download

    kw = dict(repo_id=repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns)
    if dest is not None:
        kw["local_dir"] = str(dest / repo_type_dir(repo_type) / repo_id.replace("/", "--"))
    try:
        return Path(snapshot_download(**kw))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo, network: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SciqaError(f"cannot download {repo_type} '{repo_id}': {first} (internet and, for gated repos, "
                         "`hf auth login` are needed; HF_HUB_OFFLINE must be unset)") from None


def repo_type_dir(repo_type: str) -> str:
    return "models" if repo_type == "model" else "datasets"


def prefetch_model(model: str, dest: Path | None = None, revision: str | None = None) -> Fetched:
    """A hub model into the cache (or ``dest``), or a local model folder copied to ``dest``."""
    from sciqa import models

    if model in models.TINY_MODELS:
        raise SciqaError(f"'{model}' is a tiny model built offline: there is nothing to prefetch")
    if _is_local(model):
        if dest is None:
            raise SciqaError(f"model '{model}' is a local folder already; pass --dest to copy it")
        path = _copy_folder(model, dest / "models")
        return Fetched("model", model, path, str(path))
    path = _snapshot(model, "model", dest, revision, MODEL_PATTERNS)
    return Fetched("model", model, path, model if dest is None else str(path))


def prefetch_dataset(dataset: str, dest: Path | None = None, revision: str | None = None) -> Fetched:
    """A hub dataset prepared in the ``datasets`` cache (where ``load_dataset`` finds it offline),
    or with ``dest`` saved there with ``save_to_disk`` (a folder sciqa reads); a local dataset
    folder is copied to ``dest``."""
    if dataset == "sample":
        raise SciqaError("dataset 'sample' ships inside the package: there is nothing to prefetch")
    if _is_local(dataset):
        if dest is None:
            raise SciqaError(f"dataset '{dataset}' is a local folder already; pass --dest to copy it")
        path = _copy_folder(dataset, dest / "datasets")
        return Fetched("dataset", dataset, path, str(path))
    import datasets

    try:
        dd = datasets.load_dataset(dataset, revision=revision)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo, network: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SciqaError(f"cannot download dataset '{dataset}': {first} (internet and, for gated repos, "
                         "`hf auth login` are needed; HF_HUB_OFFLINE must be unset)") from None
    if dest is None:
        files = [f["filename"] for split in dd.values() for f in split.cache_files]
        return Fetched("dataset", dataset, Path(files[0]).parent if files else Path(datasets.config.HF_DATASETS_CACHE),
                       dataset)
    target = dest / "datasets" / dataset.replace("/", "--")
    dd.save_to_disk(str(target))
    return Fetched("dataset", dataset, target, str(target))


def verify_offline(fetched: list[Fetched]) -> None:
    """Load what was fetched the way a compute node will: in a fresh process with HF_HUB_OFFLINE=1
    (the hub libraries read it at import), the model's config and processor, a dataset split."""
    import json
    import os
    import subprocess
    import sys

    items = [[f.what, f.use_as] for f in fetched]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = f"from sciqa.prefetch import check_loads; check_loads({json.dumps(items)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no error output"]
        raise SciqaError(f"the prefetched files do not load offline: {lines[-1]}")


def check_loads(items_json: str) -> None:
    import json

    from sciqa import models
    from sciqa.data import load_problems

    for what, name in json.loads(items_json):
        if what == "model":
            path, family = models.resolve(name)
            family.load_processor(path, None)
            continue
        errors = []
        for split in ("validation", "test", "train"):
            try:
                load_problems(name, split, keep_all=True, limit=1)
                break
            except SciqaError as exc:
                errors.append(str(exc))
        else:
            raise SciqaError(f"dataset '{name}': " + "; ".join(errors))
