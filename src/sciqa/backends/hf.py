"""Batched HF generation, greedy; choice mode forces the likeliest choice, then explains (KD targets map to one)."""
import json

import torch

from sciqa import models
from sciqa.adapters import load_adapter
from sciqa.backends import CHOICE_SCORES, Backend, Generation
from sciqa.data import Problem
from sciqa.errors import SciqaError
from sciqa.models.base import LoadedModel

ANSWER_HEAD = '{"answer": '


def answer_start(choice: str) -> str:
    """What choice mode scores: the JSON answer up to the end of the choice."""
    return ANSWER_HEAD + json.dumps(choice, ensure_ascii=False)


def answer_prefix(choice: str) -> str:
    return answer_start(choice) + ', "solution": "'


def encode_texts(lm: LoadedModel, problems: list[Problem], texts: list[str], continuations: list[str] | None = None):
    """Left-padded per call: Llava processors ignore the tokenizer's padding side (transformers#33847)."""
    inputs = lm.family.encode(lm.processor, texts, [p.image() for p in problems], continuations, padding_side="left")
    if len(texts) > 1 and not bool(inputs["attention_mask"][:, -1].all()):
        raise RuntimeError("prompts are not left-padded: batched generation would be wrong")
    return inputs.to(lm.device)


class HFBackend(Backend):
    loglikelihood = True

    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        models.resolve(cfg.model, cfg.revision or None)

    @classmethod
    def from_config(cls, cfg, adapter: str | None = None) -> Backend:
        lm = models.load(cfg.model, cfg.revision or None, cfg.dtype, cfg.device, cfg.gpu_memory_gb)
        return cls(load_adapter(lm, adapter) if adapter else lm, cfg.max_new_tokens, cfg.answer_mode, cfg.choice_score)

    def __init__(self, lm: LoadedModel, max_new_tokens: int = 256, answer_mode: str = "free",
                 choice_score: str = "sum"):
        if choice_score not in CHOICE_SCORES:
            raise SciqaError(f"unknown choice score '{choice_score}'; accepted: {', '.join(CHOICE_SCORES)}")
        self.lm, self.answer_mode, self.choice_score = lm, answer_mode, choice_score
        self.max_new_tokens, self.eot = max_new_tokens, lm.family.end_of_turn_id(lm.tokenizer)

    @torch.inference_mode()
    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        lm = self.lm
        texts = [lm.family.render_prompt(lm.processor, p) for p in prompts]
        forced = None
        if self.answer_mode == "choice":
            forced = [answer_prefix(p.choices[i]) for p, i in zip(problems, self.likeliest_choices(problems, texts))]
        inputs = encode_texts(lm, problems, texts, forced)
        lm.family.reset_state(lm.model)
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else self.eot
        budget = min(self.max_new_tokens, lm.family.turn_tokens or self.max_new_tokens)
        out = lm.model.generate(**inputs, max_new_tokens=budget, do_sample=False, eos_token_id=self.eot,
                                pad_token_id=pad)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        return [self._one(tokens, f) for tokens, f in zip(new, forced or [""] * len(new))]

    def likeliest_choices(self, problems: list[Problem], texts: list[str]) -> list[int]:  # the first on a tie
        return [max(range(len(row)), key=row.__getitem__) for row in self.choice_scores(problems, texts)]

    @torch.inference_mode()
    def choice_scores(self, problems: list[Problem], texts: list[str]) -> list[list[float]]:
        """Each problem's choice scores in one forward, vocabulary logits only where scored (all: tens of GB)."""
        lm = self.lm
        pairs = [(i, j) for i, p in enumerate(problems) for j in range(len(p.choices))]
        starts = [answer_start(problems[i].choices[j]) for i, j in pairs]
        n_scored = [lm.family.continuation_tokens(lm.tokenizer, texts[i], s, len(ANSWER_HEAD))
                    for (i, _), s in zip(pairs, starts)]
        inputs = encode_texts(lm, [problems[i] for i, _ in pairs], [texts[i] for i, _ in pairs], starts)
        width = max(n_scored)
        lm.family.reset_state(lm.model)
        logits = lm.model(**inputs, logits_to_keep=width + 1).logits[:, :-1].float()
        lm.family.reset_state(lm.model)
        targets = inputs["input_ids"][:, -width:, None].to(logits.device)
        logp = logits.gather(-1, targets)[..., 0] - logits.logsumexp(-1)  # log-softmax without a copy
        scores: list[list[float]] = [[] for _ in problems]
        for k, ((i, _), n) in enumerate(zip(pairs, n_scored)):
            scores[i].append(float(logp[k, -n:].sum()) / (n if self.choice_score == "mean" else 1))
        return scores

    def _one(self, tokens: list[int], forced: str = "") -> Generation:
        turn = self.lm.family.turn_tokens
        kept = tokens[: tokens.index(self.eot)] if self.eot in tokens else tokens
        stopped = self.eot in tokens or bool(turn) and len(kept) >= turn < self.max_new_tokens
        text = forced + self.lm.tokenizer.decode(kept, skip_special_tokens=False)
        return Generation(raw_output=self.lm.family.clean_output(text),
                          finish_reason="stop" if stopped else "length", n_output_tokens=len(kept) + int(stopped))
