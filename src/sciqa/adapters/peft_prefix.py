"""``peft``: PEFT's ``PrefixTuningConfig`` / ``PrefixEncoder`` (with its ``prefix_projection``
option) as the source of the prefix keys and values.

PEFT's own forward and generate are not used for the prefix: on Qwen2-VL its forward hands
``get_rope_index`` a mask longer than the input ids (IndexError) and its generate runs without
error but with the prefix misplaced (PITFALLS 1). Its encoder's output goes through our
:class:`~sciqa.adapters.prefix.PrefixLM`, the same path as ``pkv``."""
from __future__ import annotations

from sciqa.adapters.prefix import PrefixLM


class PeftPrefix(PrefixLM):
    variant = "peft"

    @classmethod
    def build(cls, lm, options: dict) -> PeftPrefix:
        from peft import PrefixTuningConfig, get_peft_model

        prefix_len = int(options.get("prefix_len", 50))
        projection = bool(options.get("prefix_projection", False))
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prefix_len,
                                 prefix_projection=projection,
                                 encoder_hidden_size=int(options.get("prefix_hidden", 0))
                                 or lm.model.config.get_text_config().hidden_size)
        self = cls(lm.model, lm.family, prefix_len)
        # keep the PeftModel out of the module tree (it wraps the base, which we hold already)
        object.__setattr__(self, "_peft", get_peft_model(lm.model, cfg))
        self.encoder = self._peft.prompt_encoder
        return self

    def prefix_kv(self, batch_size: int):
        cache = self._peft.get_prompt(batch_size)
        dtype = self.base.dtype
        return [(layer.keys.to(dtype), layer.values.to(dtype)) for layer in cache.layers]
