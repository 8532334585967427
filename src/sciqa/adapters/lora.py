"""``lora``: PEFT LoRA on the language model only (vLLM ignores vision LoRA weights: both backends score the same)."""
import torch
from peft import LoraConfig, get_peft_model

from sciqa.adapters import LoraOptions
from sciqa.adapters.base import AdaptedLM


class Lora(AdaptedLM):
    def __init__(self, lm, options: LoraOptions):
        super().__init__(lm)
        targets = [t.strip() for t in options.lora_targets.split(",") if t.strip()]
        cfg = LoraConfig(r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=0.0,
                         target_modules=rf"^(?!.*(visual|vision)).*\.({'|'.join(targets)})$")
        self.peft = get_peft_model(lm.model, cfg)

    def forward(self, labels=None, **inputs):
        return self.peft(**inputs)

    @torch.no_grad()
    def generate(self, **kwargs):
        self.family.reset_state(self.base)
        return self.peft.generate(**kwargs)

    def _trainable_module(self):
        return self.peft  # names without the duplicate path through ``base`` (same tensors, registered twice)

    def export_for_serving(self, folder) -> None:
        """PEFT's own LoRA layout, the form vLLM's ``LoRARequest`` loads (``--backend vllm``)."""
        self.peft.save_pretrained(str(folder))
