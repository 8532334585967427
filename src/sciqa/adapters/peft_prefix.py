"""``peft``: PEFT's ``PrefixEncoder`` (with its ``prefix_projection``) as the source of the prefix keys and
values, fed through our :class:`PrefixLM`: PEFT's own forward/generate misplace the prefix on Qwen2-VL."""
from __future__ import annotations

from peft import PrefixTuningConfig, get_peft_model

from sciqa.adapters import PeftOptions
from sciqa.adapters.prefix import PrefixLM


class PeftPrefix(PrefixLM):
    variant = "peft"

    @classmethod
    def build(cls, lm, options: PeftOptions) -> PeftPrefix:
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.prefix_len,
                                 prefix_projection=options.prefix_projection,
                                 encoder_hidden_size=lm.model.config.get_text_config().hidden_size)
        self = cls(lm.model, lm.family, options.prefix_len)
        # keep the PeftModel out of the module tree (it wraps the base, which we hold already)
        object.__setattr__(self, "_peft", get_peft_model(lm.model, cfg))
        self.encoder = self._peft.prompt_encoder
        return self

    def prefix_kv(self, batch_size: int):
        return [(layer.keys, layer.values) for layer in self._peft.get_prompt(batch_size).layers]
