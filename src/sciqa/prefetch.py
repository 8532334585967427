"""Fetch a model and a dataset where there is internet, for offline compute nodes; then check they load offline."""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import huggingface_hub

from sciqa import models
from sciqa.data import load_problems
from sciqa.errors import SciqaError

# What a model needs to load (weights, configs, tokenizer, processor, chat template), not other frameworks' weights.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py", "*.md"]


@dataclass
class Fetched:
    what: str  # "model" or "dataset"
    source: str
    path: Path  # where it is now
    use_as: str  # the value to pass as --model / --dataset on the compute node


def _local_copy(what: str, name: str, dest: Path | None) -> Fetched | None:  # None for a hub id
    if not (Path(name).expanduser().is_dir() or name.startswith((".", "/", "~"))):
        return None
    if dest is None:
        raise SciqaError(f"{what} '{name}' is a local folder already; pass --dest to copy it")
    src = Path(name).expanduser().resolve()
    if not src.is_dir():
        raise SciqaError(f"folder '{name}' does not exist")
    target = dest / f"{what}s" / src.name
    if target.resolve() != src:
        shutil.copytree(src, target, dirs_exist_ok=True)
    return Fetched(what, name, target, str(target))


def _download(what: str, name: str, fetch):
    try:
        return fetch()
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo, network: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SciqaError(f"cannot download {what} '{name}': {first} (internet and, for gated repos, "
                         "`hf auth login` are needed; HF_HUB_OFFLINE must be unset)") from None


def prefetch_model(model: str, dest: Path | None = None, revision: str | None = None) -> Fetched:
    if model in models.TINY_MODELS:
        raise SciqaError(f"'{model}' is a tiny model built offline: there is nothing to prefetch")
    if copied := _local_copy("model", model, dest):
        return copied
    local_dir = str(dest / "models" / model.replace("/", "--")) if dest else None  # None: the HF cache
    path = Path(_download("model", model, lambda: huggingface_hub.snapshot_download(
        repo_id=model, repo_type="model", revision=revision, allow_patterns=MODEL_PATTERNS, local_dir=local_dir)))
    return Fetched("model", model, path, model if dest is None else str(path))


def prefetch_dataset(dataset: str, dest: Path | None = None, revision: str | None = None) -> Fetched:
    if dataset == "sample":
        raise SciqaError("dataset 'sample' ships inside the package: there is nothing to prefetch")
    if copied := _local_copy("dataset", dataset, dest):
        return copied
    dd = _download("dataset", dataset, lambda: datasets.load_dataset(dataset, revision=revision))
    if dest is None:
        folders = [Path(f["filename"]).parent for split in dd.values() for f in split.cache_files]
        return Fetched("dataset", dataset, folders[0] if folders else datasets.config.HF_DATASETS_CACHE, dataset)
    target = dest / "datasets" / dataset.replace("/", "--")
    dd.save_to_disk(str(target))
    return Fetched("dataset", dataset, target, str(target))


def verify_offline(fetched: list[Fetched]) -> None:
    """In a fresh process: HF_HUB_OFFLINE is read at import."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = f"from sciqa.prefetch import check_loads; check_loads({[(f.what, f.use_as) for f in fetched]!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no error output"]
        raise SciqaError(f"the prefetched files do not load offline: {lines[-1]}")


def check_loads(items: list[tuple[str, str]]) -> None:
    for what, name in items:
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
