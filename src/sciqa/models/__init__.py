"""Model registry: a name (tiny model, hub id or local folder) -> a loaded model of a known family.

Families are looked up by the config's ``model_type`` and imported lazily, so a new
family is one new file plus one line in ``FAMILIES``, and ``sciqa --help`` never imports torch.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from typing import TYPE_CHECKING

from sciqa.errors import SciqaError

if TYPE_CHECKING:
    from sciqa.models.base import Family, LoadedModel

FAMILIES: dict[str, str] = {
    "qwen2_vl": "sciqa.models.qwen2_vl:FAMILY",
    "llava": "sciqa.models.llava:FAMILY",
    "paligemma": "sciqa.models.paligemma:FAMILY",
    "pixtral": "sciqa.models.pixtral:FAMILY",
}

# Tiny models of the real architectures, built offline from a fixed seed (tests, embedded default).
TINY_MODELS: dict[str, str] = {
    "tiny-qwen2-vl": "qwen2_vl",
    "tiny-llava": "llava",
}


def _import(ref: str):
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def family(model_type: str) -> Family:
    """The family object for a config ``model_type``."""
    if model_type not in FAMILIES:
        raise SciqaError(f"unsupported model type '{model_type}'; supported families: {', '.join(FAMILIES)}")
    return _import(FAMILIES[model_type])


def resolve(name: str, revision: str | None = None) -> tuple[str, Family]:
    """Map a model name to (path or hub id, family) without loading weights.

    Tiny models keep the processor settings they were built with: their family's pixel budget
    is meant for real checkpoints."""
    if name in TINY_MODELS:
        from sciqa.models.tiny import tiny_model_path

        return str(tiny_model_path(name)), replace(family(TINY_MODELS[name]), processor_kwargs={})
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as exc:
        raise SciqaError(
            f"unknown model '{name}': not a tiny model ({', '.join(TINY_MODELS)}), a local folder, "
            f"or a hub id in the cache ({str(exc).splitlines()[0]})"
        ) from None
    return name, family(config.model_type)


def load(name: str, revision: str | None = None, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load model and processor; ``device='auto'`` means CUDA with bf16 when present, else CPU float32."""
    path, fam = resolve(name, revision)
    return fam.load(name, path, revision=revision, dtype=dtype, device=device)
