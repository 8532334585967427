"""``lora``: PEFT's ``LoraConfig`` on the language model's projections (rank, alpha, targets).

The vision tower is left alone: vLLM ignores vision LoRA weights (PITFALLS 6), so language-side
adapters score the same with either backend."""
from __future__ import annotations

import torch

from sciqa.adapters.base import AdaptedLM


class Lora(AdaptedLM):
    variant = "lora"

    @classmethod
    def build(cls, lm, options: dict) -> Lora:
        from peft import LoraConfig, get_peft_model

        targets = [t.strip() for t in str(options.get("lora_targets", "q_proj,v_proj")).split(",") if t.strip()]
        cfg = LoraConfig(r=int(options.get("lora_r", 8)), lora_alpha=int(options.get("lora_alpha", 16)),
                         lora_dropout=float(options.get("lora_dropout", 0.0)),
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

    def trainable_state(self):
        # names without the duplicate path through ``base`` (same tensors, registered twice)
        return {n: p for n, p in self.peft.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state):
        params = dict(self.peft.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def export_for_serving(self, folder) -> bool:
        """PEFT's own LoRA layout (``adapter_config.json`` with ``peft_type`` LORA and the weights), the
        form vLLM's ``LoRARequest`` loads (``--backend vllm``)."""
        self.peft.save_pretrained(str(folder))
        return True
