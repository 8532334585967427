"""The prefix of ``pkv`` and ``peft``: per-layer K/V of ``prefix_len`` virtual tokens as the cache, explicit position
ids (Qwen2-VL's rotary ones from ``get_rope_index``, which a prefix-extended mask breaks), our own greedy loop."""
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from sciqa.adapters.base import AdaptedLM


def real_positions(base, input_ids, attention_mask, inputs: dict, first: int = 0):
    """(positions, next_position) of the real tokens as the base computes them without a prefix: (3, B, L) for
    multimodal rotary models, else (B, L) from ``first``; ``next_position`` (B,): the next generated token's."""
    inner = getattr(base, "model", None)
    if hasattr(inner, "get_rope_index") and inputs.get("mm_token_type_ids") is not None:
        pos, _ = inner.get_rope_index(input_ids, inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
                                      None, attention_mask)
        masked = pos.masked_fill(attention_mask[None] == 0, -1)
        return pos, masked.amax(dim=(0, 2)) + 1
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + first
    return pos, pos.masked_fill(attention_mask == 0, -1).amax(-1) + 1


class PrefixLM(AdaptedLM):
    """A frozen base model whose every forward starts from a learned prefix cache."""

    def __init__(self, base, family, prefix_len: int):
        super().__init__(base, family)
        self.prefix_len = prefix_len

    def enable_gradient_checkpointing(self) -> None:
        raise ValueError("prefix adapters do not work with gradient checkpointing (the recompute sees the prefix "
                         "twice, peft#869)")

    def prefix_kv(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values), each (batch, kv_heads, prefix_len, head_dim)."""
        raise NotImplementedError

    def _run(self, input_ids, attention_mask, positions, cache, **inputs):
        mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], self.prefix_len), attention_mask], 1)
        return self.base(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, **inputs)

    def _prefill(self, input_ids, attention_mask, inputs: dict, positions=None):
        """The first forward, from a fresh prefix cache: (output, cache, positions, next_position); ``positions``
        given (a training batch has them): ``next_position`` is None."""
        nxt = None
        if positions is None:
            positions, nxt = real_positions(self.base, input_ids, attention_mask, inputs, self.family.first_position)
        cache = DynamicCache()
        for layer, (k, v) in enumerate(self.prefix_kv(input_ids.shape[0])):  # float32 weights, the base's dtype here
            cache.update(k.to(self.base.dtype), v.to(self.base.dtype), layer)
        inputs = self.family.prefix_inputs(inputs, self.prefix_len)
        out = self._run(input_ids, attention_mask, positions, cache, **inputs)
        return out, cache, positions, nxt

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None,
                **inputs) -> CausalLMOutputWithPast:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._prefill(input_ids, attention_mask, inputs, position_ids)[0]

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 256, eos_token_id=None,
                 pad_token_id=None, do_sample: bool = False, **inputs) -> torch.Tensor:
        """Greedy decoding with the prefix in the cache; returns prompt + new tokens like HF generate."""
        if do_sample:
            raise ValueError("prefix adapters generate greedily only (do_sample=False)")
        inputs = {k: v for k, v in inputs.items() if v is not None and k in _MODEL_INPUTS}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        self.family.reset_state(self.base)
        # only the last position's logits: [batch, prompt, vocab] ones would cost memory for nothing
        out, cache, positions, nxt = self._prefill(input_ids, attention_mask, {**inputs, "logits_to_keep": 1})
        step_inputs = {k: input_ids.new_full((input_ids.shape[0], 1), v)  # new tokens are completion tokens
                       for k, v in self.family.completion_inputs.items()}
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new, mask = [], attention_mask
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            new.append(token)
            done |= torch.isin(token, torch.tensor(sorted(eos), device=token.device)) if eos else done
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = nxt.view(1, -1, 1).expand(3, -1, 1) if positions.ndim == 3 else nxt.view(-1, 1)
            out = self._run(token[:, None], mask, pos, cache, **step_inputs)  # the cache grows in place
            nxt = nxt + 1
        return torch.cat([input_ids, torch.stack(new, 1)], 1) if new else input_ids


# per-call inputs a VLM forward accepts at prefill (everything the processors here return)
_MODEL_INPUTS = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes", "token_type_ids"}
