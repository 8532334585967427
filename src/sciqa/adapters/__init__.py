"""Adapter variants: the registry (torch-free: ``sciqa --help`` reads it) and the adapter folder's config."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from pkgutil import resolve_name
from typing import TYPE_CHECKING, Any

from sciqa.config import option
from sciqa.errors import SciqaError

if TYPE_CHECKING:
    from sciqa.models.base import LoadedModel


@dataclass
class PkvOptions:
    prefix_len: int = option(50, "virtual tokens of a prefix adapter", min=1)


@dataclass
class PeftOptions(PkvOptions):
    prefix_projection: bool = option(True, "MLP reparameterisation of a PEFT prefix (pkv always has one)")


@dataclass
class LoraOptions:
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: int = option(16, "LoRA alpha", min=1)
    lora_targets: str = option("q_proj,v_proj", "LoRA target modules (language model)")


@dataclass(frozen=True)
class Variant:
    """What the rest of sciqa knows of a variant without importing it (torch)."""

    impl: str  # "module:Class" of its AdaptedLM
    options: type  # its options dataclass: the training command's options, run params, MLproject parameters
    step: str = "train_prefix"  # the command that trains it (train_prefix: a prefix in the cache)
    vllm: bool = False  # vLLM can serve it (LoRA: yes; prefixes: vllm#660)


VARIANTS: dict[str, Variant] = {
    "pkv": Variant("sciqa.adapters.pkv:PKV", PkvOptions),
    "peft": Variant("sciqa.adapters.peft_prefix:PeftPrefix", PeftOptions),
    "lora": Variant("sciqa.adapters.lora:Lora", LoraOptions, step="train_lora", vllm=True),
}
CONFIG_FILE = "adapter_config.json"  # variant, base model, options
WEIGHTS_FILE = "adapter.safetensors"  # trainable weights only
SERVING_FOLDER = "peft"  # the adapter as serving engines load it (LoRA for vLLM), where the variant has one


def variants_of_step(step: str) -> tuple[str, ...]:
    return tuple(name for name, v in VARIANTS.items() if v.step == step)


def option_fields(step: str | None = None) -> dict[str, dataclasses.Field]:
    """The option fields of the variants (of one training command), each name once."""
    return {f.name: f for v in VARIANTS.values() if step in (None, v.step) for f in dataclasses.fields(v.options)}


# every variant's options as one dataclass: the training config's base, so each is a CLI option and a param
AdapterOptions = dataclasses.make_dataclass("AdapterOptions", [
    (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)) for f in option_fields().values()])


def options_of(variant: str, values: Any) -> dict[str, Any]:
    """The options of ``variant`` from a dict or a config: others dropped, missing ones at their defaults."""
    values = values if isinstance(values, dict) else vars(values)
    return {f.name: values.get(f.name, f.default) for f in dataclasses.fields(VARIANTS[check_variant(variant)].options)}


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise SciqaError(f"unknown adapter variant '{name}'; accepted: {', '.join(VARIANTS)}")
    return name


def attach(lm: LoadedModel, variant: str, options: dict[str, Any]):
    """Freeze the base model and wrap it with a fresh adapter of ``variant`` (an ``AdaptedLM``)."""
    opts = VARIANTS[check_variant(variant)].options(**options_of(variant, options))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    adapted = resolve_name(VARIANTS[variant].impl)(lm, opts)
    adapted.variant, adapted.options = variant, dataclasses.asdict(opts)
    return adapted


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder).expanduser()
    if not (path / CONFIG_FILE).exists():
        raise SciqaError(f"'{folder}' is not an adapter folder (no {CONFIG_FILE}); pass a training run's "
                         "adapter/ folder or --adapter-run")
    if not (path / WEIGHTS_FILE).exists():
        raise SciqaError(f"'{folder}' lacks the adapter weights {WEIGHTS_FILE}")
    return parse_adapter_config((path / CONFIG_FILE).read_bytes(), str(path / CONFIG_FILE))


def parse_adapter_config(raw: bytes | str, where: str) -> dict:
    """An adapter config's text as a dict with variant, base_model and options, or one line."""
    try:
        cfg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SciqaError(f"'{where}' is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or not {"variant", "base_model", "options"} <= set(cfg):
        raise SciqaError(f"'{where}' is not a sciqa adapter config (needs variant, base_model and options)")
    return cfg


def load_adapter(lm: LoadedModel, folder: str | Path) -> LoadedModel:
    """The loaded model with the adapter in ``folder`` applied (``.model.generate`` uses it)."""
    cfg = read_adapter_config(folder)
    if cfg["base_model"] != lm.name:
        raise SciqaError(f"adapter in '{folder}' was trained on '{cfg['base_model']}', not '{lm.name}'; "
                         f"score it with --model {cfg['base_model']}")
    adapted = attach(lm, cfg["variant"], cfg["options"])
    adapted.load_weights(folder)
    return replace(lm, model=adapted.eval())
