"""Prompt + completion batches for training (TRL's ``_collate_prompt_completion``, with images).

The prompt is chat-templated and processed with its image by the model's processor (so Qwen2-VL
expands its image tokens); the completion is the target text tokenised on its own
(``add_special_tokens=False``) plus the end-of-turn token. Labels are -100 on the prompt and on
padding: only the answer is supervised. The study instead padded the solution to the prompt
length and its adapters learned to emit empty strings. Rows are right-padded; per-token inputs
take the family's completion value on the completion (``Family.completion_value``: 0, text, for
Qwen2-VL's ``mm_token_type_ids``; 1 for PaliGemma's ``token_type_ids``, whose 0 is the bidirectional
prefix block: a target marked 0 would see the target tokens after it) and 0 on padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sciqa.data.problems import Problem
from sciqa.models.base import LoadedModel

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training example: the problem (for its image), the prompt text and the target text."""

    problem: Problem
    prompt: str
    target: str


def collate(lm: LoadedModel, examples: list[Example], max_length: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs plus ``labels``; ``max_length`` > 0 cuts the completion (never the prompt)."""
    texts = [lm.family.render_prompt(lm.processor, ex.prompt) for ex in examples]
    enc = lm.family.encode(lm.processor, texts, [ex.problem.image() for ex in examples], padding_side="right")
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eot
    per_token = [k for k, v in enc.items() if k != "input_ids" and torch.is_tensor(v)
                 and v.shape == enc["input_ids"].shape]
    rows = []
    for i, ex in enumerate(examples):
        n = int(enc["attention_mask"][i].sum())
        completion = lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [eot]
        if max_length:
            completion = completion[: max(0, max_length - n)]
        rows.append((n, completion))
    width = max(n + len(c) for n, c in rows)
    batch = {"input_ids": torch.full((len(rows), width), pad, dtype=torch.long),
             "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long)}
    for k in per_token:
        batch[k] = torch.zeros((len(rows), width), dtype=enc[k].dtype)
    for i, (n, completion) in enumerate(rows):
        c = torch.tensor(completion, dtype=torch.long)
        batch["input_ids"][i, :n] = enc["input_ids"][i, :n]
        batch["input_ids"][i, n:n + len(c)] = c
        batch["labels"][i, n:n + len(c)] = c
        for k in per_token:
            batch[k][i, :n] = enc[k][i, :n]
            batch[k][i, n:n + len(c)] = lm.family.completion_value(k)
    for k, v in enc.items():
        if k not in batch and k != "input_ids":
            batch[k] = v
    return batch


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over supervised tokens (next-token shift) and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    loss = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((shift_labels != IGNORE).sum())


def prompt_lengths(lm: LoadedModel, examples: list[Example], chunk: int = 32) -> list[int]:
    """Tokens of each processed prompt (image tokens included), as ``collate`` makes them."""
    lengths = []
    for i in range(0, len(examples), chunk):
        part = examples[i: i + chunk]
        enc = lm.processor(text=[lm.family.render_prompt(lm.processor, ex.prompt) for ex in part],
                           images=[ex.problem.image() for ex in part], padding=True, return_tensors="pt")
        lengths += [int(n) for n in enc["attention_mask"].sum(dim=1)]
    return lengths


def fit_to_length(lm: LoadedModel, examples: list[Example], max_length: int,
                  what: str) -> tuple[list[Example], dict[str, int]]:
    """Examples that fit ``max_length``: a prompt of that length or more leaves no room for a target
    (dropped); a longer target is cut by ``collate``. Both are counted and warned about, never silent."""
    if not max_length or not examples:
        return examples, {"examples_truncated": 0, "examples_dropped": 0}
    eot = 1
    targets = [len(lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + eot for ex in examples]
    prompts = prompt_lengths(lm, examples)
    kept = [ex for ex, n in zip(examples, prompts) if n < max_length]
    counts = {"examples_truncated": sum(1 for n, t in zip(prompts, targets) if n < max_length < n + t),
              "examples_dropped": len(examples) - len(kept)}
    if any(counts.values()):
        import sys

        print(f"sciqa: warning: {what}: {counts['examples_truncated']} target(s) cut and {counts['examples_dropped']} "
              f"example(s) dropped at --max-length {max_length} (longest: {max(p + t for p, t in zip(prompts, targets))} "
              "tokens); raise --max-length", file=sys.stderr, flush=True)
    return kept, counts
