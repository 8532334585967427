"""PaliGemma (google/paligemma-3b-*): a prefix-LM without turns; whatever it answers is the causal suffix (type 1)."""
import torch

from sciqa.models.base import Family


class PaliGemmaFamily(Family):
    def render_prompt(self, processor, prompt: str) -> str:
        return processor.image_token + prompt  # the processor adds BOS after the image tokens and the closing "\n"

    def encode(self, processor, texts, images, continuations=None, padding_side="left"):
        """A continuation is the processor's ``suffix`` less the ``<eos>`` it ends with (the last column)."""
        if continuations is not None and padding_side != "left":
            raise ValueError("PaliGemma encodes a continuation left-padded only")
        enc = processor(text=texts, images=images, suffix=continuations, padding=True, padding_side=padding_side,
                        return_tensors="pt")
        enc.pop("labels", None)
        width = enc["input_ids"].shape[1]
        if continuations is not None:
            enc.update({k: v[:, :-1] for k, v in enc.items() if v.ndim == 2 and v.shape[1] == width})
        return enc

    def continuation_tokens(self, tokenizer, text, continuation, start=0):
        return super().continuation_tokens(tokenizer, "", continuation, start)  # the suffix is tokenised on its own

    def prefix_inputs(self, inputs, prefix_len):
        """The virtual tokens join the prefix block (the mask reads token_type_ids at key positions, cache included)."""
        types = inputs.get("token_type_ids")
        if types is None:
            return inputs
        return {**inputs, "token_type_ids": torch.cat([types.new_zeros(types.shape[0], prefix_len), types], 1)}


FAMILY = PaliGemmaFamily(name="paligemma", model_class="PaliGemmaForConditionalGeneration", end_of_turn="<eos>",
                         turn_markers=(), completion_inputs={"token_type_ids": 1}, first_position=1)
