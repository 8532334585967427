"""A step's peak GPU memory, estimated from the model's config before any weights are read.

Why: ``--slurm-gpu auto`` must pick a GPU type whose memory holds the job (the study's prefix
tuning ran out of memory on a V100-32GB and not on an H100). The estimate adds

* weights: parameters (counted exactly, on PyTorch's meta device) x dtype bytes;
* generation: the KV cache for the batch and the prompt plus budget, and one layer's prefill
  activations (hidden states, MLP, the last tokens' logits in float32);
* training: trainable parameters' float32 copy, gradient and two AdamW moments (16 bytes each),
  the activations every layer saves for the backward pass (all layers: an adapter's gradient
  flows through the frozen model) and the full float32 logits with their log-softmax and
  gradient;
* on CUDA, the context and allocator reserve (``CUDA_OVERHEAD_GB``).

The sequence length of a problem is its prompt text (``PROMPT_TOKENS``, ScienceQA's long ones)
plus the image tokens the family's processor makes. ``tests/test_memory.py`` checks the estimate
against the measured peak of tiny models on CPU (within 25 %).
"""
from __future__ import annotations

from dataclasses import dataclass, field

PROMPT_TOKENS = 384  # a long ScienceQA prompt (question, choices, hint, lecture) in text tokens
CUDA_OVERHEAD_GB = 0.6  # CUDA context + caching allocator slack
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1024 ** 3
# activation tensors kept per token and layer, in units of hidden size and intermediate size: from the
# layer's forward (norms, q/k/v/o, residuals; gate, up, activation) as PyTorch saves them for backward
SAVED_PER_HIDDEN, SAVED_PER_INTERMEDIATE = 16, 3
LIVE_PER_HIDDEN, LIVE_PER_INTERMEDIATE = 6, 3  # inference: one layer's tensors alive at once
LOGIT_COPIES_TRAIN = 3  # float32 logits, their log-softmax, and its gradient


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a config (language model part; the vision tower in ``params``)."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    image_tokens: int


@dataclass(frozen=True)
class Estimate:
    step: str
    model: str
    parts: dict[str, float] = field(default_factory=dict)  # bytes

    @property
    def total_gb(self) -> float:
        return sum(self.parts.values()) / GB

    def describe(self) -> str:
        detail = ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items() if v)
        return f"{self.step} {self.model}: {self.total_gb:.1f} GB ({detail})"


def _text_config(config):
    return getattr(config, "text_config", None) or config


def image_tokens(config, family) -> int:
    """Image tokens per prompt: Qwen2-VL's pixel budget / (patch x merge)^2, else the tower's grid."""
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return 0
    merge = getattr(vision, "spatial_merge_size", 1)
    patch = getattr(vision, "patch_size", 14)
    max_pixels = (family.processor_kwargs or {}).get("max_pixels") if family is not None else None
    if max_pixels:
        return int(max_pixels // (patch * merge) ** 2)
    size = getattr(vision, "image_size", 224)
    return int((size // patch) ** 2 // merge ** 2)


def shape_of(config, family=None) -> Shape:
    """Count parameters on the meta device (no memory, any architecture) and read the LM's sizes."""
    import torch
    import transformers

    cls = getattr(transformers, family.model_class) if family is not None else transformers.AutoModel
    with torch.device("meta"):
        model = cls._from_config(config) if family is not None else cls.from_config(config)
    text = _text_config(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Shape(params=sum(p.numel() for p in model.parameters()), layers=text.num_hidden_layers,
                 hidden=text.hidden_size, intermediate=text.intermediate_size, heads=heads,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                 vocab=text.vocab_size, image_tokens=image_tokens(config, family))


def generation_bytes(s: Shape, dtype_bytes: int, batch: int, new_tokens: int,
                     prompt_tokens: int = PROMPT_TOKENS) -> dict[str, float]:
    seq = prompt_tokens + s.image_tokens
    return {"weights": s.params * dtype_bytes,
            "kv_cache": 2 * s.layers * s.kv_heads * s.head_dim * batch * (seq + new_tokens) * dtype_bytes,
            "activations": batch * seq * (LIVE_PER_HIDDEN * s.hidden + LIVE_PER_INTERMEDIATE * s.intermediate)
            * dtype_bytes + batch * s.vocab * 4}


def training_bytes(s: Shape, dtype_bytes: int, batch: int, length: int, trainable: int,
                   checkpointing: bool = False) -> dict[str, float]:
    per_layer = batch * length * (SAVED_PER_HIDDEN * s.hidden + SAVED_PER_INTERMEDIATE * s.intermediate) * dtype_bytes
    saved = per_layer * (1 if checkpointing else s.layers) + (batch * length * s.hidden * dtype_bytes * s.layers
                                                              if checkpointing else 0)
    return {"weights": s.params * dtype_bytes, "adapter_and_optimizer": 16 * trainable,
            "activations": saved, "logits": LOGIT_COPIES_TRAIN * batch * length * s.vocab * 4}


def trainable_params(s: Shape, variant: str, options: dict) -> int:
    """An adapter's parameters from its options: prefix K/V per layer (plus PEFT's projection), LoRA A/B."""
    kv = 2 * s.layers * s.kv_heads * s.head_dim
    if variant == "lora":
        r = int(options.get("lora_r", 8))
        return s.layers * 4 * r * 2 * s.hidden  # q, k, v, o: A (r x h) + B (h x r)
    n = int(options.get("prefix_len", 50))
    return n * kv if variant == "pkv" else n * s.hidden + s.hidden * kv  # peft: embedding + projection


def estimate(step: str, cfg, device: str = "cuda") -> Estimate:
    """The peak of ``step`` run with ``cfg`` (a benchmark/score/train config) on ``device``."""
    from sciqa import models

    path, fam = models.resolve(cfg.model, getattr(cfg, "revision", "") or None)
    s = shape_of(_config(path), fam)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    b = DTYPE_BYTES[dtype]
    if step.startswith("train"):
        from sciqa.adapters import VARIANTS

        variant = cfg.variant
        options = {k: getattr(cfg, k) for k in VARIANTS[variant].options}
        parts = training_bytes(s, b, cfg.batch_size, min(cfg.max_length, PROMPT_TOKENS + s.image_tokens + 256),
                               trainable_params(s, variant, options), bool(getattr(cfg, "gradient_checkpointing", 0)))
    else:
        parts = generation_bytes(s, b, cfg.batch_size, cfg.max_new_tokens)
    if device.startswith("cuda"):
        parts["cuda_overhead"] = CUDA_OVERHEAD_GB * GB
    return Estimate(step, cfg.model, parts)


def _config(path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)
