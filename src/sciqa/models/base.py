"""What every model family provides: loading, chat rendering and the end-of-turn rules."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
import transformers

from sciqa.errors import SciqaError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # sciqa.config.DTYPE_CHOICES


def placement(device: torch.device, gpu_memory_gb: float) -> dict:
    """With a GPU memory cap, accelerate's ``device_map="auto"`` keeps the rest in CPU memory (as the study did)."""
    if gpu_memory_gb <= 0:
        return {}
    if device.type != "cuda":
        raise SciqaError(f"--gpu-memory-gb {gpu_memory_gb:g} offloads to CPU what does not fit on a GPU; "
                         f"the device here is {device} (use --device cuda, or drop --gpu-memory-gb)")
    cpu_gib = max(1, int(psutil.virtual_memory().available / 2 ** 30) - 2)  # leave the process some room
    return {"device_map": "auto", "max_memory": {device.index or 0: f"{gpu_memory_gb:g}GiB", "cpu": f"{cpu_gib}GiB"}}


@dataclass
class LoadedModel:
    name: str
    model: Any
    processor: Any
    family: Family

    @property
    def tokenizer(self):  # a text-only model's processor is its tokenizer
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class Family:
    """The per-family quirks, kept here instead of branches in shared code."""

    name: str
    model_class: str
    end_of_turn: str
    turn_markers: tuple[str, ...]  # text that starts a new turn, where output is cut (Pixtral leaked [INST] turns)
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    turn_tokens: int = 0  # a turn ends after this many tokens (0: the model ends it; only the tiny models)
    completion_inputs: dict[str, int] = field(default_factory=dict)  # non-0 values on completion tokens
    first_position: int = 0  # a row's first position id (PaliGemma: 1)
    model_types: tuple[str, ...] = ()  # the config model_types it owns (default: its name)
    vision_types: tuple[str, ...] = ()  # and their vision tower types

    def matches(self, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return config.model_type in (self.model_types or (self.name,)) and (
            not self.vision_types or vision in self.vision_types)

    def load(self, name: str, path: str, revision: str | None, dtype: str, device: str,
             gpu_memory_gb: float = 0.0) -> LoadedModel:
        """``auto``: CUDA + bf16 when a GPU is present, else CPU + float32 (CPU bf16 is slow and lossy)."""
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        dt = DTYPES[("bfloat16" if dev.type == "cuda" else "float32") if dtype == "auto" else dtype]
        kwargs = placement(dev, gpu_memory_gb)
        model = getattr(transformers, self.model_class).from_pretrained(path, revision=revision, dtype=dt, **kwargs)
        model = (model if kwargs else model.to(dev)).eval()
        return LoadedModel(name=name, model=model, processor=self.load_processor(path, revision), family=self)

    def load_processor(self, path: str, revision: str | None):
        return transformers.AutoProcessor.from_pretrained(path, revision=revision, **self.processor_kwargs)

    def messages(self, prompt: str, target: str | None = None) -> list[dict]:
        """The image first in the user turn, then the text (the study's protocol)."""
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return msgs + ([] if target is None else [{"role": "assistant", "content": [{"type": "text", "text": target}]}])

    def render_prompt(self, processor, prompt: str) -> str:
        return processor.apply_chat_template(self.messages(prompt), add_generation_prompt=True, tokenize=False)

    def encode(self, processor, texts: list[str], images: list, continuations: list[str] | None = None,
               padding_side: str = "left"):
        """Model inputs of rendered prompts, each followed by its continuation (a forced answer start) as one text."""
        texts = texts if continuations is None else [t + c for t, c in zip(texts, continuations)]
        return processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt")

    def continuation_tokens(self, tokenizer, text: str, continuation: str, start: int = 0) -> int:
        """Tokens at the end of ``text + continuation`` that cover ``continuation[start:]`` (a boundary one counts)."""
        enc = tokenizer(text + continuation, add_special_tokens=False, return_offsets_mapping=True)
        return sum(1 for _, end in enc["offset_mapping"] if end > len(text) + start)

    def completion_value(self, key: str) -> int:
        """A per-token input's value on completion tokens: attended, else the family's own or 0 (text)."""
        return 1 if key == "attention_mask" else self.completion_inputs.get(key, 0)

    def prefix_inputs(self, inputs: dict, prefix_len: int) -> dict:
        """Prefill inputs for a cache that starts with ``prefix_len`` virtual tokens; unchanged by default."""
        return inputs

    def end_of_turn_id(self, tokenizer) -> int:
        return tokenizer.convert_tokens_to_ids(self.end_of_turn)

    def clean_output(self, text: str) -> str:
        for marker in (self.end_of_turn, *self.turn_markers):
            text = text.split(marker, 1)[0]
        return text.strip()

    def reset_state(self, model) -> None:
        """Clear state a model keeps between calls (Qwen2-VL's rope_deltas); no-op by default."""
