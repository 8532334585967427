"""Prompt + completion batches for training (TRL's ``_collate_prompt_completion``, with images).

The prompt is chat-templated and processed with its image by the model's processor (so Qwen2-VL
expands its image tokens); the completion is the target text tokenised on its own
(``add_special_tokens=False``) plus the end-of-turn token. Labels are -100 on the prompt and on
padding: only the answer is supervised. The study instead padded the solution to the prompt
length and its adapters learned to emit empty strings. Rows are right-padded; per-token inputs
take the family's completion value on the completion (``Family.completion_value``: 0, text, for
Qwen2-VL's ``mm_token_type_ids``; 1 for PaliGemma's ``token_type_ids``, whose 0 is the bidirectional
prefix block: a target marked 0 would see the target tokens after it) and 0 on padding.

Training processes each example once per run (``encode_examples``) and cuts every epoch's batches
from those tensors (``collate_encoded``); ``collate`` does both for one batch. The result equals
the processor's over the whole batch (a test checks it for every family).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from sciqa.data.problems import Problem
from sciqa.models.base import LoadedModel

IGNORE = -100
IMAGE_CACHE_BYTES = 512 * 2**20  # processed images kept per run; past it a batch goes through the processor again


@dataclass(frozen=True)
class Example:
    """One training example: the problem (for its image), the prompt text and the target text."""

    problem: Problem
    prompt: str
    target: str


@dataclass(frozen=True)
class Encoded:
    """One example processed for training, once per run: ``tokens`` are its per-token rows (prompt +
    completion: ``input_ids``, ``labels``, ``attention_mask``, the family's per-token inputs and,
    where asked, ``position_ids``), ``images`` its per-image inputs (``pixel_values``,
    ``image_grid_thw``, ...), each with a leading image or patch dimension."""

    example: Example
    tokens: dict[str, torch.Tensor]
    images: dict[str, torch.Tensor] | None  # None: not kept (see encode_examples), processed per batch


def collate(lm: LoadedModel, examples: list[Example], max_length: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs plus ``labels``; ``max_length`` > 0 cuts the completion (never the prompt)."""
    return collate_encoded(lm, encode_examples(lm, examples, max_length))


def encode_examples(lm: LoadedModel, examples: list[Example], max_length: int = 0,
                    positions: bool = False) -> list[Encoded]:
    """Each example through the processor on its own (its image, its chat-templated prompt) and its
    target through the tokenizer: the work a training run would otherwise redo for every batch of
    every epoch. ``positions``: also the rotary position ids of multimodal-rotary models (Qwen2-VL's
    ``get_rope_index``, a Python loop per row), so a forward need not recompute them.

    Equal processed images (the blank placeholder) are kept once; real images of a big model
    (megabytes each) are kept up to ``IMAGE_CACHE_BYTES`` in all, and examples past that keep none
    (``images is None``): their batches are processed again, as without this cache."""
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    kept: dict[bytes, dict[str, torch.Tensor]] = {}
    encoded, kept_bytes = [], 0
    for ex in examples:
        tokens, images = _encode_one(lm, ex, eot, max_length)
        key = b"".join(hashlib.sha1(v.numpy().tobytes()).digest() + str(tuple(v.shape)).encode()
                       for v in images.values())
        if key not in kept and kept_bytes + _nbytes(images) <= IMAGE_CACHE_BYTES:
            kept[key], kept_bytes = images, kept_bytes + _nbytes(images)
        if positions:
            tokens.update(_rope_positions(lm, tokens, images))
        encoded.append(Encoded(ex, tokens, kept.get(key)))
    return encoded


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in tensors.values())


def _encode_one(lm: LoadedModel, ex: Example, eot: int, max_length: int) -> tuple[dict, dict]:
    """(per-token rows of prompt + completion, per-image inputs) of one example."""
    text = lm.family.render_prompt(lm.processor, ex.prompt)
    enc = lm.family.encode(lm.processor, [text], [ex.problem.image()], padding_side="right")
    n = int(enc["attention_mask"][0].sum())
    completion = lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [eot]
    if max_length:
        completion = completion[: max(0, max_length - n)]
    c = torch.tensor(completion, dtype=torch.long)
    tokens = {"input_ids": torch.cat([enc["input_ids"][0, :n], c]),
              "labels": torch.cat([torch.full((n,), IGNORE, dtype=torch.long), c])}
    for k in _per_token_keys(enc):
        tokens[k] = torch.cat([enc[k][0, :n], enc[k].new_full((len(c),), lm.family.completion_value(k))])
    return tokens, {k: v for k, v in enc.items() if k not in tokens and k != "input_ids"}


def _per_token_keys(enc) -> list[str]:
    return [k for k, v in enc.items() if k != "input_ids" and torch.is_tensor(v) and v.shape == enc["input_ids"].shape]


def _rope_positions(lm: LoadedModel, tokens: dict, images: dict) -> dict[str, torch.Tensor]:
    """``{"position_ids": (3, L)}`` for a multimodal-rotary model (what its forward would compute from
    the whole row), else nothing: other families' positions are a cheap cumulative sum."""
    from sciqa.adapters.prefix import real_positions

    inner = getattr(lm.model, "model", None)
    if not hasattr(inner, "get_rope_index") or "mm_token_type_ids" not in tokens:
        return {}
    row = {k: v[None] for k, v in tokens.items() if k != "labels"}
    pos, _ = real_positions(lm.model, row["input_ids"], row["attention_mask"], {**row, **images})
    return {"position_ids": pos[:, 0]}


def collate_encoded(lm: LoadedModel, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
    """A right-padded batch of encoded examples, equal to what the processor makes of them together:
    padding is the pad token (input ids), -100 (labels) or 0 (everything else, as the processor and
    ``get_rope_index`` pad); per-image inputs are joined along their first dimension. Images of
    unequal shape that the processor would pad together (Pixtral) go through the processor again."""
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    pad = {"input_ids": lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eot,
           "labels": IGNORE}
    if any(e.images is None for e in encoded):
        return _collate_processed_together(lm, encoded)
    width = max(len(e.tokens["input_ids"]) for e in encoded)
    batch = {}
    for k, first in encoded[0].tokens.items():
        batch[k] = first.new_full((*first.shape[:-1], len(encoded), width), pad.get(k, 0))
        for i, e in enumerate(encoded):
            batch[k][..., i, : e.tokens[k].shape[-1]] = e.tokens[k]
    for k in encoded[0].images:
        parts = [e.images[k] for e in encoded]
        if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            return _collate_processed_together(lm, encoded)
        batch[k] = torch.cat(parts)
    return batch


def _collate_processed_together(lm: LoadedModel, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
    """Per-token rows as encoded, per-image inputs from one processor call over the batch."""
    texts = [lm.family.render_prompt(lm.processor, e.example.prompt) for e in encoded]
    enc = lm.family.encode(lm.processor, texts, [e.example.problem.image() for e in encoded], padding_side="right")
    batch = collate_encoded(lm, [Encoded(e.example, e.tokens, {}) for e in encoded])
    return {**batch, **{k: v for k, v in enc.items() if k not in batch and k != "input_ids"}}


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
        enc = lm.family.encode(lm.processor, [lm.family.render_prompt(lm.processor, ex.prompt) for ex in part],
                               [ex.problem.image() for ex in part], padding_side="right")
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
