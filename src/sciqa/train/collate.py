"""Prompt + completion training batches (TRL's ``_collate_prompt_completion``, with images), each example processed
once per run; labels are -100 on prompt and padding (the study's padded solutions taught adapters to emit nothing)."""
import sys
from collections import namedtuple

import torch

from sciqa.adapters.prefix import real_positions
from sciqa.files import digest
from sciqa.models.base import LoadedModel

IGNORE = -100
IMAGE_CACHE_BYTES = 512 * 2**20  # processed images kept per run; past it a batch goes through the processor again
Example = namedtuple("Example", "problem prompt target")  # the problem: for its image
# tokens: per-token rows, prompt + completion; images: per-image inputs (None: past the cache, processed per batch).
Encoded = namedtuple("Encoded", "example tokens images")


def _process(lm: LoadedModel, examples: list[Example]):
    texts = [lm.family.render_prompt(lm.processor, ex.prompt) for ex in examples]
    return lm.family.encode(lm.processor, texts, [ex.problem.image() for ex in examples], padding_side="right")


def encode_examples(lm: LoadedModel, examples: list[Example], max_length: int = 0,
                    positions: bool = False) -> list[Encoded]:
    """``max_length`` > 0 cuts the completion, never the prompt; ``positions``: also Qwen2-VL's rotary positions (a
    Python loop per row). Equal processed images (the placeholder) are kept once, others up to the cache size."""
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    kept: dict[str, dict[str, torch.Tensor]] = {}
    encoded, kept_bytes = [], 0
    for ex in examples:
        enc = _process(lm, [ex])
        n = int(enc["attention_mask"][0].sum())
        completion = lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"] + [eot]
        c = torch.tensor(completion[: max(0, max_length - n)] if max_length else completion, dtype=torch.long)
        tokens = {"input_ids": torch.cat([enc["input_ids"][0, :n], c]),
                  "labels": torch.cat([torch.full((n,), IGNORE, dtype=torch.long), c])}
        for k, v in enc.items():
            if k != "input_ids" and torch.is_tensor(v) and v.shape == enc["input_ids"].shape:
                tokens[k] = torch.cat([v[0, :n], v.new_full((len(c),), lm.family.completion_value(k))])
        images = {k: v for k, v in enc.items() if k not in tokens}
        key = digest(*[x for v in images.values() for x in (v.numpy().tobytes(), v.shape)])
        size = sum(v.numel() * v.element_size() for v in images.values())
        if key not in kept and kept_bytes + size <= IMAGE_CACHE_BYTES:
            kept[key], kept_bytes = images, kept_bytes + size
        if positions and hasattr(getattr(lm.model, "model", None), "get_rope_index") and "mm_token_type_ids" in tokens:
            row = {k: v[None] for k, v in tokens.items() if k != "labels"}
            tokens["position_ids"] = real_positions(lm.model, row["input_ids"], row["attention_mask"],
                                                    {**row, **images})[0][:, 0]
        encoded.append(Encoded(ex, tokens, kept.get(key)))
    return encoded


def collate_encoded(lm: LoadedModel, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
    """A right-padded batch equal to the processor's; images processed anew unless kept and equal in shape (Pixtral)."""
    eot = lm.family.end_of_turn_id(lm.tokenizer)
    pad = {"input_ids": lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else eot, "labels": IGNORE}
    width = max(len(e.tokens["input_ids"]) for e in encoded)
    batch = {}
    for k, first in encoded[0].tokens.items():
        batch[k] = first.new_full((*first.shape[:-1], len(encoded), width), pad.get(k, 0))
        for i, e in enumerate(encoded):
            batch[k][..., i, : e.tokens[k].shape[-1]] = e.tokens[k]
    images = [e.images for e in encoded]
    if all(im is not None for im in images) and all(
            len({im[k].shape[1:] for im in images}) == 1 for k in images[0]):
        return {**batch, **{k: torch.cat([im[k] for im in images]) for k in images[0]}}
    enc = _process(lm, [e.example for e in encoded])
    return {**batch, **{k: v for k, v in enc.items() if k not in batch and k != "input_ids"}}


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    labels = labels[:, 1:].to(logits.device)  # token t predicts token t + 1
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


def fit_to_length(lm: LoadedModel, examples: list[Example], max_length: int,
                  what: str) -> tuple[list[Example], dict[str, int]]:
    """A prompt of ``max_length`` tokens leaves no room for a target (dropped); a longer target is cut. Both warned."""
    if not max_length or not examples:
        return examples, {"examples_truncated": 0, "examples_dropped": 0}
    targets = [len(lm.tokenizer(ex.target, add_special_tokens=False)["input_ids"]) + 1 for ex in examples]  # + eot
    prompts = [int(n) for i in range(0, len(examples), 32)
               for n in _process(lm, examples[i: i + 32])["attention_mask"].sum(dim=1)]
    kept = [ex for ex, n in zip(examples, prompts) if n < max_length]
    counts = {"examples_truncated": sum(1 for n, t in zip(prompts, targets) if n < max_length < n + t),
              "examples_dropped": len(examples) - len(kept)}
    if any(counts.values()):
        longest = max(p + t for p, t in zip(prompts, targets))
        print(f"sciqa: warning: {what}: {counts['examples_truncated']} target(s) cut and {counts['examples_dropped']} "
              f"example(s) dropped at --max-length {max_length} (longest: {longest} tokens); raise --max-length",
              file=sys.stderr, flush=True)
    return kept, counts
