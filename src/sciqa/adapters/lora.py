"""``lora``: PEFT's ``LoraConfig`` on the language model's projections; vLLM ignores vision LoRA weights,
so the vision tower is left alone and both backends score the same adapter."""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from sciqa.adapters import LoraOptions
from sciqa.adapters.base import AdaptedLM


class Lora(AdaptedLM):
    variant = "lora"

    @classmethod
    def build(cls, lm, options: LoraOptions) -> Lora:
        targets = [t.strip() for t in options.lora_targets.split(",") if t.strip()]
        cfg = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.0,
                         target_modules=rf"^(?!.*(visual|vision)).*\.({'|'.join(targets)})$")
        self = cls(lm.model, lm.family)
        self.peft = get_peft_model(lm.model, cfg)
        return self

    def forward(self, labels=None, **inputs):
        return self.peft(**inputs)

    @torch.no_grad()
    def generate(self, **kwargs):
        self.family.reset_state(self.base)
        return self.peft.generate(**kwargs)

    def _trainable_module(self):
        return self.peft  # names without the duplicate path through ``base`` (same tensors, registered twice)

    def export_for_serving(self, folder) -> bool:
        """PEFT's own LoRA layout, the form vLLM's ``LoRARequest`` loads (``--backend vllm``)."""
        self.peft.save_pretrained(str(folder))
        return True
