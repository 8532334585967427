"""Batched Hugging Face generation: left padding, greedy, stop at the end-of-turn token.

``answer_mode="choice"`` first picks the choice the model finds likeliest (summed log-probability
of ``{"answer": "<choice>"``, as harnesses score multiple choice) and then generates the
explanation after that forced prefix: every answer maps to a choice, which a tiny or weak
teacher needs for KD targets. ``"free"`` (default) is the study's free generation.
"""
from __future__ import annotations

import json

import torch

from sciqa import models
from sciqa.backends.base import Backend, Generation
from sciqa.data.problems import Problem
from sciqa.models.base import LoadedModel


def answer_prefix(choice: str) -> str:
    """The start of the JSON answer, with the choice filled in, up to where the solution begins."""
    return '{"answer": ' + json.dumps(choice, ensure_ascii=False) + ', "solution": "'


def encode_prompts(lm: LoadedModel, problems: list[Problem], prompts: list[str]):
    """Chat-templated, left-padded model inputs."""
    return encode_texts(lm, problems, [lm.family.render_prompt(lm.processor, p) for p in prompts])


def encode_texts(lm: LoadedModel, problems: list[Problem], texts: list[str]):
    """Left-padded model inputs of rendered texts (the padding side is passed per call: Llava
    processors ignore a padding_side set on the tokenizer, transformers#33847)."""
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
        return cls(lm, cfg.max_new_tokens, getattr(cfg, "answer_mode", "free"))

    def __init__(self, lm: LoadedModel, max_new_tokens: int = 256, answer_mode: str = "free"):
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.answer_mode = answer_mode
        self.eot = lm.family.end_of_turn_id(lm.tokenizer)

    @torch.inference_mode()
    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        lm = self.lm
        texts = [lm.family.render_prompt(lm.processor, p) for p in prompts]
        forced = [""] * len(texts)
        if self.answer_mode == "choice":
            forced = [answer_prefix(p.choices[i]) for p, i in zip(problems, self.likeliest_choices(problems, texts))]
        inputs = encode_texts(lm, problems, [t + f for t, f in zip(texts, forced)])
        lm.family.reset_state(lm.model)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else self.eot
        budget = min(self.max_new_tokens, lm.family.turn_tokens or self.max_new_tokens)
        out = lm.model.generate(**inputs, max_new_tokens=budget, do_sample=False, eos_token_id=self.eot,
                                pad_token_id=pad)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._one(tokens, f) for tokens, f in zip(new, forced)]

    def likeliest_choices(self, problems: list[Problem], texts: list[str]) -> list[int]:
        """Per problem, the choice with the highest summed log-probability after ``{"answer": ``."""
        lm, tok = self.lm, self.lm.tokenizer
        pairs = [(i, j) for i, p in enumerate(problems) for j in range(len(p.choices))]
        full = [texts[i] + '{"answer": ' + json.dumps(problems[i].choices[j], ensure_ascii=False) for i, j in pairs]
        base = [len(tok(texts[i] + '{"answer":', add_special_tokens=False).input_ids) for i, _ in pairs]
        n_scored = [len(tok(f, add_special_tokens=False).input_ids) - b for f, b in zip(full, base)]
        inputs = encode_texts(lm, [problems[i] for i, _ in pairs], full)
        lm.family.reset_state(lm.model)
        logits = lm.model(**inputs).logits.float()
        lm.family.reset_state(lm.model)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, inputs["input_ids"][:, 1:, None])[..., 0]
        scores = [float(logp[k, -n:].sum()) for k, n in enumerate(n_scored)]
        best: dict[int, tuple[float, int]] = {}
        for (i, j), score in zip(pairs, scores):
            if i not in best or score > best[i][0]:
                best[i] = (score, j)
        return [best[i][1] for i in range(len(problems))]

    def _one(self, tokens: list[int], forced: str = "") -> Generation:
        turn = self.lm.family.turn_tokens
        kept = tokens[: tokens.index(self.eot)] if self.eot in tokens else tokens
        stopped = self.eot in tokens or bool(turn) and len(kept) >= turn < self.max_new_tokens
        text = forced + self.lm.tokenizer.decode(kept, skip_special_tokens=False)
        return Generation(raw_output=self.lm.family.clean_output(text),
                          finish_reason="stop" if stopped else "length",
                          n_output_tokens=len(kept) + int(stopped))
