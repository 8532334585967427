"""Model registry: a name (tiny model, hub id or local folder) -> a loaded model of a known family.

Each family declares which configs are its own (``Family.matches``: the config's ``model_type``,
and for Pixtral, which ships as ``llava``, the vision tower's); the first match in ``FAMILIES``
order wins, so more specific families come first. Families are imported lazily: a new family is
one new file plus one line in ``FAMILIES``, and ``sciqa --help`` never imports torch.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING

from sciqa.errors import SciqaError

if TYPE_CHECKING:
    from sciqa.models.base import Family, LoadedModel

FAMILIES: dict[str, str] = {
    "pixtral": "sciqa.models.pixtral:FAMILY",  # before llava: its configs are llava configs too
    "qwen2_vl": "sciqa.models.qwen2_vl:FAMILY",
    "llava": "sciqa.models.llava:FAMILY",
    "paligemma": "sciqa.models.paligemma:FAMILY",
    "causal_lm": "sciqa.models.causal_lm:FAMILY",  # last: any causal LM config without a vision tower
}

# Tiny models of the real architectures, built offline from a fixed seed (tests, embedded default).
TINY_MODELS: dict[str, str] = {
    "tiny-qwen2-vl": "qwen2_vl",
    "tiny-llava": "llava",
    "tiny-paligemma": "paligemma",
}
# Their turns end after this many new tokens (random weights never choose the end-of-turn token): a
# property of these models' registry entries, so defaults meant for real models stay as they are.
TINY_TURN_TOKENS = 32


def _import(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def family(name: str) -> Family:
    """The family object of a family name."""
    if name not in FAMILIES:
        raise SciqaError(f"unknown model family '{name}'; supported families: {', '.join(FAMILIES)}")
    return _import(FAMILIES[name])


def family_of(config) -> Family:
    """The first family (in ``FAMILIES`` order) that recognises a model config."""
    for name in FAMILIES:
        fam = family(name)
        if fam.matches(config):
            return fam
    raise SciqaError(f"unsupported model type '{config.model_type}'; supported families: {', '.join(FAMILIES)}")


def resolve(name: str, revision: str | None = None) -> tuple[str, Family]:
    """Map a model name to (path or hub id, family) without loading weights.

    Tiny models keep the processor settings they were built with: their family's pixel budget
    is meant for real checkpoints."""
    if name in TINY_MODELS:
        from sciqa.models.tiny import tiny_model_path

        return str(tiny_model_path(name)), replace(family(TINY_MODELS[name]), processor_kwargs={},
                                                   turn_tokens=TINY_TURN_TOKENS)
    if name in _gguf().MODELS:
        return str(_gguf().model_path(name)), family(_gguf().MODELS[name].family)
    return name, family_of(_config(name, revision))


def _gguf():
    """Real models shipped as GGUF files in pip packages (``smollm2-135m``): ``sciqa.models.gguf``."""
    from sciqa.models import gguf

    return gguf


def _hub_reachable() -> bool:
    """Seconds, not the hub client's minute of retries, to learn that a machine is offline."""
    import os

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
               f"({', '.join(_gguf().MODELS)}), a local folder, "
               "or a hub id in the local Hugging Face cache")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, local_files_only=True)
    except (OSError, ValueError) as exc:
        if not _hub_reachable():
            raise SciqaError(f"{unknown} (the hub cannot be reached from here; `sciqa prefetch --model {name}` "
                             "on a machine with internet)") from None
        local_error = exc
    try:
        return AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as exc:
        raise SciqaError(f"{unknown} ({str(exc or local_error).splitlines()[0]})") from None


def load(name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto",
         gpu_memory_gb: float = 0.0) -> LoadedModel:
    """Load model and processor; ``device='auto'`` means CUDA with bf16 when present, else CPU float32;
    ``gpu_memory_gb`` > 0 caps the GPU's share and offloads the rest to CPU (``models.base.placement``)."""
    path, fam = resolve(name, revision)
    return fam.load(name, path, revision=revision, dtype=dtype, device=device, gpu_memory_gb=gpu_memory_gb)


def fingerprint(name: str, revision: str | None = None) -> str:
    """What the weights are, for cache keys: a local folder's content (small files whole, large
    ones by size and head), a tiny model's recipe, or a hub id's resolved commit when cached."""
    from pathlib import Path

    from sciqa.files import digest

    if name in TINY_MODELS:
        from sciqa.models.tiny import tiny_recipe

        return "tiny:" + tiny_recipe(name)
    if name in _gguf().MODELS:
        return _gguf().fingerprint(name)
    folder = Path(name).expanduser()
    if folder.is_dir():
        parts = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(1 << 20 if size > 16 << 20 else size)
            parts += [str(path.relative_to(folder)), size, digest(head)]
        return "dir:" + digest(*parts)
    try:
        from huggingface_hub import snapshot_download

        return "hub:" + Path(snapshot_download(name, revision=revision, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached yet: the revision asked for is all we know
        return f"hub:{name}@{revision or 'main'}"
