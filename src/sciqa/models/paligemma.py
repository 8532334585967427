"""PaliGemma (google/paligemma-3b-*): a prefix-LM without turns or chat template.

The processor lays a row out as ``<image>...<bos>prompt\\n`` and marks it ``token_type_ids = 0``:
the bidirectional prefix block. Everything the model answers (a training target, a forced answer
start, generated tokens) is the causal suffix, ``token_type_ids = 1``, as the processor marks a
``suffix``; a completion marked 0 would let each answer token see the tokens after it.
"""
from __future__ import annotations

import torch

from sciqa.models.base import Family


class PaliGemmaFamily(Family):
    def render_prompt(self, processor, prompt: str) -> str:
        # The processor adds BOS after the image tokens and the "\n" that ends the prefix itself.
        return processor.image_token + prompt

    def encode(self, processor, texts, images, continuations=None, padding_side="left"):
        """The continuation goes in as the processor's ``suffix`` (tokenised on its own, as in training,
        and causal); the processor ends a suffix with ``<eos>`` for training, which a forced answer
        start must not have (left padding: it is the last column). The processor's own training
        ``labels`` are dropped: not a model input."""
        if continuations is not None and padding_side != "left":
            raise ValueError("PaliGemma encodes a continuation left-padded only")
        enc = processor(text=texts, images=images, suffix=continuations, padding=True, padding_side=padding_side,
                        return_tensors="pt")
        enc.pop("labels", None)
        if continuations is not None:
            width = enc["input_ids"].shape[1]
            for key, value in enc.items():
                if value.ndim == 2 and value.shape[1] == width:
                    enc[key] = value[:, :-1]
        return enc

    def continuation_tokens(self, tokenizer, text, continuation, start=0):
        # the suffix is tokenised on its own, after the prefix's "\n"
        return super().continuation_tokens(tokenizer, "", continuation, start)

    def prefix_inputs(self, inputs, prefix_len):
        # The mask reads token_type_ids at key positions, cache included: unpadded, each token would
        # take the type of the token prefix_len places later. The virtual tokens join the prefix block.
        types = inputs.get("token_type_ids")
        if types is None:
            return inputs
        return {**inputs, "token_type_ids": torch.cat([types.new_zeros(types.shape[0], prefix_len), types], 1)}


FAMILY = PaliGemmaFamily(
    name="paligemma",
    model_class="PaliGemmaForConditionalGeneration",
    end_of_turn="<eos>",
    turn_markers=(),
    completion_inputs={"token_type_ids": 1},
    first_position=1,
)
