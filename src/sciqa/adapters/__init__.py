"""Adapter variants: the registry (torch-free: ``sciqa --help`` reads it) and the adapter folder's save/load:
``adapter_config.json`` (variant, base model, options) and ``adapter.safetensors`` (trainable weights only)."""
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
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
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
    """The options of ``variant`` from ``values`` (a dict, or a config with them as fields): unknown ones
    dropped, missing ones at their defaults."""
    get = values.get if isinstance(values, dict) else lambda k, d: getattr(values, k, d)
    return {f.name: get(f.name, f.default) for f in dataclasses.fields(VARIANTS[check_variant(variant)].options)}


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise SciqaError(f"unknown adapter variant '{name}'; accepted: {', '.join(VARIANTS)}")
    return name


def attach(lm: LoadedModel, variant: str, options: dict[str, Any]):
    """Freeze the base model and wrap it with a fresh adapter of ``variant`` (an ``AdaptedLM``)."""
    opts = VARIANTS[check_variant(variant)].options(**options_of(variant, options))
    for p in lm.model.parameters():
        p.requires_grad_(False)
    adapted = resolve_name(VARIANTS[variant].impl).build(lm, opts)
    adapted.variant, adapted.options = variant, dataclasses.asdict(opts)
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
