"""The ``pkv``/``peft`` prefix as a K/V cache, explicit position ids (a prefix-long mask breaks Qwen2-VL's mrope)."""
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from sciqa.adapters.base import AdaptedLM

# per-call inputs a VLM forward accepts at prefill (everything the processors here return)
_MODEL_INPUTS = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes", "token_type_ids"}


def real_positions(base, input_ids, attention_mask, inputs: dict, first: int = 0):
    """The real tokens' positions as without a prefix, (3, B, L) mrope or (B, L) from ``first``, and the next (B,)."""
    inner = getattr(base, "model", None)
    if hasattr(inner, "get_rope_index") and inputs.get("mm_token_type_ids") is not None:
        pos, _ = inner.get_rope_index(input_ids, inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
                                      None, attention_mask)
        masked = pos.masked_fill(attention_mask[None] == 0, -1)
        return pos, masked.amax(dim=(0, 2)) + 1
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + first
    return pos, pos.masked_fill(attention_mask == 0, -1).amax(-1) + 1


class PrefixLM(AdaptedLM):
    """Every forward starts from the cache of a subclass's ``prefix_kv(batch)``: per layer (keys, values)."""

    def __init__(self, lm, prefix_len: int):
        super().__init__(lm)
        self.prefix_len = prefix_len

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("prefix adapters do not work with gradient checkpointing (the recompute sees the prefix "
                         "twice, peft#869)")

    def forward(self, input_ids, attention_mask, labels=None, position_ids=None, cache=None,
                **inputs) -> CausalLMOutputWithPast:
        """From a fresh prefix cache or a generation step's ``cache``; ``position_ids`` given or as the base's."""
        if position_ids is None:
            position_ids = real_positions(self.base, input_ids, attention_mask, inputs, self.family.first_position)[0]
        if cache is None:  # one layer per (keys, values); float32 weights cast to the base's dtype
            dtype = self.base.dtype
            cache = DynamicCache([(k.to(dtype), v.to(dtype)) for k, v in self.prefix_kv(input_ids.shape[0])])
            inputs = self.family.prefix_inputs(inputs, self.prefix_len)
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], self.prefix_len), attention_mask], 1)
        return self.base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                         use_cache=True, **inputs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int = 256, eos_token_id: int = -1,
                 pad_token_id: int = 0, do_sample: bool = False, **inputs) -> torch.Tensor:
        """Greedy decoding with the prefix in the cache; returns prompt + new tokens like HF generate."""
        if do_sample:
            raise ValueError("prefix adapters generate greedily only (do_sample=False)")
        inputs = {k: v for k, v in inputs.items() if v is not None and k in _MODEL_INPUTS}
        self.family.reset_state(self.base)
        positions, nxt = real_positions(self.base, input_ids, attention_mask, inputs, self.family.first_position)
        out = self(input_ids, attention_mask, position_ids=positions, logits_to_keep=1, **inputs)  # last logits only
        completion = {k: torch.full_like(input_ids[:, :1], v) for k, v in self.family.completion_inputs.items()}
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new, mask = [], attention_mask
        for step in range(max_new_tokens):
            token = torch.where(done, pad_token_id, out.logits[:, -1].argmax(-1))
            new.append(token)
            done |= token == eos_token_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = (nxt + step).view(1, -1, 1).expand(3, -1, 1) if positions.ndim == 3 else (nxt + step).view(-1, 1)
            out = self(token[:, None], mask, position_ids=pos, cache=out.cache, **completion)  # grows it in place
        return torch.cat([input_ids, torch.stack(new, 1)], 1) if new else input_ids
