"""Batched Hugging Face generation: left padding, greedy, stop at the end-of-turn token."""
from __future__ import annotations

import torch

from sciqa import models
from sciqa.backends.base import Backend, Generation
from sciqa.data.problems import Problem
from sciqa.models.base import LoadedModel


def encode_prompts(lm: LoadedModel, problems: list[Problem], prompts: list[str]):
    """Chat-templated, left-padded model inputs (the padding side is passed per call: Llava
    processors ignore a padding_side set on the tokenizer, transformers#33847)."""
    texts = [lm.family.render_prompt(lm.processor, p) for p in prompts]
    inputs = lm.processor(text=texts, images=[p.image() for p in problems], padding=True,
                          padding_side="left", return_tensors="pt")
    if len(texts) > 1 and not bool(inputs["attention_mask"][:, -1].all()):
        raise RuntimeError("prompts are not left-padded: batched generation would be wrong")
    return inputs.to(lm.device)


class HFBackend(Backend):
    name = "hf"

    @classmethod
    def check(cls, cfg) -> None:
        models.resolve(cfg.model, cfg.revision or None)

    @classmethod
    def from_config(cls, cfg, adapter: str | None = None) -> "HFBackend":
        lm = models.load(cfg.model, cfg.revision or None, cfg.dtype, cfg.device)
        if adapter:
            from sciqa.adapters import load_adapter

            lm = load_adapter(lm, adapter)
        return cls(lm, cfg.max_new_tokens)

    def __init__(self, lm: LoadedModel, max_new_tokens: int = 256):
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.eot = lm.family.end_of_turn_id(lm.tokenizer)

    @torch.inference_mode()
    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        lm = self.lm
        inputs = encode_prompts(lm, problems, prompts)
        lm.family.reset_state(lm.model)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else self.eot
        out = lm.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                eos_token_id=self.eot, pad_token_id=pad)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._one(tokens) for tokens in new]

    def _one(self, tokens: list[int]) -> Generation:
        stopped = self.eot in tokens
        kept = tokens[: tokens.index(self.eot)] if stopped else tokens
        text = self.lm.tokenizer.decode(kept, skip_special_tokens=False)
        return Generation(raw_output=self.lm.family.clean_output(text),
                          finish_reason="stop" if stopped else "length",
                          n_output_tokens=len(kept) + int(stopped))
