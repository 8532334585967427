"""``peft``: PEFT's prefix encoder fed through our ``PrefixLM`` (PEFT's forward misplaces the prefix on Qwen2-VL)."""
from peft import PrefixTuningConfig, get_peft_model

from sciqa.adapters import PeftOptions
from sciqa.adapters.prefix import PrefixLM


class PeftPrefix(PrefixLM):
    def __init__(self, lm, options: PeftOptions):
        super().__init__(lm, options.prefix_len)
        cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options.prefix_len,
                                 prefix_projection=options.prefix_projection,
                                 encoder_hidden_size=lm.model.config.get_text_config().hidden_size)
        object.__setattr__(self, "_peft", get_peft_model(lm.model, cfg))  # no submodule: it wraps the base we hold
        self.encoder = self._peft.prompt_encoder

    def prefix_kv(self, batch_size: int):
        return [(layer.keys, layer.values) for layer in self._peft.get_prompt(batch_size).layers]
