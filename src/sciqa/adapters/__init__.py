"""Adapter registry: variant name -> "module:Class", imported lazily (``sciqa --help`` never loads torch).

Every variant builds an :class:`AdaptedLM` around a frozen base model: ``forward(**inputs)``
returns the base's output (``.logits``), ``generate(...)`` takes the arguments of
``transformers``' ``generate`` (greedy), ``trainable_state()`` is what a checkpoint keeps. An
adapter folder holds ``adapter_config.json`` (variant, base model, options) and
``adapter.safetensors`` (trainable weights only, never the base).

    from sciqa import models
    from sciqa.adapters import attach, save_adapter, load_adapter
    lm = models.load("tiny-qwen2-vl")
    adapted = attach(lm, "pkv", {"prefix_len": 50})
    save_adapter(adapted, lm, "adapter/")
    lm2 = load_adapter(models.load("tiny-qwen2-vl"), "adapter/")   # lm2.model.generate(...) applies it
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sciqa.errors import SciqaError

if TYPE_CHECKING:
    from sciqa.models.base import Family, LoadedModel



@dataclass(frozen=True)
class Variant:
    """What the rest of sciqa needs to know of an adapter variant, without importing it (torch)."""

    impl: str  # "module:Class" of its AdaptedLM
    step: str  # the training entry point that trains it
    options: tuple[str, ...]  # the TrainConfig fields that configure it (only its command takes them)
    prefix: bool  # a prefix in the cache: families without prefix support refuse it
    vllm: bool  # vLLM can serve it (LoRA: yes; prefixes: vllm#660)


PREFIX_OPTIONS = ("prefix_len", "prefix_projection")
VARIANTS: dict[str, Variant] = {
    "pkv": Variant("sciqa.adapters.pkv:PKV", "train_prefix", PREFIX_OPTIONS, prefix=True, vllm=False),
    "peft": Variant("sciqa.adapters.peft_prefix:PeftPrefix", "train_prefix", PREFIX_OPTIONS, prefix=True, vllm=False),
    "lora": Variant("sciqa.adapters.lora:Lora", "train_lora", ("lora_r", "lora_alpha", "lora_targets"),
                    prefix=False, vllm=True),
}


def variants_of_step(step: str) -> tuple[str, ...]:
    return tuple(name for name, v in VARIANTS.items() if v.step == step)


def step_options(step: str) -> tuple[str, ...]:
    """The option fields of a training command's variants."""
    return tuple(dict.fromkeys(f for v in VARIANTS.values() if v.step == step for f in v.options))
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
SERVING_FOLDER = "peft"  # the adapter as serving engines load it (LoRA for vLLM), where the variant has one


def check_variant(name: str, family: Family | None = None) -> str:
    """Validate a variant name (and that the model family can take it) before any run starts."""
    if name not in VARIANTS:
        raise SciqaError(f"unknown adapter variant '{name}'; accepted: {', '.join(VARIANTS)}")
    if family is not None and VARIANTS[name].prefix and not family.supports_prefix:
        raise SciqaError(f"model family '{family.name}' does not support prefix adapters ('{name}'); "
                         "use train-lora instead")
    return name


def variant_class(name: str):
    module, attr = VARIANTS[check_variant(name)].impl.split(":")
    return getattr(importlib.import_module(module), attr)


def attach(lm: LoadedModel, variant: str, options: dict[str, Any]):
    """Freeze the base model and wrap it with a fresh adapter of ``variant`` (an ``AdaptedLM``)."""
    check_variant(variant, lm.family)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    adapted = variant_class(variant).build(lm, dict(options))
    adapted.variant = variant
    adapted.options = dict(options)
    return adapted


def save_adapter(adapted, base_model: str, folder: str | Path) -> Path:
    """Write the adapter weights (trainable parameters only) and its config into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in adapted.trainable_state().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    adapted.export_for_serving(folder / SERVING_FOLDER)
    (folder / CONFIG_FILE).write_text(json.dumps(
        {"variant": adapted.variant, "base_model": base_model, "options": adapted.options}, indent=2))
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder).expanduser() / CONFIG_FILE
    if not path.exists():
        raise SciqaError(f"'{folder}' is not an adapter folder (no {CONFIG_FILE}); pass a training run's "
                         "adapter/ folder or --adapter-run")
    if not (Path(folder).expanduser() / WEIGHTS_FILE).exists():
        raise SciqaError(f"'{folder}' lacks the adapter weights {WEIGHTS_FILE}")
    return parse_adapter_config(path.read_bytes(), str(path))


def parse_adapter_config(raw: bytes | str, where: str) -> dict:
    """An adapter config's text as a dict with variant, base_model and options, or one line."""
    try:
        cfg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SciqaError(f"'{where}' is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or not {"variant", "base_model", "options"} <= set(cfg):
        raise SciqaError(f"'{where}' is not a sciqa adapter config (needs variant, base_model and options)")
    return cfg


def load_into(adapted, folder: str | Path) -> None:
    """Load saved trainable weights into a freshly attached adapter; every trainable tensor must match."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    own = adapted.trainable_state()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise SciqaError(f"adapter weights in '{folder}' do not fit the {adapted.variant} adapter "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    adapted.load_trainable_state(state)


def load_adapter(lm: LoadedModel, folder: str | Path) -> LoadedModel:
    """The loaded model with the adapter in ``folder`` applied (``.model.generate`` uses it)."""
    cfg = read_adapter_config(folder)
    if cfg["base_model"] != lm.name:
        raise SciqaError(f"adapter in '{folder}' was trained on '{cfg['base_model']}', not '{lm.name}'; "
                         f"score it with --model {cfg['base_model']}")
    adapted = attach(lm, cfg["variant"], cfg["options"])
    load_into(adapted, folder)
    adapted.eval()
    return replace(lm, model=adapted)
