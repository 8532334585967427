"""``--slurm-gpu auto``: a step's peak GPU memory from the model's config (weights, KV cache or saved activations,
optimizer, logits, CUDA reserve; within 25 % of tiny models' measured peak), and the idlest GPU type that holds it."""
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import transformers

from sciqa import models, slurm
from sciqa.adapters import options_of
from sciqa.errors import SciqaError

PROMPT_TOKENS = 384  # a long ScienceQA prompt (question, choices, hint, lecture) in text tokens
CUDA_OVERHEAD_GB = 0.6  # CUDA context + caching allocator slack
GB = 1024 ** 3
# activation tensors kept per token and layer, in units of hidden and intermediate size (as PyTorch saves them)
SAVED_PER_HIDDEN, SAVED_PER_INTERMEDIATE = 16, 3
LIVE_PER_HIDDEN, LIVE_PER_INTERMEDIATE = 6, 3  # inference: one layer's tensors alive at once
MARGIN = 0.9  # use at most 90 % of a GPU's memory: fragmentation, estimate error
_GRES = re.compile(r"gpu(?::(?P<type>[^:,(]+))?:(?P<count>\d+)")
_DOWN = ("down", "drain", "fail", "maint", "inval", "unk", "futr", "power")


@dataclass(frozen=True)
class Shape:  # what the estimate needs from a config (the language model's sizes; the vision tower in params)
    params: int
    layers: int
    hidden: int
    intermediate: int
    kv_heads: int
    head_dim: int
    vocab: int
    image_tokens: int


