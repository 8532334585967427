"""Model registry: a name (tiny model, packaged GGUF model, hub id or local folder) -> a family, imported lazily."""
from __future__ import annotations

import importlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sciqa.errors import SciqaError
from sciqa.files import digest
from sciqa.models import gguf

if TYPE_CHECKING:
    from sciqa.models.base import Family, LoadedModel

FAMILIES: dict[str, str] = {  # the first whose ``matches`` accepts a config wins
    "pixtral": "sciqa.models.pixtral",  # before llava: its configs are llava configs too
    "qwen2_vl": "sciqa.models.qwen2_vl",
    "llava": "sciqa.models.llava",
    "paligemma": "sciqa.models.paligemma",
    "causal_lm": "sciqa.models.causal_lm",  # last: any causal LM config without a vision tower
}
# Tiny models of the real architectures, built offline from a fixed seed (tests, embedded default).
TINY_MODELS: dict[str, str] = {"tiny-qwen2-vl": "qwen2_vl", "tiny-llava": "llava", "tiny-paligemma": "paligemma"}


def family(name: str) -> Family:  # names from FAMILIES and sciqa's own code, never from the command line
    return importlib.import_module(FAMILIES[name]).FAMILY


def family_of(config) -> Family:
    if found := next((family(name) for name in FAMILIES if family(name).matches(config)), None):
        return found
    raise SciqaError(f"unsupported model type '{config.model_type}'; supported families: {', '.join(FAMILIES)}")


def resolve(name: str, revision: str | None = None) -> tuple[str, Family]:
    """(path or hub id, family) without loading weights; tiny models keep the processor settings of their build."""
    if name in TINY_MODELS:
        from sciqa.models import tiny  # builds with torch: not at `sciqa --help`

        fam = replace(family(TINY_MODELS[name]), processor_kwargs={}, turn_tokens=32)  # random weights never end one
        return str(tiny.tiny_model_path(name)), fam
    if name in gguf.MODELS:
        return str(gguf.model_path(name)), family("causal_lm")
    return name, family_of(_config(name, revision))


def _hub_reachable() -> bool:
    """Seconds, not the hub client's minute of retries, to learn that a machine is offline."""
    import requests
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or constants.HF_HUB_OFFLINE:
        return False
    try:
        requests.head(constants.ENDPOINT, timeout=3)
    except requests.RequestException:
        return False
    return True


def _config(name: str, revision: str | None):
    """The model's config: a local folder or the local cache first, the hub only when reachable."""
    from transformers import AutoConfig

    unknown = (f"unknown model '{name}': not a tiny model ({', '.join(TINY_MODELS)}), a packaged real model "
               f"({', '.join(gguf.MODELS)}), a local folder, or a hub id in the local Hugging Face cache")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, local_files_only=True)
    except (OSError, ValueError):
        if not _hub_reachable():
            raise SciqaError(f"{unknown} (the hub cannot be reached from here; `sciqa prefetch --model {name}` "
                             "on a machine with internet)") from None
    try:
        return AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as exc:
        raise SciqaError(f"{unknown} ({str(exc).splitlines()[0]})") from None


def load(name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
         gpu_memory_gb: float = 0.0) -> LoadedModel:
    path, fam = resolve(name, revision)
    return fam.load(name, path, revision=revision, dtype=dtype, device=device, gpu_memory_gb=gpu_memory_gb)


def fingerprint(name: str, revision: str | None = None) -> str:
    """What the weights are, for cache keys; a local folder's large files count by size and head."""
    if name in TINY_MODELS:
        from sciqa.models import tiny

        return "tiny:" + tiny.tiny_recipe(name)
    if name in gguf.MODELS:
        return gguf.fingerprint(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        parts = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            with open(path, "rb") as f:
                parts += [str(path.relative_to(folder)), size, digest(f.read(1 << 20 if size > 16 << 20 else size))]
        return "dir:" + digest(*parts)
    from huggingface_hub import snapshot_download

    try:
        return "hub:" + Path(snapshot_download(name, revision=revision, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached yet: the revision asked for is all we know
        return f"hub:{name}@{revision or 'main'}"