def image_tokens(config, family) -> int:
    """Image tokens per prompt: Qwen2-VL's pixel budget / (patch x merge)^2, else the tower's grid."""
    if (vision := getattr(config, "vision_config", None)) is None:
        return 0
    merge, patch = getattr(vision, "spatial_merge_size", 1), getattr(vision, "patch_size", 14)
    if family is not None and (max_pixels := (family.processor_kwargs or {}).get("max_pixels")):
        return int(max_pixels // (patch * merge) ** 2)
    return int((getattr(vision, "image_size", 224) // patch) ** 2 // merge ** 2)


def shape_of(config, family=None) -> Shape:
    """Count parameters on the meta device (no memory, any architecture) and read the LM's sizes."""
    with torch.device("meta"):
        model = (getattr(transformers, family.model_class)._from_config(config) if family is not None
                 else transformers.AutoModel.from_config(config))
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    return Shape(params=sum(p.numel() for p in model.parameters()), layers=text.num_hidden_layers,
                 hidden=text.hidden_size, intermediate=text.intermediate_size,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                 head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
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
    """Adapter gradients flow through the frozen model: every layer saves its activations (one with checkpointing)."""
    per_layer = batch * length * (SAVED_PER_HIDDEN * s.hidden + SAVED_PER_INTERMEDIATE * s.intermediate) * dtype_bytes
    saved = per_layer + batch * length * s.hidden * dtype_bytes * s.layers if checkpointing else per_layer * s.layers
    return {"weights": s.params * dtype_bytes, "adapter_and_optimizer": 16 * trainable,  # fp32 copy, grad, 2 moments
            "activations": saved, "logits": 3 * batch * length * s.vocab * 4}  # float32: logits, log-softmax, grad


def trainable_params(s: Shape, variant: str, options: dict) -> int:
    """An adapter's parameters from its options: prefix K/V per layer (plus PEFT's projection), LoRA A/B."""
    kv = 2 * s.layers * s.kv_heads * s.head_dim
    if variant == "lora":
        return s.layers * 4 * int(options.get("lora_r", 8)) * 2 * s.hidden  # q, k, v, o: A (r x h) + B (h x r)
    n = int(options.get("prefix_len", 50))
    return n * kv if variant == "pkv" else n * s.hidden + s.hidden * kv  # peft: embedding + projection


def estimate(step: str, cfg) -> dict[str, float]:
    """The peak of ``step`` run with ``cfg`` (a benchmark/score/train config) on a GPU: bytes per part."""
    path, fam = models.resolve(cfg.model, getattr(cfg, "revision", "") or None)
    s = shape_of(transformers.AutoConfig.from_pretrained(path, local_files_only=True), fam)
    b = getattr(torch, "bfloat16" if cfg.dtype == "auto" else cfg.dtype).itemsize  # bytes per weight
    if step.startswith("train"):
        length = min(cfg.max_length, PROMPT_TOKENS + s.image_tokens + 256)
        trainable = trainable_params(s, cfg.variant, options_of(cfg.variant, cfg))
        parts = training_bytes(s, b, cfg.batch_size, length, trainable, bool(getattr(cfg, "gradient_checkpointing", 0)))
    else:
        parts = generation_bytes(s, b, cfg.batch_size, cfg.max_new_tokens)
    return {**parts, "cuda_overhead": CUDA_OVERHEAD_GB * GB}


def _count(gres: str, gpu_type: str | None) -> int:
    """GPUs of ``gpu_type`` (any type for None) in a GRES string such as ``gpu:h100:4(S:0),gpu:a100:2``."""
    return sum(int(m["count"]) for m in _GRES.finditer(gres) if gpu_type is None or m["type"] == gpu_type)


def idle_gpus(profile: slurm.Profile) -> dict[str, int]:
    """Idle GPUs per type of the profile, from one ``sinfo`` call (a node counted once per type)."""
    res = slurm.run(["sinfo", "-h", "-N", "-O", "NodeList:300,Partition:300,Gres:500,GresUsed:500,StateCompact:60"],
                    "reading idle GPUs", check=True)
    rows = [r for r in map(str.split, res.stdout.splitlines()) if len(r) >= 5]  # node, partition, gres, used, state
    idle = {}
    for gpu_type, g in profile.gpus.items():
        typed = g.gres.split(":")[1] if ":" in g.gres else None
        nodes = {r[0]: r for r in rows if r[1].rstrip("*") in g.partitions and not r[4].lower().startswith(_DOWN)}
        idle[gpu_type] = sum(max(0, _count(r[2], typed) - _count(r[3], typed)) for r in nodes.values())
    return idle


def choose(profile: slurm.Profile, estimate_gb: float, gpus: int = 1,
           idle: dict[str, int] | None = None) -> tuple[str, dict[str, int]]:
    """The type for ``estimate_gb`` on ``gpus`` GPUs (most idle, then smallest) and each fitting type's idle GPUs."""
    if not (sized := {t: g.memory_gb for t, g in profile.gpus.items() if g.memory_gb}):
        raise SciqaError(f"--slurm-gpu auto needs each GPU type's memory in profile {profile.name!r} "
                         f"({profile.path}): add e.g. `memory_gb = 80` under [gpus.TYPE]")
    fits = sorted((t for t, gb in sized.items() if gb * gpus * MARGIN >= estimate_gb), key=lambda t: (sized[t], t))
    if not fits:
        largest = max(sized, key=sized.get)
        raise SciqaError(f"no GPU type fits: the step needs about {estimate_gb:.1f} GB, the largest GPU is "
                         f"{largest} with {sized[largest]:g} GB x {gpus} (at most {MARGIN:.0%} used); lower "
                         "--batch-size, use bf16, or list the model under [models] with more GPUs")
    idle = idle_gpus(profile) if idle is None else idle
    candidates = {t: idle.get(t, 0) for t in fits}
    return max(fits, key=lambda t: (candidates[t], -sized[t])), candidates


def place(step: str, cfg, profile: slurm.Profile, gpu: str, check_fn: Callable | None = None,
          idle: dict[str, int] | None = None, label: str = "") -> tuple[str, int, dict[str, str]]:
    """(GPU type, GPUs, tags) for a step's job: ``gpu`` as given, or ``auto``: estimated, printed, chosen."""
    if gpu == "auto" and step == "main":
        raise SciqaError("--slurm-gpu auto estimates one step's memory; for main give a GPU type")
    # a score without --model: the adapter's base model, which its check reads
    model = check_fn(cfg)[0].base_model if step == "score" and not cfg.model and check_fn else cfg.model
    count = profile.gpus_for(model)
    if gpu != "auto":
        profile.gpu(gpu, count)  # unknown type / too many GPUs: the accepted values
        return gpu, count, {"sciqa.slurm_gpu": gpu}
    parts = estimate(step, replace(cfg, model=model))
    total = sum(parts.values()) / GB
    chosen, candidates = choose(profile, total, count, idle)
    print(f"sciqa: {label or step}: estimated peak {step} {model}: {total:.1f} GB "
          f"({', '.join(f'{k} {v / GB:.2f}' for k, v in parts.items() if v)}); fits "
          f"{', '.join(f'{t} ({n} idle)' for t, n in candidates.items())}; chose {chosen}")
    return chosen, count, {"sciqa.gpu_estimate_gb": f"{total:.3f}", "sciqa.slurm_gpu_choice": "auto",
                           "sciqa.gpu_candidates": ",".join(f"{t}:{n}" for t, n in candidates.items()),
                           "sciqa.slurm_gpu": chosen}
